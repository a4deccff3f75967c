"""Stage `annotate`: step-grained rewards for every collected trajectory -> data/annotated/steps.parquet.

SuccCalling comes from the rule on each tool response; Contribution and IsSolved from the annotator
chosen in params (`annotate.annotator`: oracle | heuristic | openai). The openai judge goes through a
content-addressed cache, so a rerun (or a run after more trajectories were collected) pays only for
new calls, and a killed run loses nothing it was answered. Trajectories that could not be labelled are
listed with their reason in data/annotated/failed.json, with their number of steps, beside those labelled
from fewer votes than asked (`annotate.min_votes`); a rerun retries them. The metrics count both by length.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipeline import layout
from pipeline.annotate.run import (annotated_rows, failure_records, group_steps, label_trajectories, reason_kind,
                                   summarize)
from pipeline.config import Params
from pipeline.errors import SteptoolError
from pipeline.fsutil import write_json
from pipeline.runner import run_stage
from pipeline.schema import ANNOTATED_STEPS, STEPS, TRAJECTORIES, read_table, write_table
from pipeline.task import SPLITS
from pipeline.task_files import load_tasks

ARGS = ()


def run(params: Params, root: Path = Path(".")) -> str:
    trajs = read_table(root / layout.table(layout.TRAJECTORIES, "trajectories"), TRAJECTORIES).to_pylist()
    steps = read_table(root / layout.table(layout.TRAJECTORIES, "steps"), STEPS).to_pylist()
    tasks = {t.task_id: t for split in SPLITS for t in load_tasks(root, split)}
    cfg = params.annotate
    cache_path = Path(cfg.cache_path)
    labels, stats = label_trajectories(trajs, steps, tasks, cfg,
                                       str(cache_path if cache_path.is_absolute() else root / cache_path))
    by_traj = group_steps(steps)
    rows = annotated_rows(by_traj, labels)
    out = layout.table(layout.ANNOTATED, "steps")
    write_table(rows, root / out, ANNOTATED_STEPS)
    records = failure_records(labels, by_traj)
    write_json(root / layout.ANNOTATED / "failed.json", records)
    failed = [r for r in records if not r["labelled"]]
    summary = summarize(labels, rows, stats, by_traj)
    write_json(root / layout.metrics_file("annotate"), summary)
    if failed and (not summary["annotated"] or len(failed) > cfg.max_failed_fraction * len(labels)):
        kinds = Counter(reason_kind(r["reason"]) for r in failed)
        raise SteptoolError(
            f"annotate ({cfg.annotator}): {len(failed)} of {len(labels)} trajectories not labelled (above "
            f"annotate.max_failed_fraction = {cfg.max_failed_fraction:g}): "
            + ", ".join(f"{n} x {k}" for k, n in kinds.most_common(5))
            + f"; every reason is in {layout.ANNOTATED / 'failed.json'}, and a rerun retries them")
    extra = ""
    if cfg.annotator == "openai":
        extra = f", {stats.get('judge_calls', 0)} judge calls, " \
                f"{stats.get('cache_hits', 0)} cache hits"
    if summary["partial_votes"]:
        extra += f", {summary['partial_votes']} labelled from fewer than {cfg.n_votes} votes"
    return (f"annotate ({cfg.annotator}): {summary['annotated']} trajectories, {summary['steps']} steps labelled, "
            f"{summary['failed']} failed (by steps: {summary['failed_by_steps']}){extra}; mean SuccCalling {summary['succ_calling_mean']}, mean contribution "
            f"{summary['contribution_mean']}, pass rate {summary['pass_rate']} -> {out}")


def main(argv: list[str] | None = None) -> int:
    return run_stage("annotate", __doc__, run, argv, ARGS)


if __name__ == "__main__":
    raise SystemExit(main())
