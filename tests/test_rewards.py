"""Step rewards and returns (pipeline/rewards.py), with hand-computed values for every shaping."""
from __future__ import annotations

import ast
import csv

import numpy as np
import polars as pl
import pytest

from pipeline.annotate.importer import import_reference_annotations
from pipeline.config import RewardsConfig
from pipeline.rewards import discounted_returns, returns_to_go, reward_table, step_rewards


def table(rows):
    return pl.DataFrame(rows, schema={"traj_id": pl.String, "step_idx": pl.Int32, "succ_calling": pl.Float64,
                                      "contribution": pl.Float64, "is_solved_score": pl.Float64}, orient="row")


T = table([
    ("a", 0, 1.0, 5.0, None),   # (1 + 1) / 2 = 1
    ("a", 1, 0.0, 2.0, None),   # (0 + 0.4) / 2 = 0.2
    ("a", 2, None, None, 0.5),  # Finish, Unsure: 0.5
    ("b", 0, 2 / 3, 13 / 3, None),  # votes (1,5) (1,5) (0,3): mean of 1, 1, 0.3 = 0.7667
    ("b", 1, None, None, 0.0),
])


PAPER = RewardsConfig(shaping="paper", call_cost=0.0)


def test_step_rewards_by_hand():
    r = step_rewards(T, spec=PAPER)
    assert r["reward"].round(4).to_list() == [1.0, 0.2, 0.5, 0.7667, 0.0]
    assert r["is_last"].to_list() == [False, False, True, False, True]
    r2 = step_rewards(T, spec=RewardsConfig(shaping="paper", alpha=2.0, call_cost=0.0))  # (2·SC + Con/5) / 3
    assert r2["reward"].round(4).to_list() == [1.0, 0.1333, 0.5, round((2 * 2 / 3 + 13 / 15) / 3, 4), 0.0]
    assert step_rewards(T, variant="no_step_reward")["reward"].to_list() == [0.0, 0.0, 0.5, 0.0, 0.0]
    assert step_rewards(T, variant="ppo_outcome")["reward"].to_list() == [0.0, 0.0, 0.5, 0.0, 0.0]
    w = step_rewards(T, spec=RewardsConfig(shaping="paper", normalize="whiten", call_cost=0.0))["reward"]
    assert abs(w.mean()) < 1e-12 and abs(w.std() - 1) < 1e-12
    # outcome-only: the final rewards 0.5 and 0.0 are whitened (±0.7071 with the sample std 0.3536); the
    # intermediate steps stay 0 rather than becoming a length penalty of −mean/std each
    w = step_rewards(T, "no_step_reward", RewardsConfig(shaping="paper", normalize="whiten", call_cost=0.0))["reward"].round(4).to_list()
    assert w == [0.0, 0.0, 0.7071, 0.0, -0.7071]
    with pytest.raises(ValueError, match="unknown variant"):
        step_rewards(T, variant="nope")


def test_a_missing_outcome_earns_nothing():
    """A last step without IsSolved (a trajectory the judge gave no status) earns 0, not Unsure's 0.5."""
    missing = T.with_columns(pl.when(pl.col("traj_id") == "a").then(None).otherwise(pl.col("is_solved_score"))
                             .alias("is_solved_score"))
    for shaping in ("paper", "min_form"):
        r = step_rewards(missing, spec=RewardsConfig(shaping=shaping, call_cost=0.0))
        assert r.filter(pl.col("traj_id") == "a")["reward"][-1] == 0.0


def test_returns_by_hand():
    r = step_rewards(T, spec=PAPER)
    g = returns_to_go(r, 0.9)["return"].round(6).to_list()
    # a: G2 = 0.5, G1 = 0.2 + 0.9·0.5 = 0.65, G0 = 1 + 0.9·0.65 = 1.585; b: G1 = 0, G0 = 0.766667
    assert g == [1.585, 0.65, 0.5, round(0.7666667, 6), 0.0]
    assert returns_to_go(r, 1.0)["return"].round(4).to_list() == [1.7, 0.7, 0.5, 0.7667, 0.0]
    assert returns_to_go(r, 0.0)["return"].to_list() == r["reward"].to_list()


