"""The round's baselines and KL estimators (trainer/baselines.py, trainer/ppo_round.py), by hand: a baseline
never sees its own targets, two samples of a task that earned nothing get zero advantage, the KL logged is
never negative and matches the true KL on a toy where it is known."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import baselines
from trainer.ppo_round import kl_per_token, kl_to_ref

REPO = Path(__file__).resolve().parents[1]


def test_rloo_by_hand():
    """A three-trajectory toy (task x) and a task played once (y). A sibling that ended before step t is left out
    of step t's baseline: counted as a return of 0 (as before), it lowered the baseline of late steps, so a
    trajectory that kept calling got a larger advantage there than one that answered."""
    targets = [[3.0, 2.0, 1.0], [1.0, 0.0], [2.0], [5.0, 4.0]]
    unit_step = [[0, 1, 2], [0, 1], [0], [0, 1]]
    groups = ["x", "x", "x", "y"]
    b = baselines.rloo(targets, unit_step, groups)
    # sample 0: step 0 mean(1, 2) = 1.5; step 1 only sample 1 reached it: 0 (sample 2 left out, the old rule gave
    # mean(0, 0) = 0 too); step 2: no other sample reached it: 0
    assert b[0] == pytest.approx([1.5, 0.0, 0.0])
    # sample 1: step 0 mean(3, 2) = 2.5; step 1 only sample 0 reached it: 2 (the old rule: mean(2, 0) = 1)
    assert b[1] == pytest.approx([2.5, 2.0])
    assert b[2] == pytest.approx([2.0])  # mean(3, 1)
    assert b[3] == [0.0, 0.0]  # played once: no other sample
    # so the long sample's step-1 advantage is G − b = 2 − 0 = 2 and the short one's 0 − 2 = −2: the baseline
    # compares each with a sibling that is still playing, not with one that stopped


def test_rloo_lines_up_token_units_by_step():
    # token level: units are action tokens; step 0 has 2 tokens, step 1 has 1
    targets = [[1.0, 1.0, 0.5], [0.0, 0.0, 0.0]]
    unit_step = [[0, 0, 1], [0, 0, 1]]
    b = baselines.rloo(targets, unit_step, ["t", "t"])
    assert b == [[0.0, 0.0, 0.0], [1.0, 1.0, 0.5]]
    # tokens of one step with different returns-to-go (a per-token KL in the reward): a sibling's step is worth
    # its return at the step's FIRST token, 1.2 here, not its last 1.1
    b = baselines.rloo([[1.2, 1.1, 0.5], [0.0, 0.0]], [[0, 0, 1], [0, 1]], ["t", "t"])
    assert b == [[0.0, 0.0, 0.0], [1.2, 0.5]]


def test_crossfit_never_sees_its_own_targets():
    torch.manual_seed(0)
    feats = [torch.randn(3, 4) for _ in range(8)]
    targets = [[float(x) for x in torch.randn(3)] for _ in range(8)]
    groups = [f"task{i // 2}" for i in range(8)]
    before = baselines.crossfit(feats, targets, groups, folds=4)
    changed = [list(t) for t in targets]
    changed[5] = [100.0, -100.0, 7.0]  # task2 (trajectories 4 and 5) is one fold: neither prediction may move
    after = baselines.crossfit(feats, changed, groups, folds=4)
    assert after[4] == pytest.approx(before[4]) and after[5] == pytest.approx(before[5])
    assert after[0] != pytest.approx(before[0])  # the others were fitted on it
    assert baselines.crossfit(feats[:2], targets[:2], ["one", "one"]) == [[0.0] * 3, [0.0] * 3]


def test_in_sample_fit_interpolates_and_crossfit_shows_it():
    """Many features, few states, returns unrelated to the features: the in-sample fit explains nearly all of
    the variance and the leave-out fit none (this is what `fit_returns` did to the CPU default's round)."""
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(4, 64, generator=g) for _ in range(12)]
    targets = [[float(x) for x in torch.randn(4, generator=g)] for _ in range(12)]
    groups = [f"t{i // 2}" for i in range(12)]
    w, b = baselines.ridge_fit(torch.cat(feats), torch.tensor([x for t in targets for x in t]), ridge=0.01)
    in_sample = [(f.double() @ w + b).tolist() for f in feats]
    assert baselines.explained_variance(targets, in_sample) > 0.95
    assert baselines.explained_variance(targets, baselines.crossfit(feats, targets, groups, ridge=0.01)) < 0.0


