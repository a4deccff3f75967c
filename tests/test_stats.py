"""Uncertainty over tasks: the bootstrap, the sign test and the verdict sentences, against hand-computed
cases (and scipy where it applies)."""
from __future__ import annotations

import pytest

from pipeline.stats import (min_decisive_tasks, paired_difference, pass_rate_ci, seed_scores, sign_test,
                                     verdict)


def _scores(level_scores: dict[str, list[float]], prefix: str = "t") -> dict[str, tuple[str, float]]:
    return {f"{prefix}{lv}-{i}": (lv, s) for lv, ss in level_scores.items() for i, s in enumerate(ss)}


def test_sign_test_by_hand():
    assert sign_test(0, 0) == 1.0
    assert sign_test(5, 0) == pytest.approx(2 / 32)          # 0.0625: five wins are not enough at 5%
    assert sign_test(6, 0) == pytest.approx(2 / 64)          # 0.03125
    assert sign_test(8, 1) == pytest.approx(2 * (1 + 9) / 512)
    assert sign_test(3, 3) == 1.0
    assert min_decisive_tasks() == 6


def test_sign_test_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for w, l in [(7, 2), (10, 3), (4, 9), (12, 12), (1, 0)]:
        assert sign_test(w, l) == pytest.approx(stats.binomtest(w, w + l, 0.5).pvalue)


def test_task_scores_average_samples_and_runs():
    """(sft's rows carry no seed: one checkpoint, seed None)"""
    rows = [{"task_id": "a", "level": "I1", "pass_score": 1.0}, {"task_id": "a", "level": "I1", "pass_score": 0.5},
            {"task_id": "b", "level": "I2", "pass_score": 0.0}]
    assert seed_scores(rows) == {"a": ("I1", {None: 0.75}), "b": ("I2", {None: 0.0})}


def test_pass_rate_ci_point_is_the_mean_of_levels_and_the_interval_holds_it():
    s = _scores({"I1": [1, 1, 0, 0], "I2": [1, 0, 0, 0, 0, 0, 0, 0]})
    ci = pass_rate_ci(s, n_boot=4000)
    assert ci["I1"]["mean"] == 50.0 and ci["I2"]["mean"] == 12.5 and ci["average"]["mean"] == 31.25
    assert ci["I1"]["n"] == 4 and ci["average"]["n"] == 12
    for k in ("I1", "I2", "average"):
        assert ci[k]["lo"] <= ci[k]["mean"] <= ci[k]["hi"]
    assert ci["I1"]["hi"] - ci["I1"]["lo"] > 40  # four tasks tell little
    # a constant level has no spread; more tasks with the same share give a narrower interval
    assert pass_rate_ci(_scores({"I1": [1] * 5}))["I1"] == {"mean": 100.0, "lo": 100.0, "hi": 100.0, "n": 5}
    wide = pass_rate_ci(_scores({"I1": [1, 0] * 5}))["I1"]
    narrow = pass_rate_ci(_scores({"I1": [1, 0] * 50}))["I1"]
    assert narrow["hi"] - narrow["lo"] < (wide["hi"] - wide["lo"]) / 2


def test_paired_difference_counts_per_task_and_keeps_pairs_together():
    ref = _scores({"I1": [0, 0, 1, 1, 0, 0, 0, 0, 0, 0]})
    cand = dict(ref)
    for t in list(cand)[4:]:  # the six tasks the reference failed, the candidate solves
        cand[t] = ("I1", 1.0)
    d = paired_difference(cand, ref, n_boot=4000)
    assert (d["wins"], d["ties"], d["losses"], d["tasks"]) == (6, 4, 0, 10)
    assert d["diff"] == 60.0 and d["p_value"] == pytest.approx(2 / 64)
    assert d["lo"] > 0  # every resample has a non-negative difference, most positive
    assert "better than" in verdict("steptool", "sft", d)


