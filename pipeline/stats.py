"""Uncertainty over tasks: bootstrap confidence intervals of pass rates and of paired differences, the exact
sign test, and the sentence a report may write from them (docs/architecture.md, "Evaluation").

A task's score is the mean of its pass scores (Solved 1, Unsure 0.5, Unsolved 0) over its samples and
judging runs, per training seed (`seed_scores`: a trained variant has one checkpoint per seed; base and sft
have one, seed None). A level's pass rate is 100 × the mean over its tasks of the mean over seeds; the
average is the mean of the levels, as the paper averages I1/I2/I3. The bootstrap resamples tasks within each
level (so every resample keeps every level) and, where there are several, the seeds (one draw of seeds per
resample, shared by the levels), `n_boot` times with a fixed seed, and reports the 2.5th and 97.5th
percentiles: the spread from which tasks happened to be drawn and from which training runs.
"""
from __future__ import annotations

import math
from collections import defaultdict
from statistics import NormalDist

import numpy as np

ALPHA = 0.05


def seed_scores(rows: list[dict]) -> dict[str, tuple[str, dict]]:
    """task_id -> (level, {seed: mean pass score over that seed's samples and judging runs}) from EVAL_RESULTS
    rows; seed None for a model without training seeds."""
    acc: dict[str, dict] = defaultdict(lambda: defaultdict(list))
    level = {}
    for r in rows:
        acc[r["task_id"]][r.get("seed")].append(float(r["pass_score"]))
        level[r["task_id"]] = r["level"]
    return {t: (level[t], {s: sum(v) / len(v) for s, v in by_seed.items()}) for t, by_seed in acc.items()}


def _seeds(score) -> dict:
    """A task's scores by seed: a plain number is one seed (None)."""
    return score if isinstance(score, dict) else {None: score}


def _by_level(scores: dict[str, tuple]) -> dict[str, np.ndarray]:
    """level -> [tasks, seeds] scores. Every task must have the same seeds (each checkpoint played every task)."""
    seeds = {frozenset(_seeds(s)) for _, s in scores.values()}
    if len(seeds) > 1:
        raise ValueError(f"tasks were played by different seeds: {sorted(map(sorted, seeds), key=str)}")
    order = sorted(next(iter(seeds)), key=lambda x: (x is None, x)) if seeds else []
    out: dict[str, list[list[float]]] = defaultdict(list)
    for _, (lv, s) in sorted(scores.items()):
        out[lv].append([_seeds(s)[k] for k in order])
    return {lv: np.asarray(v, dtype=np.float64).reshape(len(v), -1) for lv, v in sorted(out.items())}


