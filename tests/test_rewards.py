"""Step rewards, returns and Monte-Carlo advantages (pipeline/rewards.py), with hand-computed values."""
from __future__ import annotations

import ast
import csv

import polars as pl
import pytest

from pipeline.annotate.importer import import_reference_annotations
from pipeline.rewards import advantages, returns_to_go, step_rewards


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


def test_step_rewards_by_hand():
    r = step_rewards(T, alpha=1.0)
    assert r["reward"].round(4).to_list() == [1.0, 0.2, 0.5, 0.7667, 0.0]
    assert r["is_last"].to_list() == [False, False, True, False, True]
    r2 = step_rewards(T, alpha=2.0)  # (2·SC + Con/5) / 3
    assert r2["reward"].round(4).to_list() == [1.0, 0.1333, 0.5, round((2 * 2 / 3 + 13 / 15) / 3, 4), 0.0]
    assert step_rewards(T, variant="no_step_reward")["reward"].to_list() == [0.0, 0.0, 0.5, 0.0, 0.0]
    assert step_rewards(T, variant="ppo_outcome")["reward"].to_list() == [0.0, 0.0, 0.5, 0.0, 0.0]
    w = step_rewards(T, normalize="whiten")["reward"]
    assert abs(w.mean()) < 1e-12 and abs(w.std() - 1) < 1e-12
    # outcome-only: the final rewards 0.5 and 0.0 are whitened (±0.7071 with the sample std 0.3536); the
    # intermediate steps stay 0 rather than becoming a length penalty of −mean/std each
    w = step_rewards(T, variant="no_step_reward", normalize="whiten")["reward"].round(4).to_list()
    assert w == [0.0, 0.0, 0.7071, 0.0, -0.7071]
    with pytest.raises(ValueError, match="unknown variant"):
        step_rewards(T, variant="nope")


def test_returns_by_hand():
    r = step_rewards(T)
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


def test_advantages_table():
    a = advantages(T, gamma=1.0)
    assert a.columns == ["traj_id", "step_idx", "reward", "return", "advantage", "variant"]
    mean = sum([1.7, 0.7, 0.5, 0.7666667, 0.0]) / 5
    assert a["advantage"].round(4).to_list() == [round(x - mean, 4) for x in [1.7, 0.7, 0.5, 0.7666667, 0.0]]
    nso = advantages(T, gamma=1.0, variant="no_step_opt")  # no credit across steps: return = own reward
    assert nso["return"].round(4).to_list() == [1.0, 0.2, 0.5, 0.7667, 0.0]


def test_reference_rewards_reappear_in_its_training_csvs(external):
    """α = 1 and vote averaging on the reference's GPT-4 annotations give rewards its PPO CSVs contain."""
    _, rows = import_reference_annotations(external / "steptool/reward_annotation/qwen2_G123_example_5.json")
    ours = set(step_rewards(pl.DataFrame(rows, infer_schema_length=None), alpha=1.0)["reward"].round(4).to_list())
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
