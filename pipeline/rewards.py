"""Step rewards, returns-to-go and Monte-Carlo advantages, vectorised with polars (pure functions).

Step reward (docs/architecture.md, "Rewards"; paper §4.1 with the reference's normalisation), for step t:

    intermediate step:  r_t = (α·SC_t + Con_t / 5) / (α + 1)      SC ∈ [0, 1], Con ∈ [0, 5]  ->  r_t ∈ [0, 1]
    last step:          r_T = IsSolved  (Solved 1, Unsure 0.5, Unsolved 0; a trajectory cut before Finish: 0)

SC and Con are already means over the judge's votes; r is linear in both, so this equals averaging the
normalised reward of each vote (the reference's 0.9333 = mean of 1, 1, 0.8). A variant without
`step_rewards` (pipeline.variants) has intermediate r_t = 0 and r_T = IsSolved; one without
`credit_across_steps` has G_t = r_t.

Returns-to-go G_t = Σ_{k≥t} γ^{k−t} r_k within a trajectory. The Monte-Carlo advantage is
A_t = G_t − b with b the mean return over all steps (a batch baseline; the trainer's step-level GAE with a
value head replaces it). `normalize: whiten` whitens the rewards the variant gives over the whole table
first (mean 0, std 1): every step's, or the last step's only for a variant without step rewards.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import polars as pl

from pipeline import variants


def step_rewards(steps: pl.DataFrame, alpha: float = 1.0, variant: str = variants.DEFAULT,
                 normalize: Literal["none", "whiten"] = "none") -> pl.DataFrame:
    """steps: one row per step with traj_id, step_idx, succ_calling, contribution, is_solved_score (last step).
    Returns traj_id, step_idx, reward, is_last (sorted by trajectory and step)."""
    v = variants.get(variant)
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    df = steps.select("traj_id", "step_idx", "succ_calling", "contribution", "is_solved_score").sort("traj_id", "step_idx")
    is_last = pl.col("step_idx") == pl.col("step_idx").max().over("traj_id")
    intermediate = (alpha * pl.col("succ_calling").fill_null(0.0) + pl.col("contribution").fill_null(0.0) / 5.0) / (alpha + 1.0)
    if not v.step_rewards:
        intermediate = pl.lit(0.0)
    df = df.with_columns(is_last.alias("is_last")).with_columns(
        pl.when(pl.col("is_last")).then(pl.col("is_solved_score").fill_null(0.0)).otherwise(intermediate)
        .cast(pl.Float64).alias("reward"))
    if normalize == "whiten":
        # over the rewards the variant gives: every step's, or only the last step's for an outcome-only
        # variant, whose intermediate zeros mean "no reward here" and stay 0 (whitened, they would become a
        # per-step length penalty)
        given = pl.col("is_last") | pl.lit(v.step_rewards)
        scored = df.filter(given)["reward"]
        mean, std = scored.mean() or 0.0, scored.std()
        std = std if std and std > 0 else 1.0
        df = df.with_columns(pl.when(given).then((pl.col("reward") - mean) / std).otherwise(0.0).alias("reward"))
    elif normalize != "none":
        raise ValueError(f"normalize must be none or whiten, got {normalize!r}")
    return df.select("traj_id", "step_idx", "reward", "is_last")


def returns_to_go(rewards: pl.DataFrame, gamma: float) -> pl.DataFrame:
    """Adds `return`: G_t = Σ_{k≥t} γ^{k−t} r_k per trajectory (rows sorted by traj_id, step_idx).

    Vectorised as a reverse cumulative sum of r_k·γ^{k−T} (T the last index), rescaled by γ^{T−t}; the
    exponents are ≤ 0 relative to the end, so nothing overflows for long trajectories."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if gamma == 0.0:
        return rewards.with_columns(pl.col("reward").alias("return"))
    if gamma == 1.0:
        return rewards.with_columns(pl.col("reward").cum_sum(reverse=True).over("traj_id").alias("return"))
    # G_t = γ^{-t}·Σ_{k≥t} γ^k r_k, with t counted from the trajectory's first step. γ^t underflows only
    # past ~700/ln(1/γ) steps (1000 steps at γ = 0.5); such tables take the exact per-trajectory loop.
    longest = rewards.group_by("traj_id").len()["len"].max() or 0
    if longest * math.log(1.0 / gamma) > 600:
        return _returns_loop(rewards, gamma)
    # u is materialised first: a window nested in another window is ~10x slower in polars
    u = (pl.col("step_idx") - pl.col("step_idx").min().over("traj_id")).cast(pl.Float64)
    scale = pl.lit(gamma).pow(pl.col("_u"))
    return (rewards.with_columns(u.alias("_u"))
            .with_columns(((pl.col("reward") * scale).cum_sum(reverse=True).over("traj_id") / scale).alias("return"))
            .drop("_u"))


def _returns_loop(rewards: pl.DataFrame, gamma: float) -> pl.DataFrame:
    r = rewards["reward"].to_numpy()
    ids = rewards["traj_id"].to_numpy()
    out = np.empty_like(r, dtype=np.float64)
    acc, prev = 0.0, None
    for i in range(len(r) - 1, -1, -1):
        if ids[i] != prev:
            acc, prev = 0.0, ids[i]
        acc = r[i] + gamma * acc
        out[i] = acc
    return rewards.with_columns(pl.Series("return", out))


def advantages(steps: pl.DataFrame, *, alpha: float = 1.0, gamma: float = 1.0, variant: str = variants.DEFAULT,
               normalize: Literal["none", "whiten"] = "none") -> pl.DataFrame:
    """traj_id, step_idx, reward, return, advantage, variant for every step (schema ADVANTAGES).
    A variant without credit across steps (no_step_opt) has the step's own reward as its return."""
    r = step_rewards(steps, alpha, variant, normalize)
    g = returns_to_go(r, gamma if variants.get(variant).credit_across_steps else 0.0)
    return g.with_columns((pl.col("return") - pl.col("return").mean()).alias("advantage"),
                          pl.lit(variant).alias("variant")).select(
        "traj_id", "step_idx", "reward", "return", "advantage", "variant")
