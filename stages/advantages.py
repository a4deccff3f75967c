"""Stage `advantages` (one per variant): step rewards, returns and Monte-Carlo advantages of the annotated
steps -> data/advantages/<variant>.parquet. The trainer reads the rewards from it; the returns and
advantages are there to look at (the trainer's step-level GAE with a value head replaces them)."""
from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.config import Params
from pipeline.fsutil import write_json
from pipeline.rewards import VARIANTS, advantages
from pipeline.schema import ADVANTAGES, ANNOTATED_STEPS, read_table, write_table

ANNOTATED = Path("data/annotated/steps.parquet")
OUT = Path("data/advantages")
METRICS = Path("data/metrics/advantages")


def run(params: Params, root: Path = Path("."), variant: str = "steptool") -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (one of {', '.join(VARIANTS)})")
    steps = pl.from_arrow(read_table(root / ANNOTATED, ANNOTATED_STEPS))
    r = params.rewards
    table = advantages(steps, alpha=r.alpha, gamma=r.gamma, variant=variant, normalize=r.normalize)
    write_table(table.to_arrow(), root / OUT / f"{variant}.parquet", ADVANTAGES)
    summary = {"variant": variant, "steps": table.height, "trajectories": table["traj_id"].n_unique(),
               "reward_mean": round(float(table["reward"].mean() or 0), 4),
               "return_mean": round(float(table["return"].mean() or 0), 4), "normalize": r.normalize}
    write_json(root / METRICS / f"{variant}.json", summary)
    return (f"advantages ({variant}): {summary['steps']} steps of {summary['trajectories']} trajectories, mean reward "
            f"{summary['reward_mean']} -> {OUT / (variant + '.parquet')}")


def main(argv: list[str] | None = None) -> int:
    from pipeline.cli import run_stage

    return run_stage("advantages", __doc__, run, argv, positional=(
        ("variant", dict(nargs="?", default="steptool", choices=list(VARIANTS), help="training variant")),))

if __name__ == "__main__":
    raise SystemExit(main())
