"""The data steps of one training round, on folders: collect (and the greedy replay), annotate, advantages.

Round 1 of every run is DVC's own stages (`collect@<seed>`, `annotate@<seed>`, `advantages@<variant>-<seed>`,
which call these functions on the layout's per-seed folders). Rounds 2..`train.rounds` happen inside
`train@<variant>-<seed>`, which calls the same functions on the round's work folder with the previous round's
policy (docs/architecture.md, "Seeds and rounds"). One code path, so a round-2 table means what a round-1 one
means.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl

from pipeline import layout
from pipeline.errors import ConfigError, SteptoolError
from pipeline.fsutil import write_json
from pipeline.schema import (ADVANTAGES, ANNOTATED_STEPS, EVAL_RESULTS, STEPS, TRAJECTORIES, read_table,
                             write_table)
from pipeline.task import SPLITS, Task
from pipeline.task_files import load_tasks

FAILED = "failed.json"  # beside the annotated steps: every trajectory not labelled, and why


def collect_tasks(params, root: Path, seed: int) -> list[Task]:
    """The train tasks a run with `seed` plays in every round: `collect.max_tasks` of them, sampled by the seed."""
    return load_tasks(root, "train", params.collect.max_tasks, f"collect-tasks:{seed}")


def collect(params, root: Path, model_dir: Path, out_dir: Path, seed: int, policy_name: str,
            replay: bool = True) -> dict:
    """Play the run's train tasks with the model at `model_dir` (sampling per `collect`, seeded by `seed`) into
    `out_dir`; with `collect.replay` (and `replay`), also the greedy replay into `out_dir`/replay. Returns the
    summary."""
    from pipeline.agent.play import load_policy, play

    c = params.collect
    tasks = collect_tasks(params, root, seed)
    if not tasks:
        raise SteptoolError(f"{root / layout.tasks_file('train')}: no train task to play (tasks.train sizes)")
    policy = load_policy(params, root, model_dir, policy_name)  # once for the collection and the replay
    summary = play(params, root, tasks, model_dir, out_dir, strategy=c.strategy, n_samples=c.n_samples,
                   temperature=c.temperature, top_p=c.top_p, seed=seed, chunk_size=c.chunk_size,
                   policy_name=policy_name, policy=policy)
    if c.replay and replay:
        summary["replay"] = replay_tasks(params, root, tasks, model_dir, layout.replay_dir(out_dir), policy_name,
                                         policy)
    return summary


def replay_tasks(params, root: Path, tasks: list[Task], model_dir: Path, out_dir: Path, policy_name: str,
                 policy=None) -> dict:
    """Play `tasks` greedily (CoT, one sample) with the model at `model_dir` (or `policy`, loaded from it),
    judge them with the rule (the ToolWorld's gold facts) and write results.parquet (EVAL_RESULTS rows) into
    `out_dir`; returns `replay_summary` of them."""
    from pipeline.agent.play import play
    from pipeline.evaluate.results import result_rows

    if not all(t.has_gold for t in tasks):
        raise ConfigError("collect.replay judges the replayed train tasks with the ToolWorld's gold facts; these "
                          "tasks have none (env.kind http/replay): set collect.replay to false")
    play(params, root, tasks, model_dir, out_dir, strategy="cot", n_samples=1, temperature=0.0, top_p=1.0,
         seed=0, chunk_size=params.collect.chunk_size, policy_name=policy_name, policy=policy)
    trajs = read_table(layout.table(out_dir, "trajectories"), TRAJECTORIES).to_pylist()
    steps = read_table(layout.table(out_dir, "steps"), STEPS).to_pylist()
    rows = result_rows(policy_name, "cot", trajs, steps, {t.task_id: t for t in tasks})
    write_table(rows, layout.table(out_dir, "results"), EVAL_RESULTS)
    return replay_summary(rows)


def replay_summary(rows: list[dict]) -> dict:
    """Of a greedy replay's EVAL_RESULTS rows: pass rate in % (Solved 1, Unsure 0.5), the share of tool calls
    that failed (SuccCalling 0 by the rule) and tool calls per task."""
    calls = sum(r["n_calls"] for r in rows)
    return {"tasks": len(rows),
            "pass_rate": round(100.0 * sum(r["pass_score"] for r in rows) / len(rows), 3) if rows else None,
            "failed_call_rate": round(1 - sum(r["n_calls_ok"] for r in rows) / calls, 4) if calls else None,
            "calls_per_task": round(calls / len(rows), 3) if rows else None}


def replay_behaviour(results: Path) -> dict | None:
    """A greedy replay's readouts from its results.parquet (None when there is none): `replay_summary`'s plus the
    no-answer rate (no Finish at all)."""
    if not results.exists():
        return None
    rows = read_table(results, EVAL_RESULTS).to_pylist()
    out = replay_summary(rows)
    out["no_finish_rate"] = (round(sum(r["finish_type"] not in ("give_answer", "give_up") for r in rows) / len(rows), 4)
                             if rows else None)
    return out


def annotate(params, root: Path, traj_dir: Path, out_dir: Path, metrics: Path) -> dict:
    """Label every trajectory of `traj_dir` (annotate section) -> `out_dir`/steps.parquet and failed.json, the
    summary -> `metrics` (and returned). Raises when more than `annotate.max_failed_fraction` could not be labelled (after
    writing what was: a rerun retries only the rest, through the judge's cache)."""
    from pipeline.annotate.run import (annotated_rows, failure_records, group_steps, label_trajectories,
                                       reason_kind, summarize)

    trajs = read_table(layout.table(traj_dir, "trajectories"), TRAJECTORIES).to_pylist()
    steps = read_table(layout.table(traj_dir, "steps"), STEPS).to_pylist()
    counts = Counter(s["traj_id"] for s in steps)
    for i, t in enumerate(trajs):  # a trajectory without (all) its steps would be written short, and not counted
        if counts.get(t["traj_id"], 0) != t["n_steps"]:
            raise SteptoolError(f"{layout.table(traj_dir, 'steps')}: trajectory {t['traj_id']} has "
                                f"{counts.get(t['traj_id'], 0)} steps, {layout.table(traj_dir, 'trajectories')} "
                                f"record {i} field 'n_steps' says {t['n_steps']}: the collection is incomplete "
                                "(rerun collect)")
    tasks = {t.task_id: t for split in SPLITS for t in load_tasks(root, split)}
    cfg = params.annotate
    cache_path = Path(cfg.cache_path)
    labels, stats = label_trajectories(trajs, steps, tasks, cfg,
                                       str(cache_path if cache_path.is_absolute() else root / cache_path))
    by_traj = group_steps(steps)
    rows = annotated_rows(by_traj, labels)
    write_table(rows, layout.table(out_dir, "steps"), ANNOTATED_STEPS)
    records = failure_records(labels, by_traj)
    write_json(out_dir / FAILED, records)
    failed = [r for r in records if not r["labelled"]]
    summary = summarize(labels, rows, stats, by_traj)
    write_json(metrics, summary)
    if failed and (not summary["annotated"] or len(failed) > cfg.max_failed_fraction * len(labels)):
        kinds = Counter(reason_kind(r["reason"]) for r in failed)
        raise SteptoolError(
            f"annotate ({cfg.annotator}): {len(failed)} of {len(labels)} trajectories not labelled (above "
            f"annotate.max_failed_fraction = {cfg.max_failed_fraction:g}): "
            + ", ".join(f"{n} x {k}" for k, n in kinds.most_common(5))
            + f"; every reason is in {out_dir / FAILED}, and a rerun retries them")
    return summary


def reward_table(params, src: Path, variant: str):
    """The step rewards and returns of the annotated steps in `src` (polars, schema ADVANTAGES) and their summary;
    nothing is written (the caller may still refuse them)."""
    from pipeline.rewards import reward_table as compute

    steps = pl.from_arrow(read_table(src, ANNOTATED_STEPS))  # ranges, unique steps, outcome on the last, labelled calls
    if steps.height == 0:
        raise SteptoolError(f"{src}: no annotated step, nothing to compute rewards for (see {src.parent / FAILED})")
    r = params.rewards
    try:
        table = compute(steps, r, variant)
    except ValueError as e:
        raise SteptoolError(f"{src}: {e}") from None
    return table, {"variant": variant, "steps": table.height, "trajectories": table["traj_id"].n_unique(),
                   "reward_mean": round(float(table["reward"].mean() or 0), 4),
                   "return_mean": round(float(table["return"].mean() or 0), 4), "shaping": r.shaping,
                   "normalize": r.normalize}


def advantages(params, src: Path, out: Path, variant: str) -> dict:
    """Step rewards and returns of the annotated steps in `src` -> `out` (what the trainer trains on); the summary."""
    table, summary = reward_table(params, src, variant)
    write_table(table.to_arrow(), out, ADVANTAGES)
    return summary