def test_verdicts_follow_the_numbers():
    """Clearly better, clearly equal, too few tasks: the sentence says which."""
    ref = _scores({"I1": [0] * 40, "I2": [0] * 40})
    better = {t: (lv, 1.0 if i % 2 == 0 else 0.0) for i, (t, (lv, _)) in enumerate(sorted(ref.items()))}
    assert verdict("steptool", "sft", paired_difference(better, ref)).startswith("steptool is better than sft:")
    assert verdict("sft", "steptool", paired_difference(ref, better)).startswith("sft is worse than steptool:")
    mixed = {t: (lv, 1.0 if i % 4 == 0 else 0.0) for i, (t, (lv, _)) in enumerate(sorted(ref.items()))}
    mixed_ref = {t: (lv, 1.0 if i % 4 == 1 else 0.0) for i, (t, (lv, _)) in enumerate(sorted(ref.items()))}
    sentence = verdict("a", "b", paired_difference(mixed, mixed_ref))
    assert sentence.startswith("a vs b: no significant difference") and "+0.0 points" in sentence
    few = _scores({"I1": [1, 1, 0]})
    few_ref = _scores({"I1": [0, 0, 0]})
    assert "too few tasks to tell (2 of 3 differ" in verdict("a", "b", paired_difference(few, few_ref))
    assert "no task in common" in verdict("a", "b", paired_difference(few, {}))


def test_power_by_hand():
    from pipeline.stats import tasks_needed

    # z_0.975 + z_0.8 = 1.959964 + 0.841621 = 2.801585; sd 30, Δ 10: (2.801585 · 3)² = 70.64 -> 71
    assert tasks_needed(30.0, 10.0) == 71
    assert tasks_needed(30.0, 5.0) == 283  # four times the tasks for half the difference: 282.6 -> 283
    assert tasks_needed(30.0, -10.0) == 71
    assert tasks_needed(None, 10.0) is None and tasks_needed(0.0, 10.0) is None and tasks_needed(30.0, 0) is None


def test_difference_sd_pools_levels_by_hand():
    # differences I1: +1, 0, −1 (var 1), I2: 0, +1 (var 0.5): pooled (2·1 + 1·0.5) / 3 = 0.8333 -> 91.29 points
    cand = _scores({"I1": [1, 1, 0], "I2": [0, 1]})
    ref = _scores({"I1": [0, 1, 1], "I2": [0, 0]})
    d = paired_difference(cand, ref, n_boot=100)
    assert d["sd"] == pytest.approx(100 * (2.5 / 3) ** 0.5, abs=1e-3)


@pytest.mark.long
def test_power_estimate_holds_in_simulation():
    """Simulated paired comparisons with the number of tasks `tasks_needed` asks for detect the difference
    (a one-sample t-test on the per-task differences) in about 80% of trials."""
    np = pytest.importorskip("numpy")
    stats = pytest.importorskip("scipy.stats")
    from pipeline.stats import tasks_needed

    rng = np.random.default_rng(0)
    # per task: candidate wins with prob 0.25, loses with prob 0.15, else ties -> Δ = 10 points, sd ≈ 62.4
    p_win, p_loss = 0.25, 0.15
    sd = 100 * ((p_win + p_loss) - (p_win - p_loss) ** 2) ** 0.5
    n = tasks_needed(sd, 100 * (p_win - p_loss))
    hits = 0
    for _ in range(2000):
        u = rng.random(n)
        d = (u < p_win).astype(float) - ((u >= p_win) & (u < p_win + p_loss)).astype(float)
        hits += stats.ttest_1samp(d, 0.0).pvalue < 0.05
    assert 0.76 < hits / 2000 < 0.84, (n, hits)


def _seeded(level_scores: dict[str, list[list[float]]], seeds=(0, 1)) -> dict[str, tuple[str, dict]]:
    """Per task, one score per training seed."""
    return {f"t{lv}-{i}": (lv, dict(zip(seeds, ss))) for lv, ss in level_scores.items() for i, ss in enumerate(ss)}


def test_seed_scores_keep_each_seed_apart():
    from pipeline.stats import seed_scores

    rows = [{"task_id": "a", "level": "I1", "seed": 0, "pass_score": 1.0},
            {"task_id": "a", "level": "I1", "seed": 0, "pass_score": 0.0},
            {"task_id": "a", "level": "I1", "seed": 1, "pass_score": 0.5},
            {"task_id": "b", "level": "I2", "pass_score": 1.0}]   # no seed column: sft's one checkpoint
    assert seed_scores(rows) == {"a": ("I1", {0: 0.5, 1: 0.5}), "b": ("I2", {None: 1.0})}