def test_explained_variance_by_hand():
    # G = [1, 2, 3, 4] (Var 1.25); b = [1, 2, 2, 5] -> G − b = [0, 0, 1, −1] (Var 0.5) -> 1 − 0.5/1.25 = 0.6
    assert baselines.explained_variance([[1, 2], [3, 4]], [[1, 2], [2, 5]]) == pytest.approx(0.6)
    assert baselines.explained_variance([[1, 2, 3]], [[10, 11, 12]]) == pytest.approx(1.0)  # offsets don't count
    assert math.isnan(baselines.explained_variance([[2, 2]], [[0, 1]]))


# ---- the round with the tiny model ------------------------------------------------------------------------

def _examples():
    from trainer.data import Example

    def ex(name, task, rewards):
        ids, mask, bounds = list(range(10, 13)), [0, 0, 0], []
        for _ in rewards:
            bounds.append((len(ids), len(ids) + 2))
            ids += [40, 41, 12, 13]
            mask += [1, 1, 0, 0]
        return Example(name, ids, mask, bounds, rewards, group=task)

    # task z: both samples earned nothing at any step; tasks p and q: rewards that differ between samples
    return [ex("z1", "z", [0.0, 0.0, 0.0]), ex("z2", "z", [0.0, 0.0]),
            ex("p1", "p", [0.5, 1.0, 1.0]), ex("p2", "p", [1.0, 0.0]),
            ex("q1", "q", [0.2, 0.0]), ex("q2", "q", [0.9, 0.4, 1.0])]


def _cfg(variant: str = "steptool", **kw):
    from trainer.config import StepPPOConfig

    return StepPPOConfig(output_dir=str(REPO / ".pytest_cache" / "baselines"), report_to=[], use_cpu=True,
                         variant=variant, **kw)


def test_samples_that_earned_nothing_get_zero_advantage_under_steptool(tokenizer):
    """The default (rloo baseline, advantages scaled over the round): two samples of one task with zero reward at
    every step get A = 0 exactly, while the round's other steps are not all zero. With the in-sample fitted head
    (the old default) and a mean-shifting whitening, the same pair got nonzero advantages."""
    from tests.support.tiny_model import make_tiny_model
    from trainer.model import PolicyWithValue
    from trainer.ppo_round import prepare_round

    model = PolicyWithValue(make_tiny_model(tokenizer))
    items, stats = prepare_round(model, _examples(), _cfg())
    assert items[0].advantages == [0.0] * 6 and items[1].advantages == [0.0] * 4
    assert any(abs(a) > 0.1 for it in items[2:] for a in it.advantages)
    # sample p2 did worse than p1 from step 0 on: a negative first-step advantage; p1 a positive one
    assert items[3].advantages[0] < 0 < items[2].advantages[0]
    old, _ = prepare_round(model, _examples(), _cfg(baseline="fit_returns"))
    assert any(abs(a) > 1e-3 for it in old[:2] for a in it.advantages)


def test_round_logs_each_baselines_explained_variance(tokenizer):
    from tests.support.tiny_model import make_tiny_model
    from trainer.model import PolicyWithValue
    from trainer.ppo_round import mc_returns, prepare_round

    model = PolicyWithValue(make_tiny_model(tokenizer))
    exs = _examples()
    _, stats = prepare_round(model, exs, _cfg())
    assert {"round_baseline_ev_rloo", "round_baseline_ev_crossfit", "round_baseline_ev_fit_returns"} <= set(stats)
    assert stats["round_tasks"] == 3
    # rloo's by hand, from the returns-to-go (γ = 1)
    targets = mc_returns([e.rewards for e in exs], 1.0)
    expected = baselines.explained_variance(targets, baselines.rloo(
        targets, [list(range(len(t))) for t in targets], [e.group for e in exs]))
    assert stats["round_baseline_ev_rloo"] == pytest.approx(expected)


