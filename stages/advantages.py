"""Stage `advantages VARIANT SEED` (one per variant and seed): step rewards, returns and Monte-Carlo advantages
of annotate@SEED's steps -> data/advantages/<VARIANT>/s<SEED>.parquet. The trainer reads the rewards from it;
the returns and advantages are there to look at (the trainer's step-level GAE against its baseline replaces
them). The input is checked against its schema's constraints first (pipeline/schema.py): values in range and
finite, no duplicated step, the outcome on each trajectory's last step only; an empty table is an error."""
from __future__ import annotations

from pathlib import Path

from pipeline import layout, rounds, variants
from pipeline.config import Params
from pipeline.fsutil import write_json
from pipeline.runner import run_stage

ARGS = (("variant", dict(nargs="?", default=variants.DEFAULT, choices=list(variants.NAMES),
                         help="training variant: " + variants.describe())),
        ("seed", dict(nargs="?", type=int, default=0, help="the training seed (one of train.seeds)")))


def run(params: Params, root: Path = Path("."), variant: str = variants.DEFAULT, seed: int = 0) -> str:
    out = layout.advantages_file(variant, seed)
    summary = rounds.advantages(params, root / layout.table(layout.annotated_dir(seed), "steps"), root / out,
                                variant)
    write_json(root / layout.metrics_file("advantages", layout.run_name(variant, seed)), summary)
    return (f"advantages ({variant}, seed {seed}): {summary['steps']} steps of {summary['trajectories']} "
            f"trajectories, mean reward {summary['reward_mean']} -> {out}")


def main(argv: list[str] | None = None) -> int:
    return run_stage("advantages", __doc__, run, argv, ARGS)


if __name__ == "__main__":
    raise SystemExit(main())
