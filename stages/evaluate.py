"""Stage `evaluate MODEL STRATEGY`: play the test tasks with data/models/MODEL (a trained variant: every
checkpoint data/models/MODEL/s<seed> of `train.seeds`) and judge the answers.

Writes data/eval/MODEL-STRATEGY/results.parquet (one row per trajectory with its seed and the judge's
statuses, see `steptool describe`), the trajectories and steps beside it (a trained variant's under s<seed>/)
and data/metrics/eval/MODEL-STRATEGY.json (pass rate per level and average as mean +- std over seeds, samples
and judging runs, tool-invocation success rate, average steps, give-up rate). Resumable like collect: a killed
run keeps its finished chunks.
"""
from __future__ import annotations

from pathlib import Path

from pipeline import layout
from pipeline.agent.play import play
from pipeline.config import Params
from pipeline.errors import ConfigError, SteptoolError
from pipeline.evaluate.results import result_rows, summarize
from pipeline.fsutil import write_json
from pipeline.registry import ENVIRONMENTS, JUDGES, STRATEGIES
from pipeline.runner import run_stage
from pipeline.schema import EVAL_RESULTS, STEPS, TRAJECTORIES, read_table, write_table
from pipeline.task_files import first_per_level, load_tasks

ARGS = (("model", dict(help="a name under data/models (base, sft, or a training variant)")),
        ("strategy", dict(choices=list(STRATEGIES.names()), help="search strategy")))


def checkpoints(params: Params, model: str) -> list[tuple[int | None, Path]]:
    """(seed, data/models/...) of every checkpoint of `model`: one per training seed for a variant, else one."""
    if model in params.variants:
        return [(s, layout.model_dir(model, s)) for s in params.train.seeds]
    return [(None, layout.model_dir(model))]


def generated_by(params: Params) -> str:
    """How this stage's policy ran, as the report states it: "hf on cpu, fp32" ('auto' resolved here, on the machine
    that played; the report may be made on another, where 'auto' resolves otherwise), or the OpenAI-compatible
    server's address."""
    from pipeline.devices import resolve_device, resolve_precision

    a = params.agent
    if a.backend != "hf":
        return f"{a.backend} server at {a.base_url}"
    device = resolve_device(a.device)
    return f"hf on {device}, {resolve_precision(a.precision, device)}"


def evaluate(params: Params, root: Path, model: str, strategy: str) -> dict:
    e = params.evaluate
    found = checkpoints(params, model)
    for _, model_dir in found:
        if not (root / model_dir / "config.json").exists():
            raise SteptoolError(f"{root / model_dir}: not a checkpoint directory (run the stage that writes it: "
                                "dvc repro)")
    tasks = first_per_level(load_tasks(root, e.split), e.tasks_per_level[strategy])
    if not tasks:
        raise SteptoolError(f"{root / layout.tasks_file(e.split)}: no task to evaluate on")
    no_gold = [t.task_id for t in tasks if not t.has_gold]
    if JUDGES.has(e.judge, "needs_gold") and no_gold:  # before any play
        others = [k for k in JUDGES.names() if not JUDGES.has(k, "needs_gold")]
        raise SteptoolError(f"{root / layout.tasks_file(e.split)}: task {no_gold[0]} ({len(no_gold)} in all) has no "
                            f"gold facts, which evaluate.judge {e.judge} reads: use judge {' or '.join(others)}")
    judge = JUDGES.implementation(e.judge)
    out = root / layout.eval_dir(model, strategy)
    by_id = {t.task_id: t for t in tasks}
    rows, stats = [], {}
    answers: dict[str, int] = {}
    for seed, model_dir in found:
        played = out if seed is None else out / layout.seed_dir(seed)
        plays = play(params, root, tasks, root / model_dir, played, strategy=strategy, n_samples=e.samples,
                     temperature=e.temperature, top_p=1.0, seed=e.seed, chunk_size=16, policy_name=model)
        for k, v in plays.get("answers", {}).items():
            answers[k] = answers.get(k, 0) + v
        trajs = read_table(layout.table(played, "trajectories"), TRAJECTORIES).to_pylist()
        steps = read_table(layout.table(played, "steps"), STEPS).to_pylist()
        statuses, seed_stats = judge(trajs, steps, by_id, params)
        for k, v in seed_stats.items():
            stats[k] = stats.get(k, 0) + v if isinstance(v, (int, float)) else v
        rows += result_rows(model, strategy, trajs, steps, by_id, statuses, seed=seed, judge=e.judge)
    write_table(rows, layout.table(out, "results"), EVAL_RESULTS)
    summary = {"model": model, "strategy": strategy, "split": e.split, "judge": e.judge, **summarize(rows)}
    if stats:  # an LLM judge's calls, cache hits and cost
        summary["judge_stats"] = stats
    if ENVIRONMENTS.has(params.env.kind, "counts_misses"):  # who answered the calls: recorded, simulated, misses
        summary["answers"] = answers
    summary["generated_by"] = generated_by(params)
    write_json(root / layout.metrics_file("eval", f"{model}-{strategy}"), summary)
    return summary


def run(params: Params, root: Path, model: str, strategy: str) -> str:
    if model not in params.evaluate.models:
        raise ConfigError(f"model {model!r} is not in evaluate.models {params.evaluate.models}")
    s = evaluate(params, root, model, strategy)
    pr = s["pass_rate"]
    levels = ", ".join(f"{k} {v['mean']:.1f}" for k, v in pr.items() if k != "average" and v["mean"] is not None)
    n = len(s["seeds"] or [])
    seeds = f" x {n} seed{'s' if n != 1 else ''}" if n else ""
    samples = f"{s['samples']} sample{'s' if s['samples'] != 1 else ''}"
    return (f"evaluate {model} {strategy}: {s['tasks']} tasks{seeds} x {samples}, pass rate "
            f"{pr['average']['mean']:.1f} ({levels}), tool success {s['tool_success_rate']}, "
            f"avg steps {s['avg_steps']}, give-up {s['give_up_rate']:.1%} -> {layout.eval_dir(model, strategy)}")


def main(argv: list[str] | None = None) -> int:
    return run_stage("evaluate", __doc__, run, argv, ARGS)


if __name__ == "__main__":
    raise SystemExit(main())