def test_returns_of_long_trajectories_do_not_underflow():
    n = 2000
    long = pl.DataFrame({"traj_id": ["x"] * n, "step_idx": list(range(n)), "reward": [1.0] * n, "is_last": [False] * n})
    g = returns_to_go(long, 0.5)["return"].to_list()
    assert g[-1] == 1.0 and abs(g[0] - 2.0) < 1e-9 and all(x == x for x in g)


def test_reward_table():
    a = reward_table(T, RewardsConfig(shaping="paper", gamma=1.0, call_cost=0.0))
    assert a.columns == ["traj_id", "step_idx", "reward", "return", "variant"]
    assert a["return"].round(4).to_list() == [1.7, 0.7, 0.5, 0.7667, 0.0]
    nso = reward_table(T, RewardsConfig(shaping="paper", gamma=1.0, call_cost=0.0), "no_step_opt")  # no credit across steps
    assert nso["return"].round(4).to_list() == [1.0, 0.2, 0.5, 0.7667, 0.0]
    assert set(a["variant"]) == {"steptool"} and set(nso["variant"]) == {"no_step_opt"}


@pytest.mark.parametrize("order", [[3, 4, 0, 1, 2], [1, 0, 2, 3, 4], [0, 1, 3, 2, 4], [2, 1, 0, 4, 3]])
def test_steps_in_any_row_order_give_the_same_rewards(order):
    """The annotate stage writes steps in order and the sort is skipped then; any other order (trajectories
    swapped, a step before its predecessor, one two rows back) is sorted first: the same rewards, in
    (trajectory, step) order."""
    spec = RewardsConfig(shaping="min_form", call_cost=0.1)
    assert step_rewards(T[order], spec=spec).equals(step_rewards(T, spec=spec))


def test_a_step_out_of_order_is_found_by_its_predecessor_alone():
    """One trajectory's steps 0, 2, 1: only the last row, compared with the row just before it, shows the disorder
    (against the row two back, 0, it would look in order); sorted first, the rewards are those of 0, 1, 2."""
    spec = RewardsConfig(shaping="min_form", call_cost=0.1)
    assert step_rewards(T[[0, 2, 1]], spec=spec).equals(step_rewards(T[[0, 1, 2]], spec=spec))


def test_a_bad_reward_spec_and_a_missing_progress_are_named():
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^rewards\.gamma "):
        step_rewards(T, spec=RewardsConfig(shaping="paper", gamma=1.5))
    with pytest.raises(ValueError, match=r"rewards.shaping progress needs each step's progress .*: use shaping "
                                         r"paper or min_form$"):
        step_rewards(T, spec=RewardsConfig(shaping="progress"))


def test_whitening_edge_cases_by_hand():
    """Rewards whose mean is exactly 0 are divided by their std only ([1, -1] -> ±0.7071); a single scored reward
    (one trajectory, outcome only) has no spread and whitens to 0."""
    two = table([("a", 0, None, None, 1.0), ("b", 0, None, None, 0.0)])
    spec = RewardsConfig(shaping="paper", normalize="whiten", call_cost=0.0, failed_call_cost=0.0)
    shifted = two.with_columns((pl.col("is_solved_score") * 2 - 1).alias("is_solved_score"))  # 1 and -1
    assert step_rewards(shifted, spec=spec)["reward"].round(4).to_list() == [0.7071, -0.7071]
    one = table([("a", 0, 1.0, 5.0, None), ("a", 1, None, None, 1.0)])
    assert step_rewards(one, "no_step_reward", spec)["reward"].to_list() == [0.0, 0.0]


# Three trajectories of one 2-fact task, oracle-style labels (SC, Con, progress after the step):
#   d: two calls that each bring a fact, then a correct answer                  (the direct solve)
#   r: the same, one repeat of the last call (SC 1, Con 0: nothing new), answer (padded)
#   n: the two calls, then repeats until the budget: no Finish                   (never answers)
S = pl.DataFrame(
    [("d", 0, 1.0, 5.0, 0.5, None), ("d", 1, 1.0, 5.0, 1.0, None), ("d", 2, None, None, 1.0, 1.0),
     ("r", 0, 1.0, 5.0, 0.5, None), ("r", 1, 1.0, 5.0, 1.0, None), ("r", 2, 1.0, 0.0, 1.0, None),
     ("r", 3, None, None, 1.0, 1.0),
     ("n", 0, 1.0, 5.0, 0.5, None), ("n", 1, 1.0, 5.0, 1.0, None), ("n", 2, 1.0, 0.0, 1.0, None),
     ("n", 3, 1.0, 0.0, 1.0, 0.0)],
    schema={"traj_id": pl.String, "step_idx": pl.Int32, "succ_calling": pl.Float64, "contribution": pl.Float64,
            "progress": pl.Float64, "is_solved_score": pl.Float64}, orient="row")


