"""Step rewards and returns-to-go (pure functions; docs/architecture.md, "Rewards").

For a trajectory with steps t = 0..T (T the last: the Finish, or the call the action budget cut), with
SuccCalling SC_t ∈ [0, 1] and Contribution Con_t ∈ [0, 5] (means over the judge's votes) on tool calls:

    r_t = step_scale·s_t − call_cost·[t is a call] − failed_call_cost·[t is a call]·(1 − SC_t) + [t = T]·IsSolved

IsSolved: Solved 1, Unsure 0.5, Unsolved 0 (no Finish: 0). The step part s_t depends on `shaping`:

    paper      s_t = p_t for t < T, s_T = 0, with p_t = (α·SC_t + Con_t / 5) / (α + 1) ∈ [0, 1]: the paper's
               §4.1 reward with the reference's normalisation (α = 1: its equal weights). Contribution is judged
               against the final answer, so a call that brings nothing new earns Con 0 (the oracle says so).
    progress   s_t = γ·Φ_{t+1} − Φ_t for t < T, s_T = −Φ_T: potential-based shaping (Ng, Harada & Russell 1999,
               "Policy invariance under reward transformations") with Φ_t the share of the needed facts known
               before step t (Φ_0 = 0; the annotator's `progress` column, the oracle's) and the episode's end a
               state of potential 0. Over a whole trajectory the shaping sums to (γ-discounted) zero, so it moves
               credit between steps but cannot change which policy is optimal.
    min_form   s_t = m_t − m_{t+1} (m_{T+1} = 0) with m_t = min_{k ≥ t} q_k, q_k = p_k for k < T and q_T = IsSolved
               (the answer, judged, is the last step's process reward): PURE's min-form credit (Cheng et al.,
               arXiv 2504.15275). At γ = 1 the step part of the return-to-go is step_scale·m_t, the minimum of the
               future process rewards, so one poor step lowers the credit of every step before it, padding can
               only lower it, and a trajectory that never answers (q_T = 0) earns no step credit at all.

A variant without `step_rewards` (pipeline.variants) gets r_t = [t = T]·IsSolved alone; one without
`credit_across_steps` has γ = 0 (G_t = r_t), so it is trained on each step's own reward, and a shaping built to
telescope over summed returns gives its myopic form there (docs/architecture.md, "no_step_opt and `progress`
shaping"): `progress` the step's own gain s_t = Φ_{t+1} − Φ_t (0 on a Finish: no pay-back of −Φ_T, which at γ = 0
would make a correct answer after every fact earn 0 against a fact's +ΔΦ), `min_form` the process reward
s_t = p_t, 0 on the last step (the paper's part: the answer is paid by IsSolved). `paper` is already immediate.
Returns-to-go G_t = Σ_{k≥t} γ^{k−t} r_k (`discounted_returns`, the one implementation: the advantages table and the
trainer both call it). `normalize: whiten` whitens the rewards a
variant gives over the table (every step's, or only the last step's for a variant without step rewards).

SC and Con are already means over the votes; p is linear in both, so this equals averaging the normalised
reward of each vote (the reference's 0.9333 = mean of 1, 1, 0.8).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import polars as pl

from pipeline import variants
from pipeline.config import RewardsConfig
from pipeline.registry import SHAPINGS

# the paper's reward as the reference computes it (α = 1, γ = 1, no scale or costs: every key that differs from
# the config's defaults is set here): these functions' default; the pipeline's reward is params.yaml's `rewards`
# section, the same dataclass
PAPER = RewardsConfig(shaping="paper", alpha=1.0, gamma=1.0, step_scale=1.0, call_cost=0.0, failed_call_cost=0.0,
                      normalize="none")


def step_rewards(steps: pl.DataFrame, variant: str = variants.DEFAULT,
                 spec: RewardsConfig | None = None) -> pl.DataFrame:
    """steps: one row per step with traj_id, step_idx, succ_calling, contribution (null on Finish),
    is_solved_score (last step), and `progress` (share of needed facts known after the step) for a shaping
    that needs it (pipeline/registry.py, SHAPINGS). `spec`: the reward, a `rewards` section (default: the paper's, `PAPER`). Returns traj_id, step_idx, reward, is_last
    (sorted by trajectory and step)."""
    spec = spec or PAPER
    spec.check("rewards")
    v = variants.get(variant)
    cols = ["traj_id", "step_idx", "succ_calling", "contribution", "is_solved_score"]
    if SHAPINGS.has(spec.shaping, "needs_progress"):
        if "progress" not in steps.columns or steps["progress"].null_count() == steps.height:
            givers = [k for k in SHAPINGS.names() if not SHAPINGS.has(k, "needs_progress")]
            raise ValueError(f"rewards.shaping {spec.shaping} needs each step's progress (the share of needed facts "
                             f"known), which only the oracle annotator gives: use shaping {' or '.join(givers)}")
        cols.append("progress")
    df = steps.select(cols)
    tid, prev = pl.col("traj_id"), pl.col("traj_id").shift(1)
    if not df.select(((tid > prev) | ((tid == prev) & (pl.col("step_idx") > pl.col("step_idx").shift(1))))
                     .fill_null(True).all()).item():  # the annotate stage writes them in order: no sort then
        df = df.sort("traj_id", "step_idx")
    last = (tid != tid.shift(-1)).fill_null(True)  # sorted, one row per step: a trajectory's last row
    sc = pl.col("succ_calling")
    df = df.with_columns(last.alias("is_last"), sc.is_not_null().alias("_call"),
                         ((spec.alpha * sc.fill_null(0.0) + pl.col("contribution").fill_null(0.0) / 5.0)
                          / (spec.alpha + 1.0)).alias("_p"))
    df, part = SHAPINGS.implementation(spec.shaping)(df, spec, not v.credit_across_steps)
    call = pl.col("_call").cast(pl.Float64)
    step_part = (spec.step_scale * part - spec.call_cost * call
                 - spec.failed_call_cost * call * (1.0 - sc.fill_null(1.0)))
    if not v.step_rewards:
        step_part = pl.lit(0.0)
    outcome = pl.when(pl.col("is_last")).then(pl.col("is_solved_score").fill_null(0.0)).otherwise(0.0)
    df = df.with_columns((step_part + outcome).cast(pl.Float64).alias("reward"))
    if spec.normalize == "whiten":
        # over the rewards the variant gives: every step's, or only the last step's for an outcome-only
        # variant, whose intermediate zeros mean "no reward here" and stay 0 (whitened, they would become a
        # per-step length penalty)
        given = pl.col("is_last") | pl.lit(v.step_rewards)
        scored = df.filter(given)["reward"]
        mean, std = scored.mean() or 0.0, scored.std()
        std = std if std and std > 0 else 1.0
        df = df.with_columns(pl.when(given).then((pl.col("reward") - mean) / std).otherwise(0.0).alias("reward"))
    return df.select("traj_id", "step_idx", "reward", "is_last")


def paper_part(df: pl.DataFrame, spec: RewardsConfig, myopic: bool) -> tuple[pl.DataFrame, pl.Expr]:
    """`paper`: s_t = p_t before the last step, 0 on it (the module docstring's table); immediate already, so
    `myopic` (a variant without credit across steps) changes nothing."""
    return df, pl.when(pl.col("is_last")).then(0.0).otherwise(pl.col("_p"))


def progress_part(df: pl.DataFrame, spec: RewardsConfig, myopic: bool) -> tuple[pl.DataFrame, pl.Expr]:
    """`progress`: s_t = γ·Φ_{t+1} − Φ_t before the last step, −Φ_T on it, Φ_t the progress known before step t.
    `myopic`: s_t = Φ_{t+1} − Φ_t on every step (a Finish's gain is 0), no pay-back."""
    # Φ_t: known before step t = the progress after step t−1 (0 before the first step)
    phi = pl.col("progress").fill_null(strategy="forward").over("traj_id").fill_null(0.0)
    df = df.with_columns(phi.shift(1).over("traj_id").fill_null(0.0).alias("_phi"), phi.alias("_phi_next"))
    if myopic:
        return df, pl.col("_phi_next") - pl.col("_phi")
    return df, pl.when(pl.col("is_last")).then(-pl.col("_phi")).otherwise(spec.gamma * pl.col("_phi_next")
                                                                          - pl.col("_phi"))


def min_form_part(df: pl.DataFrame, spec: RewardsConfig, myopic: bool) -> tuple[pl.DataFrame, pl.Expr]:
    """`min_form`: m_t = min of q over the steps from t on (q_T = IsSolved); s_t = m_t − m_{t+1}, m_{T+1} = 0.
    `myopic`: the process reward itself, as `paper` (a minimum over the future is credit across steps)."""
    if myopic:
        return paper_part(df, spec, myopic)
    df = df.with_columns(pl.when(pl.col("is_last")).then(pl.col("is_solved_score").fill_null(0.0))
                         .otherwise(pl.col("_p")).alias("_q"))
    df = df.with_columns(pl.col("_q").cum_min(reverse=True).over("traj_id").alias("_m"))
    return df, pl.col("_m") - pl.col("_m").shift(-1).over("traj_id").fill_null(0.0)


def discounted_returns(rewards: np.ndarray | Sequence[float], lengths: np.ndarray | Sequence[int],
                       gamma: float) -> np.ndarray:
    """G_t = Σ_{k≥t} γ^{k−t} r_k within each segment.

    Args:
        rewards: [N] float, the segments one after the other (a trajectory's steps, or action tokens).
        lengths: [S] int ≥ 0, the segments' lengths (sum N).
        gamma: discount in [0, 1].
    Returns:
        [N] float64 returns-to-go. Every segment is swept from its end, all segments at once: the same
        additions in the same order as the per-trajectory loop G = r + γ·G, so the result does not depend on how
        segments are batched, and long segments neither overflow nor underflow."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    r = np.asarray(rewards, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if int(lengths.sum()) != len(r) or (lengths < 0).any():
        raise ValueError(f"segment lengths {lengths.tolist()[:8]}... do not cover {len(r)} rewards")
    out = r.copy()
    if gamma == 0.0 or len(r) == 0:
        return out
    ends = np.cumsum(lengths)  # exclusive end of each segment
    longest = int(lengths.max())
    n_seg = len(lengths)
    if n_seg * longest <= 4 * len(r):
        # segments of similar length (steps of trajectories): one column per segment, right-aligned, swept row by
        # row from the end; a pad's value is never read back. Element i of segment j sits at [distance from the
        # end, j] = [ends_j − 1 − i, j] of the [longest, n_seg] grid: flat (ends_j − 1)·n_seg + j − i·n_seg
        flat = np.repeat((ends - 1) * n_seg + np.arange(n_seg), lengths) - np.arange(len(r)) * n_seg
        grid = np.zeros(longest * n_seg)
        grid[flat] = r
        rows, scaled = grid.reshape(longest, n_seg), np.empty(n_seg)  # each sweep is contiguous
        for k in range(1, longest):
            rows[k] += np.multiply(rows[k - 1], gamma, out=scaled)
        return grid[flat]
    from_end = np.repeat(ends, lengths) - 1 - np.arange(len(r))  # 0 on each segment's last element
    # a few long segments (action tokens): the elements at each distance from their end, nearest first
    order = np.argsort(from_end.astype(np.int16) if longest < 2**15 else from_end, kind="stable")
    counts = np.bincount(from_end)
    start = counts[0]
    for c in counts[1:]:
        idx = order[start:start + c]
        out[idx] = r[idx] + gamma * out[idx + 1]
        start += c
    return out


def returns_to_go(rewards: pl.DataFrame, gamma: float) -> pl.DataFrame:
    """Adds `return`: G_t = Σ_{k≥t} γ^{k−t} r_k per trajectory (rows sorted by traj_id, step_idx)."""
    lengths = rewards["traj_id"].rle().struct.field("len").to_numpy()  # runs of one trajectory, in order
    g = discounted_returns(rewards["reward"].to_numpy(), lengths, gamma)
    return rewards.with_columns(pl.Series("return", g))


def reward_table(steps: pl.DataFrame, spec: RewardsConfig, variant: str = variants.DEFAULT) -> pl.DataFrame:
    """traj_id, step_idx, reward, return, variant for every step (schema ADVANTAGES): what the trainer trains on.
    A variant without credit across steps (no_step_opt) has the step's own reward as its return."""
    r = step_rewards(steps, variant=variant, spec=spec)
    lengths = np.diff(np.flatnonzero(r["is_last"].to_numpy()) + 1, prepend=0)  # step_rewards marks each end
    g = discounted_returns(r["reward"].to_numpy(), lengths, variants.get(variant).discount(spec.gamma))
    return r.select("traj_id", "step_idx", "reward", pl.Series("return", g), pl.lit(variant).alias("variant"))
