"""Stage `annotate SEED` (one per `train.seeds`): step-grained rewards for every trajectory collect@SEED played
-> data/annotated/s<SEED>/steps.parquet.

SuccCalling comes from the rule on each tool response; Contribution and IsSolved from the annotator
chosen in params (`annotate.annotator`: oracle | heuristic | openai). The openai judge goes through a
content-addressed cache, so a rerun (or a run after more trajectories were collected) pays only for
new calls, and a killed run loses nothing it was answered. Trajectories that could not be labelled are
listed with their reason in data/annotated/s<SEED>/failed.json, with their number of steps, beside those
labelled from fewer votes than asked (`annotate.min_votes`); a rerun retries them. The metrics count both by
length.
"""
from __future__ import annotations

from pathlib import Path

from pipeline import layout
from pipeline.annotate.run import annotate_folder
from pipeline.config import Params
from pipeline.registry import ANNOTATORS
from pipeline.runner import run_stage

ARGS = (("seed", dict(nargs="?", type=int, default=0, help="the training seed (one of train.seeds)")),)


def run(params: Params, root: Path = Path("."), seed: int = 0) -> str:
    cfg = params.annotate
    out = layout.annotated_dir(seed)
    summary = annotate_folder(params, root, root / layout.trajectories_dir(seed), root / out,
                              root / layout.metrics_file("annotate", layout.seed_dir(seed)))
    extra = ""
    if ANNOTATORS.has(cfg.annotator, "llm"):
        extra = (f", {summary.get('judge_calls', 0)} judge calls, {summary.get('cache_hits', 0)} cache hits, "
                 f"${summary.get('cost_usd', 0.0):.4f} paid (estimated ${summary.get('estimated_cost_usd', 0.0):.4f})")
    if summary["partial_votes"]:
        extra += f", {summary['partial_votes']} labelled from fewer than {cfg.n_votes} votes"
    return (f"annotate ({cfg.annotator}, seed {seed}): {summary['annotated']} trajectories, {summary['steps']} steps "
            f"labelled, {summary['failed']} failed (by steps: {summary['failed_by_steps']}){extra}; mean SuccCalling "
            f"{summary['succ_calling_mean']}, mean contribution {summary['contribution_mean']}, pass rate "
            f"{summary['pass_rate']} -> {layout.table(out, 'steps')}")


def main(argv: list[str] | None = None) -> int:
    return run_stage("annotate", __doc__, run, argv, ARGS)


if __name__ == "__main__":
    raise SystemExit(main())