def _stratified(levels: dict[str, np.ndarray], n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """[n_boot] resampled means (×100) per level, and their mean over levels under 'average'. `levels`: level ->
    [tasks, seeds]; with several seeds each resample draws the seeds (with replacement) once, for every level."""
    rng = np.random.default_rng(seed)
    n_seeds = next(iter(levels.values())).shape[1]
    seed_idx = rng.integers(0, n_seeds, size=(n_boot, n_seeds)) if n_seeds > 1 else None
    boots = {}
    for lv, v in levels.items():
        # [n_boot, tasks]: each task's mean over the resample's seeds
        per_task = np.broadcast_to(v[:, 0], (n_boot, len(v))) if seed_idx is None else v[:, seed_idx].mean(-1).T
        idx = rng.integers(0, len(v), size=(n_boot, len(v)))
        boots[lv] = 100.0 * np.take_along_axis(per_task, idx, 1).mean(1)
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
    points = {lv: 100.0 * float(v.mean()) for lv, v in levels.items()}  # equal seeds per task: mean of means
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


def paired_difference(cand: dict[str, tuple], ref: dict[str, tuple], n_boot: int = 10000, seed: int = 0) -> dict:
    """The candidate minus the reference on the tasks both played, in points of the average pass rate: the
    difference, its 95% bootstrap CI (tasks resampled within levels, both models' scores of a task kept
    together; seeds resampled too where the candidate has several), the sign test's p-value, and wins / ties /
    losses counted per task (on the task's mean over seeds).

    Scores are `seed_scores` values (or task -> (level, score) for one checkpoint). Against a model without seeds (sft) every seed of the
    candidate is paired with its one score; two models with the same seeds are paired seed by seed (they
    trained on the same collection); otherwise each is averaged over its seeds first. With several seeds,
    `sd_between` and `sd_within` split the spread of per-task differences into tasks and training seeds
    (`variance_components`)."""
    common = sorted(set(cand) & set(ref))
    diffs = {t: (cand[t][0], _paired(_seeds(cand[t][1]), _seeds(ref[t][1]))) for t in common}
    means = {t: sum(d.values()) / len(d) for t, (_, d) in diffs.items()}
    wins = sum(d > 0 for d in means.values())
    losses = sum(d < 0 for d in means.values())
    out = {"tasks": len(common), "wins": wins, "ties": len(common) - wins - losses, "losses": losses,
           # significant figures, not decimals: a p of 1e-9 rounded to 6 decimals would read as an impossible 0
           "p_value": float(f"{sign_test(wins, losses):.4g}")}
    if not common:
        return {**out, "diff": None, "lo": None, "hi": None}
    levels = _by_level(diffs)
    boot = _stratified(levels, n_boot, seed)["average"]
    point = float(np.mean([100.0 * v.mean() for v in levels.values()]))
    cell = _cell(point, boot, len(common))
    sd = difference_sd({lv: v.mean(1) for lv, v in levels.items()})
    out = {**out, "diff": cell["mean"], "lo": cell["lo"], "hi": cell["hi"], "sd": None if sd is None else round(sd, 3)}
    seeds = next(iter(levels.values())).shape[1]
    if seeds > 1:
        between, within = variance_components(levels)
        out.update(seeds=seeds, sd_between=round(between, 3), sd_within=round(within, 3))
    return out


def _paired(c: dict, r: dict) -> dict:
    """Per seed, candidate minus reference (see paired_difference for the pairing)."""
    if list(r) == [None]:
        return {k: v - r[None] for k, v in c.items()}
    if set(c) == set(r):
        return {k: c[k] - r[k] for k in c}
    return {None: sum(c.values()) / len(c) - sum(r.values()) / len(r)}


def variance_components(levels: dict[str, np.ndarray]) -> tuple[float, float]:
    """(sd between tasks, sd within a task across seeds), in points, of per-(task, seed) differences
    `levels`: level -> [tasks, seeds >= 2]. Within: the pooled per-task variance over seeds; between: the
    variance of the per-task means less within/seeds (one-way random effects, method of moments, floored at
    0), pooled over levels like `difference_sd`. A study with n tasks and m seeds then has per-task
    variance between² + within²/m."""
    within_parts, between_parts = [], []
    for v in levels.values():
        n, m = v.shape
        w = float(v.var(axis=1, ddof=1).mean())
        within_parts.append((n * (m - 1), w))
        if n >= 2:
            between_parts.append((n - 1, max(0.0, float(v.mean(1).var(ddof=1)) - w / m)))
    within = sum(d * x for d, x in within_parts) / sum(d for d, _ in within_parts)
    dof = sum(d for d, _ in between_parts)
    between = sum(d * x for d, x in between_parts) / dof if dof else 0.0
    return 100.0 * math.sqrt(between), 100.0 * math.sqrt(within)


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


# Student's t quantile t_{0.975, df} for df = 1..30 (above 30 the normal's 1.96 is within 4%)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_ci(values: list[float]) -> dict:
    """Mean of `values` (one per training seed) with its 95% Student-t interval: mean ± t_{0.975, n−1}·s/√n.
    With one value the interval is not defined (lo = hi = None): the spread across seeds was not measured."""
    xs = [float(x) for x in values if x is not None and x == x]
    n = len(xs)
    if not n:
        return {"mean": None, "lo": None, "hi": None, "n": 0, "sd": None}
    mean = sum(xs) / n
    if n == 1:
        return {"mean": mean, "lo": None, "hi": None, "n": 1, "sd": None}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n, "sd": sd}


def t975(df: int) -> float:
    """Student's t quantile t_{0.975, df}: the table to 30 degrees of freedom, the normal's 1.96 beyond."""
    return _T975[df - 1] if df <= len(_T975) else NormalDist().inv_cdf(0.975)


def seeds_to_tell(mean: float, sd: float, most: int = 1000) -> int | None:
    """The fewest seeds at which `mean_ci`'s interval would exclude 0 if the seeds' mean and standard deviation
    stayed as measured: the smallest n >= 2 with t_{0.975, n−1}·sd/√n < |mean|. None when the mean is 0 (no number
    of seeds tells it from 0) or more than `most` seeds would be needed."""
    if not mean:
        return None
    for n in range(2, most + 1):
        if t975(n - 1) * sd / math.sqrt(n) < abs(mean):
            return n
    return None