# ---- KL ---------------------------------------------------------------------------------------------------

def _toy():
    """Three categorical distributions over 5 tokens at one context: π_ref, π_θ, and π_old (a third policy)."""
    ref = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05], dtype=torch.float64)
    theta = torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15], dtype=torch.float64)
    old = torch.tensor([0.3, 0.3, 0.2, 0.1, 0.1], dtype=torch.float64)
    return ref, theta, old


def _sample(p, n, seed):
    return torch.multinomial(p, n, replacement=True, generator=torch.Generator().manual_seed(seed))


def test_kl_to_ref_is_nonnegative_and_unbiased_on_a_toy():
    ref, theta, old = _toy()
    true = float((theta * (theta / ref).log()).sum())  # KL(π_θ‖π_ref) = 0.57 nats
    for sampler in (old, ref):  # a later round (π_old ≠ π_ref), and the first (π_old = π_ref)
        x = _sample(sampler, 200_000, 0)
        k = kl_to_ref(theta.log()[x], ref.log()[x], sampler.log()[x])
        assert bool((k >= 0).all())
        se = float(k.std()) / math.sqrt(len(k))
        assert abs(float(k.mean()) - true) < 4 * se, (float(k.mean()), true)
    # what the report used to show: k1 of π_θ against π_ref averaged over tokens from π_ref is −KL(π_ref‖π_θ)
    x = _sample(ref, 200_000, 1)
    k1 = kl_per_token(theta.log()[x], ref.log()[x], "k1")
    assert float(k1.mean()) == pytest.approx(-float((ref * (ref / theta).log()).sum()), abs=0.02)
    assert float(k1.mean()) < 0


def test_penalty_estimators_are_unbiased_for_kl_old_to_ref():
    ref, _, old = _toy()
    true = float((old * (old / ref).log()).sum())
    x = _sample(old, 200_000, 2)
    for est in ("k1", "k3"):
        k = kl_per_token(old.log()[x], ref.log()[x], est)
        assert float(k.mean()) == pytest.approx(true, abs=4 * float(k.std()) / math.sqrt(len(k)))
    assert bool((kl_per_token(old.log()[x], ref.log()[x], "k3") >= 0).all())


def test_round_table_holds_what_each_step_was_trained_with(tokenizer):
    """Step level: the table's advantage is the one every action token of the step got. Token level
    (ppo_outcome): the mean over the step's tokens, the baseline at its first token."""
    from tests.support.tiny_model import make_tiny_model
    from trainer.model import PolicyWithValue
    from trainer.ppo_round import action_token_steps, prepare_round, round_table

    model = PolicyWithValue(make_tiny_model(tokenizer))
    exs = _examples()
    for variant in ("steptool", "ppo_outcome"):
        items, _ = prepare_round(model, exs, _cfg(variant))
        rows = round_table(exs, items, variant)
        assert len(rows) == sum(len(e.rewards) for e in exs)
        for ex, it in zip(exs, items):
            steps = action_token_steps(ex)
            mine = [r for r in rows if r["traj_id"] == ex.traj_id]
            assert [r["task_id"] for r in mine] == [ex.group] * len(ex.rewards)
            assert [r["reward"] for r in mine] == ex.rewards
            for r in mine:
                toks = [a for a, s in zip(it.advantages, steps) if s == r["step_idx"]]
                assert r["advantage"] == pytest.approx(sum(toks) / len(toks))
                if variant == "steptool":
                    assert toks == [toks[0]] * len(toks)
    # the zero-reward pair of task z: baseline 0 and advantage 0 in the table too
    items, _ = prepare_round(model, exs, _cfg("steptool"))
    assert all(r["advantage"] == 0 and r["baseline"] == 0 for r in round_table(exs, items, "steptool")
               if r["task_id"] == "z")



