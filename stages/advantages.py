"""Stage `advantages` (one per variant): step rewards, returns and Monte-Carlo advantages of the annotated
steps -> data/advantages/<variant>.parquet. The trainer reads the rewards from it; the returns and
advantages are there to look at (the trainer's step-level GAE against its baseline replaces them). The input
is checked against its schema's constraints first (pipeline/schema.py): values in range and finite, no
duplicated step, the outcome on each trajectory's last step only; an empty table is an error."""
from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline import layout, variants
from pipeline.config import Params
from pipeline.errors import SteptoolError
from pipeline.fsutil import write_json
from pipeline.rewards import advantages
from pipeline.runner import run_stage
from pipeline.schema import ADVANTAGES, ANNOTATED_STEPS, read_table, write_table

ARGS = (("variant", dict(nargs="?", default=variants.DEFAULT, choices=list(variants.NAMES),
                         help="training variant: " + variants.describe())),)


def run(params: Params, root: Path = Path("."), variant: str = variants.DEFAULT) -> str:
    src = root / layout.table(layout.ANNOTATED, "steps")
    steps = pl.from_arrow(read_table(src, ANNOTATED_STEPS))  # ranges, unique steps, the outcome on the last: checked
    if steps.height == 0:
        raise SteptoolError(f"{src}: no annotated step, nothing to compute rewards for (see the annotate stage's "
                            f"{layout.ANNOTATED / 'failed.json'})")
    r = params.rewards
    table = advantages(steps, alpha=r.alpha, gamma=r.gamma, variant=variant, normalize=r.normalize)
    out = layout.advantages_file(variant)
    write_table(table.to_arrow(), root / out, ADVANTAGES)
    summary = {"variant": variant, "steps": table.height, "trajectories": table["traj_id"].n_unique(),
               "reward_mean": round(float(table["reward"].mean() or 0), 4),
               "return_mean": round(float(table["return"].mean() or 0), 4), "normalize": r.normalize}
    write_json(root / layout.metrics_file("advantages", variant), summary)
    return (f"advantages ({variant}): {summary['steps']} steps of {summary['trajectories']} trajectories, mean reward "
            f"{summary['reward_mean']} -> {out}")


def main(argv: list[str] | None = None) -> int:
    return run_stage("advantages", __doc__, run, argv, ARGS)


if __name__ == "__main__":
    raise SystemExit(main())