def _g0(spec, variant="steptool"):
    t = reward_table(S, spec, variant)
    return {tid: round(t.filter((pl.col("traj_id") == tid) & (pl.col("step_idx") == 0))["return"][0], 6)
            for tid in ("d", "r", "n")}, {tid: [round(x, 6) for x in t.filter(pl.col("traj_id") == tid)["reward"]]
                                          for tid in ("d", "r", "n")}


def test_paper_shaping_pays_for_padding_by_hand():
    """The paper's reward at α = 1, γ = 1: a repeat with Con 0 still earns SC/2 = 0.5, so the padded trajectory
    earns 1 + 1 + 0.5 + 1 = 3.5 against the direct solve's 3 (the audit's finding)."""
    g0, r = _g0(RewardsConfig(shaping="paper", call_cost=0.0))
    assert r["d"] == [1.0, 1.0, 1.0] and r["r"] == [1.0, 1.0, 0.5, 1.0] and r["n"] == [1.0, 1.0, 0.5, 0.0]
    assert g0 == {"d": 3.0, "r": 3.5, "n": 2.5}
    # α = 0 pays Contribution alone: the repeat earns 0, padding ties
    assert _g0(RewardsConfig(shaping="paper", alpha=0.0, call_cost=0.0))[0] == {"d": 3.0, "r": 3.0, "n": 2.0}
    # step_scale 0.5 and call_cost 0.3 (every call, the cut one too): d = [0.2, 0.2, 1] -> 1.4;
    # r = [0.2, 0.2, 0.25 − 0.3, 1] -> 1.35; n = [0.2, 0.2, −0.05, 0 − 0.3] -> 0.05
    g0, r = _g0(RewardsConfig(shaping="paper", step_scale=0.5, call_cost=0.3))
    assert g0 == {"d": 1.4, "r": 1.35, "n": 0.05}
    assert r["n"] == [0.2, 0.2, -0.05, -0.3]


def test_min_form_by_hand():
    """q = process rewards (α·SC + Con/5)/(α + 1) on calls and IsSolved on the last step; m_t = min_{k≥t} q_k;
    s_t = m_t − m_{t+1}: at γ = 1, G_t = step_scale·m_t + IsSolved."""
    g0, r = _g0(RewardsConfig(shaping="min_form", call_cost=0.0))
    # d: q = [1, 1, 1], m = [1, 1, 1], s = [0, 0, 1]; r_T = 1 + 1 = 2        -> G_0 = 1 + 1 = 2
    assert r["d"] == [0.0, 0.0, 2.0]
    # r: q = [1, 1, 0.5, 1], m = [0.5, 0.5, 0.5, 1], s = [0, 0, −0.5, 1]; r_T = 1 + 1 -> G_0 = 0.5 + 1 = 1.5
    assert r["r"] == [0.0, 0.0, -0.5, 2.0]
    # n: q = [1, 1, 0.5, 0] (cut: IsSolved 0), m = [0, 0, 0, 0]                 -> G_0 = 0
    assert r["n"] == [0.0, 0.0, 0.0, 0.0]
    assert g0 == {"d": 2.0, "r": 1.5, "n": 0.0}
    # right after the plan (step 2): Finish's return 2 against the repeat's −0.5 + 2 = 1.5
    # with a call cost 0.1 per call: d 2 − 0.2, r 1.5 − 0.3
    assert _g0(RewardsConfig(shaping="min_form", call_cost=0.1))[0] == {"d": 1.8, "r": 1.2, "n": -0.4}


