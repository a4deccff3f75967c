"""Stage `evaluate MODEL STRATEGY`: play the test tasks with data/models/MODEL and judge the answers.

Writes data/eval/MODEL-STRATEGY/{trajectories,steps,results}.parquet (results: one row per trajectory with
the judge's statuses, see `steptool describe`) and data/metrics/eval/MODEL-STRATEGY.json (pass rate per level
and average as mean +- std over samples and judging runs, tool-invocation success rate, average steps,
give-up rate). Resumable like collect: a killed run keeps its finished chunks.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.config import Params
from pipeline.errors import ConfigError, SteptoolError
from pipeline.evaluate.results import result_rows, summarize
from pipeline.fsutil import write_json
from pipeline.schema import EVAL_RESULTS, STEPS, TRAJECTORIES, read_table, write_table
from pipeline.task import Task
from stages.collect import play
from stages.tasks import load_tasks

EVAL = Path("data/eval")
METRICS = Path("data/metrics/eval")


def eval_tasks(root: Path, per_level: int) -> list[Task]:
    """The first `per_level` test tasks of each level (all with 0), in split order."""
    tasks = load_tasks(root, "test")
    if not per_level:
        return tasks
    seen: dict[str, int] = {}
    out = []
    for t in tasks:
        if seen.get(t.level, 0) < per_level:
            seen[t.level] = seen.get(t.level, 0) + 1
            out.append(t)
    return out


def evaluate(params: Params, root: Path, model: str, strategy: str) -> dict:
    e = params.evaluate
    model_dir = root / "data/models" / model
    if not (model_dir / "config.json").exists():
        raise SteptoolError(f"{model_dir}: not a checkpoint directory (run the stage that writes it: dvc repro)")
    tasks = eval_tasks(root, e.tasks_per_level)
    out = root / EVAL / f"{model}-{strategy}"
    play(params, root, tasks, model_dir, out, strategy=strategy, n_samples=e.samples, temperature=e.temperature,
         top_p=1.0, seed=e.seed, chunk_size=16, policy_name=model)
    trajs = read_table(out / "trajectories.parquet", TRAJECTORIES).to_pylist()
    steps = read_table(out / "steps.parquet", STEPS).to_pylist()
    statuses = None
    if e.judge == "openai":
        from pipeline.evaluate.judge import judge_answers

        statuses, stats = judge_answers(trajs, steps, {t.task_id: t for t in tasks}, params)
    rows = result_rows(model, strategy, trajs, steps, {t.task_id: t for t in tasks}, statuses)
    write_table(rows, out / "results.parquet", EVAL_RESULTS)
    summary = {"model": model, "strategy": strategy, "judge": e.judge, **summarize(rows)}
    if statuses is not None:
        summary["judge_stats"] = stats
    write_json(root / METRICS / f"{model}-{strategy}.json", summary)
    return summary


def run(params: Params, root: Path, model: str, strategy: str) -> str:
    if model not in params.evaluate.models:
        raise ConfigError(f"model {model!r} is not in evaluate.models {params.evaluate.models}")
    s = evaluate(params, root, model, strategy)
    pr = s["pass_rate"]
    levels = ", ".join(f"{k} {v['mean']:.1f}" for k, v in pr.items() if k != "average" and v["mean"] is not None)
    return (f"evaluate {model} {strategy}: {s['tasks']} tasks x {s['samples']} samples, pass rate "
            f"{pr['average']['mean']:.1f} ({levels}), tool success {s['tool_success_rate']}, "
            f"avg steps {s['avg_steps']}, give-up {s['give_up_rate']:.1%} -> {EVAL / f'{model}-{strategy}'}")


def main(argv: list[str] | None = None) -> int:
    from pipeline.cli import run_stage

    return run_stage("evaluate", __doc__, run, argv, positional=(
        ("model", dict(help="a name under data/models (base, sft, steptool, ...)")),
        ("strategy", dict(choices=["cot", "dfsdt"]))))

if __name__ == "__main__":
    raise SystemExit(main())
