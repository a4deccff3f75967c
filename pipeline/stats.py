"""Uncertainty over tasks: bootstrap confidence intervals of pass rates and of paired differences, the exact
sign test, and the sentence a report may write from them (docs/architecture.md, "Evaluation").

A task's score is the mean of its pass scores (Solved 1, Unsure 0.5, Unsolved 0) over its samples and
judging runs. A level's pass rate is 100 × the mean over its tasks; the average is the mean of the levels,
as the paper averages I1/I2/I3. The bootstrap resamples tasks within each level (so every resample keeps
every level), `n_boot` times with a fixed seed, and reports the 2.5th and 97.5th percentiles: the spread
that comes from which tasks happened to be drawn, the only one a single greedy sample per task has.
"""
from __future__ import annotations

import math
from collections import defaultdict
from statistics import NormalDist

import numpy as np

ALPHA = 0.05


def task_scores(rows: list[dict]) -> dict[str, tuple[str, float]]:
    """task_id -> (level, mean pass score over the task's samples and judging runs), from EVAL_RESULTS rows."""
    acc: dict[str, list[float]] = defaultdict(list)
    level = {}
    for r in rows:
        acc[r["task_id"]].append(float(r["pass_score"]))
        level[r["task_id"]] = r["level"]
    return {t: (level[t], sum(v) / len(v)) for t, v in acc.items()}


def _by_level(scores: dict[str, tuple[str, float]]) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = defaultdict(list)
    for _, (lv, s) in sorted(scores.items()):
        out[lv].append(s)
    return {lv: np.asarray(v, dtype=np.float64) for lv, v in sorted(out.items())}


def _stratified(levels: dict[str, np.ndarray], n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """[n_boot] resampled means (×100) per level, and their mean over levels under 'average'."""
    rng = np.random.default_rng(seed)
    boots = {lv: 100.0 * v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1) for lv, v in levels.items()}
    boots["average"] = np.mean(list(boots.values()), axis=0)
    return boots


def _cell(point: float, boot: np.ndarray, n: int) -> dict:
    lo, hi = np.percentile(boot, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    return {"mean": round(point, 3), "lo": round(float(lo), 3), "hi": round(float(hi), 3), "n": n}


def pass_rate_ci(scores: dict[str, tuple[str, float]], n_boot: int = 10000, seed: int = 0) -> dict:
    """Per level and 'average': the pass rate in percent with its 95% bootstrap CI over tasks and the
    number of tasks n."""
    levels = _by_level(scores)
    if not levels:
        return {}
    boots = _stratified(levels, n_boot, seed)
    points = {lv: 100.0 * float(v.mean()) for lv, v in levels.items()}
    out = {lv: _cell(points[lv], boots[lv], len(v)) for lv, v in levels.items()}
    out["average"] = _cell(float(np.mean(list(points.values()))), boots["average"], len(scores))
    return out


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test of wins against losses (ties left out): 2·P(X ≤ min(w, l)) for
    X ~ Binomial(w + l, 1/2), at most 1."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    return min(1.0, 2.0 * sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n)


def paired_difference(cand: dict[str, tuple[str, float]], ref: dict[str, tuple[str, float]], n_boot: int = 10000,
                      seed: int = 0) -> dict:
    """The candidate minus the reference on the tasks both played, in points of the average pass rate: the
    difference, its 95% bootstrap CI (tasks resampled within levels, both models' scores of a task kept
    together), the sign test's p-value, and wins / ties / losses counted per task."""
    common = sorted(set(cand) & set(ref))
    diffs = {t: (cand[t][0], cand[t][1] - ref[t][1]) for t in common}
    wins = sum(d > 0 for _, d in diffs.values())
    losses = sum(d < 0 for _, d in diffs.values())
    out = {"tasks": len(common), "wins": wins, "ties": len(common) - wins - losses, "losses": losses,
           "p_value": round(sign_test(wins, losses), 6)}
    if not common:
        return {**out, "diff": None, "lo": None, "hi": None}
    levels = _by_level(diffs)
    boot = _stratified(levels, n_boot, seed)["average"]
    point = float(np.mean([100.0 * v.mean() for v in levels.values()]))
    cell = _cell(point, boot, len(common))
    sd = difference_sd(levels)
    return {**out, "diff": cell["mean"], "lo": cell["lo"], "hi": cell["hi"],
            "sd": None if sd is None else round(sd, 3)}


def difference_sd(levels: dict[str, np.ndarray]) -> float | None:
    """The per-task standard deviation of paired differences, in points: the root of the within-level sample
    variances pooled over the levels (the average pass rate weighs the levels equally, so with n/L tasks per
    level its variance is this squared over n). None with fewer than two tasks in every level."""
    pooled = [(len(v) - 1, float(v.var(ddof=1))) for v in levels.values() if len(v) >= 2]
    dof = sum(d for d, _ in pooled)
    if dof == 0:
        return None
    return 100.0 * math.sqrt(sum(d * var for d, var in pooled) / dof)


def tasks_needed(sd: float, delta: float, alpha: float = ALPHA, power: float = 0.8) -> int | None:
    """Tasks (spread evenly over the levels) a paired comparison needs to detect a true difference of `delta`
    points at `power` with a two-sided test at `alpha`, when per-task differences have standard deviation
    `sd` points (normal approximation): n = ((z_{1−α/2} + z_{power}) · sd / delta)², rounded up. None when
    sd is unknown or 0 (no task differed: the spread was not measured) or delta is 0."""
    if not sd or delta == 0:
        return None
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return max(2, math.ceil((z * sd / abs(delta)) ** 2))


def min_decisive_tasks(alpha: float = ALPHA) -> int:
    """The fewest tasks that differ which the sign test can ever call significant (all won): 6 at 5%."""
    n = 1
    while sign_test(n, 0) >= alpha:
        n += 1
    return n


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def verdict(name: str, ref: str, d: dict) -> str:
    """One sentence about `name` against `ref` that follows from `paired_difference`'s numbers: better or
    worse only when the CI excludes 0 and the sign test is significant at 5%."""
    decisive = d["wins"] + d["losses"]
    if d["tasks"] == 0:
        return f"{name} vs {ref}: no task in common."
    counts = " / ".join(_count(d[k], one, many) for k, one, many in
                        (("wins", "win", "wins"), ("ties", "tie", "ties"), ("losses", "loss", "losses")))
    nums = (f"{d['diff']:+.1f} points (95% CI [{d['lo']:+.1f}, {d['hi']:+.1f}]), {counts} over {d['tasks']} tasks, "
            f"sign test p = {d['p_value']:.3g}")
    if decisive < min_decisive_tasks():
        return (f"{name} vs {ref}: too few tasks to tell ({decisive} of {d['tasks']} differ; the sign test needs at "
                f"least {min_decisive_tasks()}): {nums}.")
    if d["p_value"] < ALPHA and (d["lo"] > 0 or d["hi"] < 0):
        return f"{name} is {'better' if d['diff'] > 0 else 'worse'} than {ref}: {nums}."
    return f"{name} vs {ref}: no significant difference at the 5% level: {nums}."