def test_progress_shaping_by_hand():
    """Φ_t = progress before step t (Φ_0 = 0), potential 0 at the end: r_t = γ·Φ_{t+1} − Φ_t (+ IsSolved on the last),
    minus a failed call's cost. At γ = 1 the shaping telescopes: G_0 = IsSolved − costs."""
    g0, r = _g0(RewardsConfig(shaping="progress", call_cost=0.0))
    # d: Φ = [0, 0.5, 1]: r = [0.5, 0.5, 1 − 1 = 0]...: r_T = −Φ_T + IsSolved = −1 + 1 = 0
    assert r["d"] == [0.5, 0.5, 0.0]
    assert r["r"] == [0.5, 0.5, 0.0, 0.0]
    assert r["n"] == [0.5, 0.5, 0.0, -1.0]  # cut: −Φ_T = −1, no answer
    assert g0 == {"d": 1.0, "r": 1.0, "n": 0.0}
    # γ = 0.5: d: r_0 = 0.5·0.5 − 0 = 0.25, r_1 = 0.5·1 − 0.5 = 0, r_2 = −1 + 1 = 0 -> G_0 = 0.25
    g0, r = _g0(RewardsConfig(shaping="progress", gamma=0.5, call_cost=0.0))
    assert r["d"] == [0.25, 0.0, 0.0] and g0["d"] == 0.25
    with pytest.raises(ValueError, match="progress"):
        step_rewards(T, spec=RewardsConfig(shaping="progress", call_cost=0.0))  # no progress column: only the oracle gives it


def test_a_variant_without_credit_across_steps_gets_each_shaping_s_immediate_form_by_hand():
    """no_step_opt trains on G_t = r_t. Potential-based shaping is policy-invariant only when returns discount by the
    shaping's γ, so at γ = 0 `progress`'s pay-back r_T = IsSolved − Φ_T made a correct answer after every fact earn
    1 − 1 = 0 against a fact's +0.5 (the study's no_step_opt learned to call until the cut). Its myopic form is the
    step's own gain Φ_{t+1} − Φ_t, 0 on a Finish, and the answer earns IsSolved; `min_form`'s is the process reward p_t."""
    spec = RewardsConfig(shaping="progress", call_cost=0.05)
    g0, r = _g0(spec, "no_step_opt")
    # d: gains 0.5, 0.5 minus the call cost; Finish: gain 0 + IsSolved 1
    assert r["d"] == [0.45, 0.45, 1.0]
    # r: the repeat gains nothing and pays the call cost; the answer after it still earns 1
    assert r["r"] == [0.45, 0.45, -0.05, 1.0]
    # n: cut on a repeat: −0.05 and no IsSolved (before: −Φ_T − 0.05 = −1.05)
    assert r["n"] == [0.45, 0.45, -0.05, -0.05]
    assert g0 == {"d": 0.45, "r": 0.45, "n": 0.45}  # γ = 0: G_0 = r_0
    # right after the plan (step 2) a correct Finish now earns 1 against a repeat's −0.05 (before: 0 against −0.05),
    # and more than any fact-bringing call (0.45)
    assert r["d"][2] > max(r["d"][:2]) and r["d"][2] > r["r"][2]
    # the same spec under steptool keeps the telescoping form: d = [0.45, 0.45, 1 − 1], G_0 = 1 − 0.1
    g0s, rs = _g0(spec, "steptool")
    assert rs["d"] == [0.45, 0.45, 0.0] and g0s["d"] == 0.9
    # min_form at γ = 0: the process reward p = (1·SC + Con/5)/2 on calls, IsSolved on the last step
    g0, r = _g0(RewardsConfig(shaping="min_form", call_cost=0.0), "no_step_opt")
    assert r == _g0(RewardsConfig(shaping="paper", call_cost=0.0), "no_step_opt")[1]
    assert r["d"] == [1.0, 1.0, 1.0] and r["r"] == [1.0, 1.0, 0.5, 1.0] and r["n"] == [1.0, 1.0, 0.5, 0.0]


def test_failed_call_cost_and_outcome_only_variants():
    failed = S.with_columns(pl.when((pl.col("traj_id") == "d") & (pl.col("step_idx") == 0)).then(0.0)
                            .otherwise(pl.col("succ_calling")).alias("succ_calling"))
    t = reward_table(failed, RewardsConfig(shaping="paper", failed_call_cost=0.25, call_cost=0.0))
    # d step 0: SC 0, Con 5 -> p = (0 + 1)/2 = 0.5, minus 0.25·(1 − 0) = 0.25
    assert t.filter((pl.col("traj_id") == "d") & (pl.col("step_idx") == 0))["reward"][0] == pytest.approx(0.25)
    # a successful call pays no failure cost: d step 1 keeps p = (1 + 1)/2 = 1
    assert t.filter((pl.col("traj_id") == "d") & (pl.col("step_idx") == 1))["reward"][0] == pytest.approx(1.0)
    for variant in ("no_step_reward", "ppo_outcome"):  # IsSolved alone, whatever the shaping and the costs
        g0, r = _g0(RewardsConfig(shaping="min_form", call_cost=0.5), variant)
        assert r["d"] == [0.0, 0.0, 1.0] and g0 == {"d": 1.0, "r": 1.0, "n": 0.0}