def test_the_bootstrap_resamples_seeds_too():
    """Seed 0 solves every task, seed 1 none: the point is 50, and the interval spans both training runs. Of the
    resampled seed pairs a quarter are (0, 0) -> 100, a quarter (1, 1) -> 0, so the 2.5th and 97.5th
    percentiles are 0 and 100. Over tasks alone (one seed's view) there would be no spread at all."""
    ci = pass_rate_ci(_seeded({"I1": [[1.0, 0.0]] * 8}), n_boot=4000)["I1"]
    assert ci == {"mean": 50.0, "lo": 0.0, "hi": 100.0, "n": 8}
    assert pass_rate_ci(_seeded({"I1": [[1.0, 1.0]] * 8}), n_boot=4000)["I1"] == {"mean": 100.0, "lo": 100.0,
                                                                                 "hi": 100.0, "n": 8}


def test_a_seeded_variant_pairs_each_seed_with_sfts_one_checkpoint():
    cand = _seeded({"I1": [[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]})
    ref = _scores({"I1": [0.5, 0.0, 0.0]})
    d = paired_difference(cand, ref, n_boot=2000)
    # per task, the mean over seeds of (seed score - sft): 0, +1, 0 -> +33.3 points; one win, two ties
    assert d["diff"] == pytest.approx(100 / 3, abs=1e-3)
    assert (d["wins"], d["ties"], d["losses"]) == (1, 2, 0)
    assert d["seeds"] == 2


def test_two_seeded_variants_are_paired_seed_by_seed():
    """steptool and ppo_outcome of one seed trained on the same collection: their difference is taken per seed."""
    a = _seeded({"I1": [[1.0, 0.0], [0.0, 1.0]]})
    b = _seeded({"I1": [[1.0, 0.0], [0.0, 1.0]]})
    d = paired_difference(a, b, n_boot=500)
    assert d["diff"] == 0 and d["lo"] == 0 and d["hi"] == 0 and d["sd_within"] == 0


def test_variance_components_by_hand():
    """Differences per (task, seed) [[0, 1], [1, 1], [0, 0], [1, 1]]: the within-task variances over the two
    seeds are 0.5, 0, 0, 0 (mean 0.125, sd 35.36 points); the task means 0.5, 1, 0, 1 have variance
    0.6875 / 3 = 0.22917, less 0.125 / 2 -> 0.16667 between (sd 40.82 points)."""
    import numpy as np

    from pipeline.stats import variance_components

    between, within = variance_components({"I1": np.array([[0, 1], [1, 1], [0, 0], [1, 1]], dtype=float)})
    assert within == pytest.approx(100 * 0.125 ** 0.5)
    assert between == pytest.approx(100 * (0.6875 / 3 - 0.0625) ** 0.5)


def test_tasks_played_by_different_seeds_are_an_error():
    with pytest.raises(ValueError, match="different seeds"):
        pass_rate_ci({"a": ("I1", {0: 1.0, 1: 0.0}), "b": ("I1", {0: 1.0})})


def test_mean_ci_over_seeds_by_hand():
    from pipeline.stats import mean_ci

    # [1, 2, 3]: mean 2, s = 1, t_{0.975, 2} = 4.303: 2 ± 4.303/√3 = 2 ± 2.4843
    c = mean_ci([1.0, 2.0, 3.0])
    assert (c["mean"], c["n"]) == (2.0, 3) and c["lo"] == pytest.approx(-0.4843, abs=1e-4)
    assert c["hi"] == pytest.approx(4.4843, abs=1e-4)
    assert mean_ci([0.5]) == {"mean": 0.5, "lo": None, "hi": None, "n": 1, "sd": None}  # one seed: no spread measured
    assert mean_ci([]) == {"mean": None, "lo": None, "hi": None, "n": 0, "sd": None}
    # a shift every seed agrees on excludes 0: [-0.2, -0.25, -0.3] -> -0.25 ± 4.303·0.05/√3 = ±0.1242
    c = mean_ci([-0.2, -0.25, -0.3])
    assert c["hi"] == pytest.approx(-0.25 + 0.12421, abs=1e-4) and c["hi"] < 0
    assert c["sd"] == pytest.approx(0.05) and mean_ci([1.0, 2.0, 3.0])["sd"] == 1.0


def test_seeds_to_tell_by_hand():
    """The fewest seeds whose t-interval would exclude 0 at the measured mean and sd: t_{0.975, n−1}·sd/√n < |mean|.
    mean 37.5, sd 17.678: n = 2 gives 12.706·17.678/√2 = 158.8, n = 3 4.303·17.678/√3 = 43.9, n = 4
    3.182·17.678/2 = 28.1 < 37.5: 4. mean 1, sd 1: n = 7 gives 2.447/√7 = 0.925 < 1 (n = 6: 2.571/√6 = 1.050): 7.
    Past the t table: mean 0.35, sd 1: n = 33 gives 1.959964/√33 = 0.3412 < 0.35, n = 32 (df 31, past the table)
    1.959964/√32 = 0.3465 < 0.35 too, n = 31 (df 30, t 2.042) 2.042/√31 = 0.3668: 32. A mean of 0, or one needing more
    seeds than allowed: None; sd 0: 2. The sign of the mean does not matter."""
    from pipeline.stats import seeds_to_tell, t975

    assert seeds_to_tell(37.5, 17.678) == 4 and seeds_to_tell(-37.5, 17.678) == 4
    assert seeds_to_tell(1.0, 1.0) == 7 and seeds_to_tell(0.35, 1.0) == 32
    assert seeds_to_tell(0.0, 1.0) is None and seeds_to_tell(0.01, 1.0, most=50) is None
    assert seeds_to_tell(0.5, 0.0) == 2
    # at exactly the half-width the interval touches 0 and does not exclude it: mean 3.182, sd 2 gives at n = 4
    # 3.182·2/√4 = 3.182 (exact in floats), so 5 (2.776·2/√5 = 2.483), not 4
    assert seeds_to_tell(3.182, 2.0) == 5
    # `most` is the last number of seeds tried: 7 with most 7, None with most 6
    assert seeds_to_tell(1.0, 1.0, most=7) == 7 and seeds_to_tell(1.0, 1.0, most=6) is None
    assert (t975(1), t975(30), t975(31)) == (12.706, 2.042, pytest.approx(1.959964, abs=1e-6))


def test_the_verdict_needs_both_the_interval_and_the_sign_test():
    """'better' only when the CI excludes 0 AND p < 0.05: either alone is 'no significant difference' (the default
    run's steptool vs sft was the first case: +11.1 [+2.8, +20.8], p = 0.065)."""
    base = {"tasks": 36, "wins": 9, "ties": 25, "losses": 2, "diff": 11.1}
    assert "no significant difference" in verdict("a", "b", {**base, "lo": 2.8, "hi": 20.8, "p_value": 0.0654})
    assert "no significant difference" in verdict("a", "b", {**base, "lo": -0.5, "hi": 20.8, "p_value": 0.01})
    assert verdict("a", "b", {**base, "lo": 2.8, "hi": 20.8, "p_value": 0.049}).startswith("a is better than b")
    assert verdict("a", "b", {**base, "diff": -11.1, "lo": -20.8, "hi": -2.8, "p_value": 0.049}).startswith(
        "a is worse than b")


def test_the_interval_is_the_95_percent_percentile_bootstrap():
    """20 of 40 tasks solved: a resample's mean is Binomial(40, 0.5)/40, whose 2.5% and 97.5% quantiles are 14
    and 26 (P(X ≤ 13) = 0.019, P(X ≤ 14) = 0.040; symmetric), so the 95% interval is exactly [35, 65]; a 90%
    interval would be [37.5, 62.5] (the 5% quantile is 15: P(X ≤ 14) = 0.040 < 0.05 ≤ P(X ≤ 15) = 0.077).
    scipy's percentile bootstrap gives the same interval."""
    import numpy as np
    from scipy import stats as sps

    ci = pass_rate_ci(_scores({"I1": [1, 0] * 20}), n_boot=10000)["I1"]
    assert (ci["lo"], ci["mean"], ci["hi"]) == (35.0, 50.0, 65.0)
    ref = sps.bootstrap((100.0 * np.array([1, 0] * 20),), np.mean, n_resamples=10000, method="percentile",
                        confidence_level=0.95, rng=np.random.default_rng(1)).confidence_interval
    assert (ref.low, ref.high) == (35.0, 65.0)


def test_mean_ci_at_the_ends_of_the_t_table():
    """Half-widths by hand, t·s/√n: 30 values 0/1 (df 29, t 2.045, s = √(7.5/29) = 0.508548): 0.189873; 31 values
    (one more 0.5; df 30, the table's last entry t 2.042, s = 0.5): 0.183377; past the table the normal's 1.959964:
    32 values (s = √(8/31) = 0.508001) 0.176010, 40 values (s = √(10/39) = 0.506370) 0.156923. A missing or NaN value is left out: [1, NaN, 3, None] is n = 2
    with t 12.706 and s = √2: 2 ± 12.706."""
    from pipeline.stats import mean_ci

    for values, half in (([0.0, 1.0] * 15, 0.189873), ([0.0, 1.0] * 15 + [0.5], 0.183377),
                         ([0.0, 1.0] * 16, 0.176010), ([0.0, 1.0] * 20, 0.156923)):
        c = mean_ci(values)
        assert (c["mean"], c["n"]) == (0.5, len(values))
        assert c["hi"] - 0.5 == pytest.approx(half, abs=1e-6) and 0.5 - c["lo"] == pytest.approx(half, abs=1e-6)
    c = mean_ci([1.0, float("nan"), 3.0, None])
    assert (c["mean"], c["n"]) == (2.0, 2) and c["lo"] == pytest.approx(-10.706) and c["hi"] == pytest.approx(14.706)


def test_variance_components_pool_levels_of_two_and_one_task():
    """Per level (tasks x 2 seeds), seeds agreeing within each task (within 0): [[0, 0], [1, 1]] has task means
    0, 1, variance 0.5 on 1 dof; [[0, 0], [0, 0], [1, 1]] has means 0, 0, 1, variance 1/3 on 2 dof; pooled
    (0.5 + 2/3) / 3 = 0.388889, sd 62.36 points. A level of one task has no between-task variance: [[0, 1]]
    alone gives between 0 and within 0.5 (sd 70.71 points)."""
    import numpy as np

    from pipeline.stats import variance_components

    two = np.array([[0, 0], [1, 1]], dtype=float)
    assert variance_components({"I1": two}) == pytest.approx((100 * 0.5 ** 0.5, 0.0))
    three = np.array([[0, 0], [0, 0], [1, 1]], dtype=float)
    assert variance_components({"I1": two, "I2": three}) == pytest.approx((100 * (7 / 18) ** 0.5, 0.0))
    assert variance_components({"I1": np.array([[0, 1]], dtype=float)}) == pytest.approx((0.0, 100 * 0.5 ** 0.5))


def test_tasks_needed_is_at_least_two():
    from pipeline.stats import tasks_needed

    # ((1.959964 + 0.841621) · 5 / 50)² = 0.0785: one task by the formula, but a paired comparison needs two
    assert tasks_needed(5.0, 50.0) == 2
    assert tasks_needed(0.0, 5.0) is None and tasks_needed(20.0, 0.0) is None


def test_the_verdict_sentence_by_hand():
    """Every number of the sentence, singular and plural: 1 win / 3 ties / 2 losses; and the bootstrap is
    reproducible (a fixed seed: the same report twice)."""
    d = {"tasks": 6, "wins": 1, "ties": 3, "losses": 2, "diff": -4.25, "lo": -12.5, "hi": 3.0, "p_value": 1.0}
    assert verdict("a", "b", d) == ("a vs b: too few tasks to tell (3 of 6 differ; the sign test needs at least 6): "
                                    "-4.2 points (95% CI [-12.5, +3.0]), 1 win / 3 ties / 2 losses over 6 tasks, "
                                    "sign test p = 1.")
    d = {"tasks": 9, "wins": 7, "ties": 1, "losses": 1, "diff": 33.3, "lo": 11.1, "hi": 55.6, "p_value": 0.0703}
    assert verdict("a", "b", d).endswith("7 wins / 1 tie / 1 loss over 9 tasks, sign test p = 0.0703.")
    s = _scores({"I1": [1, 0, 0, 1, 1], "I2": [0, 0, 1]})
    assert pass_rate_ci(s) == pass_rate_ci(s)


def test_a_cell_is_the_2_5th_and_97_5th_percentile_rounded_to_3_decimals():
    """1001 resamples 0/7, 1/7, ..., 1000/7: numpy's linear percentile puts the 2.5th at index 25 (25/7 = 3.5714...)
    and the 97.5th at index 975 (975/7 = 139.2857...); the point 1/3. Each rounded to three decimals."""
    import numpy as np

    from pipeline.stats import _cell

    assert _cell(1 / 3, np.arange(1001) / 7, 12) == {"mean": 0.333, "lo": 3.571, "hi": 139.286, "n": 12}


def test_no_task_and_mixed_seed_sets():
    """No task: no interval at all. Tasks played by the one sft checkpoint (seed None) beside tasks played by two
    seeds are refused with both sets named (None and integers do not sort together: listed by their text)."""
    assert pass_rate_ci({}) == {}
    with pytest.raises(ValueError, match=r"different seeds: \[\[0, 1\], \[None\]\]"):
        pass_rate_ci({"a": ("I1", {0: 1.0, 1: 0.0}), "b": ("I1", 1.0)})


def test_the_bootstrap_is_reproducible_and_averages_levels_per_resample():
    """With continuous task scores (so percentiles fall between many distinct resample means) the same input gives the
    same interval twice: the seed is fixed. The average's resamples are the mean of the levels' resamples, so its
    spread is theirs combined: I1 40 tasks and I2 20 tasks, both half solved, have per-level standard errors
    √(0.25/40) and √(0.25/20); the average's is √(0.25/40 + 0.25/20) / 2 = 6.847 points, a 95% width of about
    2 · 1.96 · 6.847 = 26.8 (averaging the levels' two mean values instead would give a width of 0)."""
    s = {f"t{i}": ("I1" if i < 30 else "I2", ((i * 37) % 101) / 100) for i in range(50)}
    first = pass_rate_ci(s)
    assert first == pass_rate_ci(s)
    assert first["I1"]["lo"] != first["I1"]["hi"]
    ref = {f"r{i}": ("I1" if i < 30 else "I2", 0.3) for i in range(50)}
    cand = {f"r{i}": (lv, v) for i, (lv, v) in enumerate(s.values())}
    assert paired_difference(cand, ref) == paired_difference(cand, ref)
    half = _scores({"I1": [1, 0] * 20, "I2": [1, 0] * 10})
    avg = pass_rate_ci(half)["average"]
    assert avg["mean"] == 50.0
    assert 0.9 * 26.8 < avg["hi"] - avg["lo"] < 1.1 * 26.8


def test_paired_difference_fields_by_hand():
    """Ties are the tasks neither won nor lost (wins 2, losses 1 of 4: 1 tie); the p-value rounded to 4 significant
    figures (8 wins, 1 loss: 20/512 = 0.0390625 -> 0.03906; 30 wins, 0 losses: 2/2^30 = 1.8626e-09 -> 1.863e-09,
    which 6 decimals made 0); no task in common: no difference; one task: no spread (sd None)."""
    cand = _scores({"I1": [1, 1, 0, 1]})
    ref = _scores({"I1": [0, 0, 1, 1]})
    d = paired_difference(cand, ref, n_boot=200)
    assert (d["wins"], d["ties"], d["losses"], d["tasks"]) == (2, 1, 1, 4)
    d = paired_difference(_scores({"I1": [1] * 8 + [0]}), _scores({"I1": [0] * 8 + [1]}), n_boot=200)
    assert d["p_value"] == 0.03906
    d = paired_difference(_scores({"I1": [1] * 30}), _scores({"I1": [0] * 30}), n_boot=200)
    assert d["p_value"] == 1.863e-09
    assert paired_difference(_scores({"I1": [1]}), _scores({"I2": [1]}, prefix="u")) == {
        "tasks": 0, "wins": 0, "ties": 0, "losses": 0, "p_value": 1.0, "diff": None, "lo": None, "hi": None}
    one = paired_difference(_scores({"I1": [1]}), _scores({"I1": [0]}), n_boot=200)
    assert one["sd"] is None and one["diff"] == 100.0


def test_seeded_differences_split_into_tasks_and_seeds_by_hand():
    """Two seeds against sft's one checkpoint (0 on every task): differences per (task, seed) [1, 0.5], [0, 0],
    [0.5, 0]. Within a task over seeds: variances 1/8, 0, 1/8, mean 1/12 -> sd_within 100·√(1/12) = 28.868. Task
    means 3/4, 0, 1/4 (mean 1/3): variance 7/48 -> sd 100·√(7/48) = 38.188; between 7/48 − (1/12)/2 = 5/48 ->
    sd_between 100·√(5/48) = 32.275. The difference 100/3 = 33.333 points. Each to three decimals."""
    cand = _seeded({"I1": [[1.0, 0.5], [0.0, 0.0], [0.5, 0.0]]})
    ref = _scores({"I1": [0, 0, 0]})
    d = paired_difference(cand, ref, n_boot=200)
    assert (d["diff"], d["sd"], d["seeds"], d["sd_between"], d["sd_within"]) == (33.333, 38.188, 2, 32.275, 28.868)


def test_models_with_different_seeds_are_compared_on_their_means():
    """A candidate of seeds 0 and 1 against a reference of seeds 5 and 6 (not sft's one checkpoint, not the same
    seeds): each task's difference is the candidate's mean over its seeds less the reference's. Task a: (1 + 0.5)/2 −
    (0.25 + 0.25)/2 = 0.5; task b: 0 − (1 + 0)/2 = −0.5; task c: 1 − 0 = 1. Mean +33.333 points, 2 wins, 1 loss."""
    cand = _seeded({"I1": [[1.0, 0.5], [0.0, 0.0], [1.0, 1.0]]})
    ref = _seeded({"I1": [[0.25, 0.25], [1.0, 0.0], [0.0, 0.0]]}, seeds=(5, 6))
    d = paired_difference(cand, ref, n_boot=200)
    assert (d["diff"], d["wins"], d["losses"]) == (33.333, 2, 1)
    assert "seeds" not in d   # one averaged difference per task: no seed axis left


def test_difference_sd_with_one_degree_of_freedom_and_none():
    """Two tasks in one level (differences 1 and 0: variance 0.5 on one dof) -> 70.711 points; one task per level
    -> None."""
    import numpy as np

    from pipeline.stats import difference_sd

    assert difference_sd({"I1": np.array([1.0, 0.0])}) == pytest.approx(100 * 0.5 ** 0.5)
    assert difference_sd({"I1": np.array([1.0]), "I2": np.array([0.0])}) is None


def test_min_decisive_tasks_is_strict_at_alpha():
    """Significant means p < alpha, as in the verdict: all of 6 won has p = 2/64 = 0.03125, so at alpha 0.03125
    exactly six are not enough and it takes 7 (p = 2/128); at 0.05 it is 6, at 0.0312 also 7."""
    assert min_decisive_tasks(0.05) == 6
    assert min_decisive_tasks(2 / 64) == 7
    assert min_decisive_tasks(0.0312) == 7


def test_the_verdict_at_each_side_of_both_thresholds():
    """p exactly 0.05 is not significant; a CI whose bound is exactly 0 does not exclude 0; a bound of +0.5 or −0.5
    does; a difference of +0.5 is 'better'."""
    base = {"tasks": 40, "wins": 12, "ties": 26, "losses": 2}
    better = {**base, "diff": 0.8, "lo": 0.5, "hi": 1.2, "p_value": 0.01}
    assert verdict("a", "b", better).startswith("a is better than b")
    assert verdict("a", "b", {**better, "diff": 0.5}).startswith("a is better than b")
    assert "no significant difference" in verdict("a", "b", {**better, "p_value": 0.05})
    assert verdict("a", "b", {**better, "p_value": 0.0499}).startswith("a is better than b")
    assert "no significant difference" in verdict("a", "b", {**better, "lo": 0.0})
    worse = {**base, "diff": -0.8, "lo": -1.2, "hi": -0.5, "p_value": 0.01}
    assert verdict("a", "b", worse).startswith("a is worse than b")
    assert "no significant difference" in verdict("a", "b", {**worse, "hi": 0.0})
