"""Baselines for the round's advantages, and how well each predicts the returns it is a baseline for
(docs/architecture.md, "Advantages and the PPO round").

A baseline b(s_t) lowers the variance of A_t = G_t − b(s_t) without bias only if it does not depend on the
action taken at s_t, and in practice only if it was not fitted to this very G_t: a ridge head with 576
features fitted to ~90 returns and read back on the same states nearly interpolates them (in-sample
explained variance 0.86, leave-out −0.52 on the CPU default's trajectories), so G − b keeps only the fit's
residue and a step with G = 3 gets A ≈ 0. The choices here never see their own targets:

    rloo      per task, the mean over the *other* samples of the same task that reached the same step index
              of their return-to-go there, as RLOO does per prompt; two samples that both earned nothing get
              A = 0 exactly. A sample that had already ended is left out (counting it as a return of 0 would
              lower the baseline of late steps and so favour long trajectories); a step no other sample
              reached, and a task played once, get b = 0.
    crossfit  the ridge head fitted on the other folds of tasks (K folds), read on this fold.
    zero      b = 0.

`fit_returns` (the ridge fit read back in-sample) is kept only to measure what it costs. Every round logs the
explained variance of each choice on its own targets, so the choice can be checked on new data.

All functions are pure and work per unit (steps, or action tokens of a token-level variant); `unit_step`
maps a unit to its step so samples of one task line up by step.
"""
from __future__ import annotations

import math
from collections import defaultdict

import torch


def rloo(targets: list[list[float]], unit_step: list[list[int]], groups: list[str]) -> list[list[float]]:
    """Leave-one-out baseline per unit.

    Args:
        targets: per trajectory, the return-to-go G of each unit, [T_i].
        unit_step: per trajectory, the step index of each unit, [T_i] (non-decreasing).
        groups: per trajectory, its task (samples of one task share it).
    Returns:
        per trajectory [T_i]: for a unit at step t, the mean over the other trajectories j of its group that
        have a step t of G^j at the first unit of step t of j; 0 when no other trajectory of the group has one."""
    at_step = []  # per trajectory: step index -> G at that step's first unit
    for g, s in zip(targets, unit_step):
        first: dict[int, float] = {}
        for x, k in zip(g, s):
            first.setdefault(k, x)
        at_step.append(first)
    members = defaultdict(list)
    for i, grp in enumerate(groups):
        members[grp].append(i)
    out = []
    for i, (g, s) in enumerate(zip(targets, unit_step)):
        others = [j for j in members[groups[i]] if j != i]
        if not others:
            out.append([0.0] * len(g))
            continue
        row = []
        for k in s:
            reached = [at_step[j][k] for j in others if k in at_step[j]]
            row.append(sum(reached) / len(reached) if reached else 0.0)
        out.append(row)
    return out


def _local(t: torch.Tensor) -> torch.Tensor:
    return t


def ridge_fit(x: torch.Tensor, y: torch.Tensor, ridge: float = 1.0, reduce=None) -> tuple[torch.Tensor, float]:
    """Least squares of y [M] on x [M, H] with a bias, ridge-regularised (the bias is not). Returns (w [H], b).

    `reduce`: under distributed training each process holds some of the rows, and `reduce` sums a tensor over
    the processes (every process calls it the same number of times): the fit is the same as on all rows
    together, from their sums (n, Σx, Σy), then the centred products, without gathering the [M, H] features
    anywhere. None: one process, all rows here."""
    reduce = reduce or _local
    x = x.double()
    yd = y.double()
    n = reduce(torch.tensor(float(x.shape[0]), dtype=torch.float64))
    mean = reduce(x.sum(0)) / n  # torch's mean is this sum over n, to the bit
    ymean = reduce(yd.sum()) / n
    xc = x - mean
    gram = reduce(xc.T @ xc)
    w = torch.linalg.solve(gram + ridge * torch.eye(x.shape[1], dtype=x.dtype), reduce(xc.T @ (yd - ymean)))
    return w, float(ymean - mean @ w)


def crossfit(feats: list[torch.Tensor | None], targets: list[list[float]], groups: list[str], folds: int = 5,
             ridge: float = 1.0, reduce=None, hidden: int = 0) -> list[list[float] | None]:
    """Cross-fitted ridge predictions per unit.

    Args:
        feats: per trajectory, the trunk's features at its value states, [T_i, H]; None for a trajectory another
            process holds (with `reduce`, as in `ridge_fit`).
        targets: per trajectory, G per unit, [T_i].
        groups: per trajectory, its task; all samples of a task fall in one fold.
        folds: K (capped at the number of tasks); the tasks go to folds in order of first appearance, round robin.
        hidden: H, for a process that holds no trajectory (it still takes part in every fold's sums).
    Returns:
        per trajectory [T_i]: the prediction of the head fitted on the other folds (0 with a single task); None
        for a trajectory whose features are not here."""
    order = list(dict.fromkeys(groups))
    k = min(folds, len(order))
    fold_of = {g: n % k for n, g in enumerate(order)} if k else {}
    here = [i for i, f in enumerate(feats) if f is not None]
    out: list[list[float] | None] = [[0.0] * len(targets[i]) if feats[i] is not None else None
                                     for i in range(len(targets))]
    if k < 2 or not here and reduce is None:
        return out
    width = next((feats[i].shape[1] for i in here), hidden)
    for f in range(k):
        train = [i for i in here if fold_of[groups[i]] != f]
        x = torch.cat([feats[i] for i in train]) if train else torch.zeros(0, width)
        y = torch.tensor([v for i in train for v in targets[i]], dtype=torch.float64)
        w, b = ridge_fit(x, y, ridge, reduce)
        for i in here:
            if fold_of[groups[i]] == f:
                out[i] = (feats[i].double() @ w + b).tolist()
    return out


def explained_variance(targets: list[list[float]], baseline: list[list[float]]) -> float:
    """1 − Var(G − b) / Var(G) over every unit (population variances); NaN when G is constant. 0 means the
    baseline removes no more variance than a constant would; below 0 it adds variance."""
    g = [x for row in targets for x in row]
    b = [x for row in baseline for x in row]
    if len(g) < 2:
        return math.nan
    mg = sum(g) / len(g)
    var = sum((x - mg) ** 2 for x in g) / len(g)
    if var < 1e-12:
        return math.nan
    d = [x - y for x, y in zip(g, b)]
    md = sum(d) / len(d)
    return 1.0 - (sum((x - md) ** 2 for x in d) / len(d)) / var