def test_discounted_returns_equal_the_loop_whatever_the_batching():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 9, size=200)
    r = rng.normal(size=int(lengths.sum()))

    def loop(rew, gamma):
        out, acc = [], 0.0
        for x in reversed(rew):
            acc = x + gamma * acc
            out.append(acc)
        return out[::-1]

    def want_of(r, lengths, gamma):
        want, at = [], 0
        for n in lengths:
            want += loop(r[at:at + n], gamma)
            at += n
        return want

    for gamma in (0.0, 0.5, 0.99, 1.0):
        got = discounted_returns(r, lengths, gamma)
        want = want_of(r, lengths, gamma)
        assert got.tolist() == want  # the same additions in the same order: equal to the last bit
        half = int(lengths[:100].sum())  # batching: the first 100 trajectories alone give the same numbers
        assert discounted_returns(r[:half], lengths[:100], gamma).tolist() == want[:half]
    # long token segments beside short ones (the sorted path: the [distance, segment] grid would be mostly empty),
    # one longer than int16 counts
    for skewed in ([300, 1, 0, 2, 1, 1, 5, 1, 3, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1],
                   [40_000, 3, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]):
        lengths2 = np.array(skewed)
        r2 = rng.normal(size=int(lengths2.sum()))
        for gamma in (0.0, 0.9, 1.0):
            assert discounted_returns(r2, lengths2, gamma).tolist() == want_of(r2, lengths2, gamma)
    with pytest.raises(ValueError, match="cover"):
        discounted_returns([1.0, 2.0], [3], 1.0)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\], got 1.5"):
        discounted_returns([1.0], [1], 1.5)


def test_reference_rewards_reappear_in_its_training_csvs(external):
    """α = 1 and vote averaging on the reference's GPT-4 annotations give rewards its PPO CSVs contain."""
    _, rows = import_reference_annotations(external / "steptool/reward_annotation/qwen2_G123_example_5.json")
    ours = set(step_rewards(pl.DataFrame(rows, infer_schema_length=None), spec=PAPER)["reward"].round(4).to_list())
    csv.field_size_limit(1 << 30)
    theirs = set()
    for path in sorted((external / "steptool/data_train").glob("*_step_grained_for_ppo_example.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                theirs |= {round(x, 4) for x in ast.literal_eval(row["reward"])}
    # Measured: these six match. 0.1333 (56543 step 1: votes (0,1) (0,1) (0,2)) is ours too, but the
    # example CSVs were built from other trajectories and do not contain it.
    assert {0.3333, 0.4333, 0.8333, 0.8667, 0.9333, 1.0} <= ours & theirs
    assert 0.1333 in ours


def test_discounted_returns_at_its_edges():
    """No step at all; integer rewards give float returns on every path (γ 0, the grid of similar lengths, the
    sorted path of a few long segments: lengths five 1s and one 30 take it, 6·30 > 4·35), equal to the loop G = r +
    γ·G; the error names at most the first 8 lengths."""
    from pipeline.rewards import discounted_returns

    assert discounted_returns([], [], 0.9).tolist() == []
    for gamma, lengths in ((0.0, [2, 1]), (0.5, [2, 1]), (0.5, [1, 1, 1, 1, 1, 30])):
        rewards = [1] * sum(lengths)
        out = discounted_returns(rewards, lengths, gamma)
        want, at = [], 0
        for n in lengths:
            g, seg = 0.0, []
            for r in reversed(rewards[at:at + n]):
                g = r + gamma * g
                seg.append(g)
            want += seg[::-1]
            at += n
        assert out.dtype == np.float64 and out.tolist() == want
    with pytest.raises(ValueError, match=r"segment lengths \[1, 1, 1, 1, 1, 1, 1, 1\]\.\.\. do not cover 3 rewards"):
        discounted_returns([1.0, 2.0, 3.0], [1] * 10, 0.5)