def test_ridge_fit_has_the_intercept_of_least_squares():
    """With a vanishing ridge the fit is ordinary least squares with an intercept (numpy's lstsq on [x, 1])."""
    import numpy as np

    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64) + 7.0 + 0.1 * torch.randn(40, generator=g,
                                                                                          dtype=torch.float64)
    w, b = baselines.ridge_fit(x, y, ridge=1e-9)
    coef, *_ = np.linalg.lstsq(np.hstack([x.numpy(), np.ones((40, 1))]), y.numpy(), rcond=None)
    assert w.numpy() == pytest.approx(coef[:3], abs=1e-6) and b == pytest.approx(coef[3], abs=1e-6)


def test_kl_to_ref_per_token_by_hand():
    """k = a·(log a − log b) − a + b with a = π_θ/π_old, b = π_ref/π_old at the sampled token. Token 1: π_θ = π_old
    = 0.2, π_ref = 0.4: a = 1, b = 2, k = −log 2 − 1 + 2 = 0.306853 (with b read as 1 it would be −0.693147, a
    negative KL). Token 2: π_θ = 0.4, π_old = 0.2, π_ref = 0.1: a = 2, b = 0.5, k = 2·log 4 − 2 + 0.5 = 1.272589."""
    logp = torch.tensor([0.2, 0.4], dtype=torch.float64).log()
    old = torch.tensor([0.2, 0.2], dtype=torch.float64).log()
    ref = torch.tensor([0.4, 0.1], dtype=torch.float64).log()
    assert kl_to_ref(logp, ref, old).tolist() == pytest.approx([0.306853, 1.272589], abs=1e-6)
    # k1 and k3 of the penalty by hand at d = log 2: k1 = 0.693147, k3 = 1/2 + log 2 − 1 = 0.193147
    d = torch.tensor([math.log(2.0)], dtype=torch.float64)
    assert kl_per_token(d, torch.zeros(1, dtype=torch.float64), "k1").item() == pytest.approx(0.693147, abs=1e-6)
    assert kl_per_token(d, torch.zeros(1, dtype=torch.float64), "k3").item() == pytest.approx(0.193147, abs=1e-6)


def test_rloo_goes_on_past_a_task_played_once():
    """A task with one sample gets b = 0 and the trajectories after it still get their leave-one-out means."""
    out = baselines.rloo([[1.0], [2.0, 0.0], [4.0, 1.0]], [[0], [0, 1], [0, 1]], ["alone", "t", "t"])
    assert out == [[0.0], [4.0, 1.0], [2.0, 0.0]]


def _numpy_ridge(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, float]:
    """Ridge with an unpenalised intercept, solved on centred data by numpy (an independent implementation)."""
    mx, my = x.mean(0), y.mean()
    w = np.linalg.solve((x - mx).T @ (x - mx) + ridge * np.eye(x.shape[1]), (x - mx).T @ (y - my))
    return w, float(my - mx @ w)


def test_crossfit_predicts_each_fold_from_the_others_like_numpy():
    """Two tasks (the smallest K that cross-fits) and three: every trajectory's prediction is the ridge fitted by
    numpy on the other folds' rows (tasks to folds round robin in order of first appearance)."""
    g = torch.Generator().manual_seed(3)
    for groups in (["a", "b", "a", "b"], ["a", "b", "c", "a", "c"]):
        feats = [torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in groups]
        targets = [torch.randn(3, generator=g, dtype=torch.float64).tolist() for _ in groups]
        got = baselines.crossfit(feats, targets, groups, folds=5, ridge=0.5)
        fold = {t: n for n, t in enumerate(dict.fromkeys(groups))}  # K = number of tasks here
        for i, task in enumerate(groups):
            rest = [j for j, t in enumerate(groups) if fold[t] != fold[task]]
            w, b = _numpy_ridge(np.concatenate([feats[j].numpy() for j in rest]),
                                np.array([v for j in rest for v in targets[j]]), 0.5)
            assert got[i] == pytest.approx((feats[i].numpy() @ w + b).tolist(), abs=1e-9)


