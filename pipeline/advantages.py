"""A round's rewards on folders: the step rewards and returns of the annotated steps (pipeline/rewards.py's
math), written for the trainer (the `advantages@<variant>-<seed>` stage, and each later round inside the train
stage: docs/architecture.md, "Seeds and rounds")."""
from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline import layout
from pipeline.errors import SteptoolError
from pipeline.schema import ADVANTAGES, ANNOTATED_STEPS, read_table, write_table


def reward_table(params, src: Path, variant: str):
    """The step rewards and returns of the annotated steps in `src` (polars, schema ADVANTAGES) and their summary;
    nothing is written (the caller may still refuse them)."""
    from pipeline.rewards import reward_table as compute

    steps = pl.from_arrow(read_table(src, ANNOTATED_STEPS))  # ranges, unique steps, outcome on the last, labelled calls
    if steps.height == 0:
        raise SteptoolError(f"{src}: no annotated step, nothing to compute rewards for (see {src.parent / layout.ANNOTATION_FAILURES})")
    r = params.rewards
    try:
        table = compute(steps, r, variant)
    except ValueError as e:
        raise SteptoolError(f"{src}: {e}") from None
    return table, {"variant": variant, "steps": table.height, "trajectories": table["traj_id"].n_unique(),
                   "reward_mean": round(float(table["reward"].mean() or 0), 4),
                   "return_mean": round(float(table["return"].mean() or 0), 4), "shaping": r.shaping,
                   "normalize": r.normalize}


def write_advantages(params, src: Path, out: Path, variant: str) -> dict:
    """Step rewards and returns of the annotated steps in `src` -> `out` (what the trainer trains on); the summary."""
    table, summary = reward_table(params, src, variant)
    write_table(table.to_arrow(), out, ADVANTAGES)
    return summary