def test_crossfit_across_two_processes_equals_one():
    """Two processes simulated by threads whose `reduce` sums over both: each holds some trajectories (None for the
    other's), one of them only trajectories of one fold (its training rows for that fold are none) or none at all
    (`hidden` gives the width); each predicts its own trajectories as one process holding all of them does."""
    import threading

    class PairSum:
        def __init__(self):
            self.barrier, self.slots = threading.Barrier(2, timeout=20), [None, None]

        def on(self, rank):
            def reduce(t):
                self.slots[rank] = t
                self.barrier.wait()
                total = self.slots[0] + self.slots[1]
                self.barrier.wait()
                return total
            return reduce

    g = torch.Generator().manual_seed(4)
    groups = ["a", "b", "c", "a", "b", "c"]
    feats = [torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in groups]
    targets = [torch.randn(2, generator=g, dtype=torch.float64).tolist() for _ in groups]
    whole = baselines.crossfit(feats, targets, groups, folds=3, ridge=1.0)
    for mine in ([0, 3], []):  # rank 0: task a only (fold 0), or nothing
        shares = [[f if i in mine else None for i, f in enumerate(feats)],
                  [None if i in mine else f for i, f in enumerate(feats)]]
        pair, out = PairSum(), [None, None]

        def run(rank):
            out[rank] = baselines.crossfit(shares[rank], targets, groups, folds=3, ridge=1.0, reduce=pair.on(rank),
                                           hidden=3)
        threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        for rank in (0, 1):
            for i in range(len(groups)):
                if shares[rank][i] is None:
                    assert out[rank][i] is None
                else:
                    assert out[rank][i] == pytest.approx(whole[i], abs=1e-9)


def test_explained_variance_of_two_units_by_hand():
    """G = (1, 3): Var 1; G − b = (0, 1): Var 0.25; EV = 0.75. One unit or a constant G: NaN."""
    assert baselines.explained_variance([[1.0, 3.0]], [[1.0, 2.0]]) == pytest.approx(0.75)
    assert baselines.explained_variance([[1.0], [3.0]], [[1.0], [2.0]]) == pytest.approx(0.75)
    assert math.isnan(baselines.explained_variance([[1.0]], [[0.0]]))
    assert math.isnan(baselines.explained_variance([[2.0, 2.0]], [[0.0, 1.0]]))


def test_crossfit_defaults_are_the_pipelines_five_folds_and_ridge_one():
    """trainer/ppo_round.py calls crossfit with its defaults: K = 5 folds and ridge 1 (docs/architecture.md),
    visible with 7 tasks (a sixth fold, or another ridge, moves the predictions)."""
    g = torch.Generator().manual_seed(5)
    groups = [f"t{i % 7}" for i in range(14)]
    feats = [torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in groups]
    targets = [torch.randn(2, generator=g, dtype=torch.float64).tolist() for _ in groups]
    assert baselines.crossfit(feats, targets, groups) == baselines.crossfit(feats, targets, groups, folds=5, ridge=1.0)
    assert baselines.crossfit(feats, targets, groups) != baselines.crossfit(feats, targets, groups, folds=6)
    assert baselines.crossfit(feats, targets, groups) != baselines.crossfit(feats, targets, groups, ridge=2.0)
    x, y = torch.cat(feats), torch.tensor([v for t in targets for v in t], dtype=torch.float64)
    assert torch.equal(baselines.ridge_fit(x, y)[0], baselines.ridge_fit(x, y, 1.0)[0])
    assert not torch.equal(baselines.ridge_fit(x, y)[0], baselines.ridge_fit(x, y, 2.0)[0])
