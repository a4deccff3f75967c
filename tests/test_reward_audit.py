"""The reward audit (pipeline/reward_audit.py) on a hand-built two-task toy: the archetypes are played through the
real ToolWorld and labelled by the real oracle, and every return is computed here by hand.

Task A needs one call, task B two (a search that finds an id, then the call that takes it); the budget is 6
actions. Under the oracle a gold call that brings something needed earns SC 1, Con 5 (p = 1 at α = 1), a repeat
SC 1, Con 0 (p = 0.5), and the right answer IsSolved 1.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl
import pytest

from pipeline import layout, reward_audit
from pipeline.config import RewardsConfig, load_params
from pipeline.errors import ConfigError
from pipeline.fsutil import write_json
from pipeline.schema import TASKS, write_table

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy(world, splits, tmp_path_factory):
    train = splits["train"]
    a = next(t for t in train if len(t.gold_calls) == 1 and len(t.gold_facts) >= 2)
    b = next(t for t in train if len(t.gold_calls) == 2 and len(t.gold_facts) >= 2)
    root = tmp_path_factory.mktemp("audit")
    write_table([a.to_row(), b.to_row()], root / layout.tasks_file("train"), TASKS)
    catalog = world.catalog()
    catalog["max_observation_length"] = 1024
    write_json(root / layout.CATALOG, catalog)
    params = load_params(REPO / "params.yaml")
    params = dataclasses.replace(params, agent=dataclasses.replace(params.agent, max_steps=6))  # the budget by hand
    tasks = reward_audit.audit_tasks(params, root)
    return params, root, tasks, reward_audit.label(params, root, tasks), a, b


def _returns(toy, spec, variant="steptool"):
    params, root, tasks, labelled, a, b = toy
    summary, per_task = reward_audit.run(params, root, variant, spec, tasks, labelled)
    rows = {r["task_id"]: r for r in per_task.to_dicts()}
    return summary, rows[a.task_id], rows[b.task_id]


def test_the_oracle_labels_the_archetypes_as_expected(toy):
    _, _, _, (steps, _, gold_steps), a, b = toy
    assert gold_steps == {a.task_id: 1, b.task_id: 2}
    got = {(r["task_id"], r["archetype"]): r for r in steps.group_by("task_id", "archetype").agg(
        pl.col("contribution"), pl.col("succ_calling"), pl.col("is_solved_score").last()).to_dicts()}
    assert got[(a.task_id, "direct")]["contribution"] == [5.0, None]
    assert got[(a.task_id, "redundant")]["contribution"] == [5.0, 0.0, None]  # the repeat brings nothing new
    assert got[(a.task_id, "no_answer")]["contribution"] == [5.0] + [0.0] * 5  # 6 actions, cut, no Finish
    assert got[(b.task_id, "no_answer")]["succ_calling"] == [1.0] * 6
    assert got[(a.task_id, "direct")]["is_solved_score"] == 1.0
    assert got[(a.task_id, "partial")]["is_solved_score"] == 0.5  # half the facts: Unsure
    assert got[(a.task_id, "give_up")]["is_solved_score"] == 0.0
    assert got[(b.task_id, "no_answer")]["is_solved_score"] == 0.0


def test_the_old_reward_pays_for_padding(toy):
    """The paper's shaping at α = 1, γ = 1, with a repeat credited Contribution 1 as the oracle did before:
    A: direct 1 + 1 = 2; redundant 1 + 0.6 + 1 = 2.6; no answer 1 + 0.6·4 + 0 (the cut call earns IsSolved 0) = 3.4.
    B: direct 1 + 1 + 1 = 3; redundant 3.6; no answer 1 + 1 + 0.6·3 + 0 = 3.8. Padding is ahead on both tasks."""
    params, root, tasks, (steps, stats, gold), a, b = toy
    old = steps.with_columns(pl.when(pl.col("archetype").is_in(["redundant", "no_answer"])
                                     & (pl.col("contribution") == 0.0) & (pl.col("succ_calling") == 1.0))
                             .then(1.0).otherwise(pl.col("contribution")).alias("contribution"))
    summary, per_task = reward_audit.run(params, root, "steptool", RewardsConfig(shaping="paper", call_cost=0.0), tasks,
                                         (old, stats, gold))
    rows = {r["task_id"]: r for r in per_task.to_dicts()}
    assert rows[a.task_id]["G_direct"] == pytest.approx(2.0) and rows[a.task_id]["G_redundant"] == pytest.approx(2.6)
    assert rows[a.task_id]["G_no_answer"] == pytest.approx(3.4)
    assert rows[b.task_id]["G_direct"] == pytest.approx(3.0) and rows[b.task_id]["G_redundant"] == pytest.approx(3.6)
    assert rows[b.task_id]["G_no_answer"] == pytest.approx(3.8)
    assert summary["padded_beats_direct"] == 1.0 and summary["beats_no_answer"] == 1.0
    # right after the plan: Finish 1 against the repeat's 0.6 + 1: another call is preferred on both tasks
    assert rows[a.task_id]["finish_advantage"] == pytest.approx(-0.6) and summary["call_preferred"] == 1.0
    params_strict = params  # the default audit is strict with audit_max_share 0: this reward is refused
    with pytest.raises(ConfigError, match="refusing to train"):
        reward_audit.enforce(summary, params_strict, "toy")


def test_paper_without_the_repeat_credit_still_pays_sc(toy):
    """Con 0 for a repeat is not enough at α = 1: SC alone earns 0.5. A: redundant 1 + 0.5 + 1 = 2.5 > 2."""
    summary, a, b = _returns(toy, RewardsConfig(shaping="paper", call_cost=0.0))
    assert (a["G_direct"], a["G_redundant"], a["G_no_answer"]) == pytest.approx((2.0, 2.5, 3.0))
    assert (b["G_direct"], b["G_redundant"], b["G_no_answer"]) == pytest.approx((3.0, 3.5, 3.5))
    assert summary["beats_redundant"] == 1.0


def test_every_shaping_the_default_may_choose_never_pays_for_a_redundant_call(toy):
    """min_form (the default) and progress, by hand, on both tasks."""
    # min_form, γ = 1: G_0 = min over the steps' q (p on calls, IsSolved on the last) + IsSolved
    summary, a, b = _returns(toy, RewardsConfig(shaping="min_form", call_cost=0.0))
    assert (a["G_direct"], a["G_redundant"], a["G_no_answer"]) == pytest.approx((2.0, 1.5, 0.0))
    assert (b["G_direct"], b["G_redundant"], b["G_no_answer"]) == pytest.approx((2.0, 1.5, 0.0))
    assert a["G_partial"] == pytest.approx(0.5 + 0.5) and a["G_give_up"] == pytest.approx(0.0)
    # right after the plan: Finish earns 1 + 1 = 2, one more call −0.5 + 2 = 1.5
    assert a["finish_advantage"] == pytest.approx(0.5) and b["finish_advantage"] == pytest.approx(0.5)
    assert summary["padded_beats_direct"] == 0.0 and summary["finish_preferred"] == 1.0
    assert summary["direct_beats_all"] == 1.0
    # progress, γ = 1, call cost 0.05: G_0 = IsSolved − 0.05 per call (the shaping telescopes to 0)
    summary, a, b = _returns(toy, RewardsConfig(shaping="progress", call_cost=0.05))
    assert (a["G_direct"], a["G_redundant"], a["G_no_answer"]) == pytest.approx((0.95, 0.9, -0.3))
    assert (b["G_direct"], b["G_redundant"], b["G_no_answer"]) == pytest.approx((0.9, 0.85, -0.3))
    assert summary["padded_beats_direct"] == 0.0 and summary["finish_preferred"] == 1.0
    for s in (RewardsConfig(shaping="min_form", call_cost=0.0), RewardsConfig(shaping="progress", call_cost=0.05)):
        reward_audit.enforce(_returns(toy, s)[0], toy[0], "toy")  # strict, share 0: accepted


def test_outcome_only_variants_tie_padding_and_no_step_opt_prefers_finish(toy):
    summary, a, _ = _returns(toy, RewardsConfig(shaping="paper", call_cost=0.0), "ppo_outcome")
    assert (a["G_direct"], a["G_redundant"], a["G_no_answer"]) == pytest.approx((1.0, 1.0, 0.0))
    assert summary["padded_beats_direct"] == 0.0 and summary["ties_redundant"] == 1.0
    # no credit across steps: at the decision, Finish's own reward 1 against the repeat's 0.5
    summary, a, _ = _returns(toy, RewardsConfig(shaping="paper", call_cost=0.0), "no_step_opt")
    assert a["finish_advantage"] == pytest.approx(0.5) and summary["finish_preferred"] == 1.0
    # ...and in the direct solve a gold call earns p = 1, the correct answer IsSolved 1: a tie, not a gather
    assert a["gather_margin"] == pytest.approx(0.0) and summary["gather_beats_answer"] == 0.0
    assert "gather_beats_answer" not in _returns(toy, RewardsConfig(shaping="paper"), "steptool")[0]


def test_the_audit_flags_a_myopic_variant_paid_to_gather(toy):
    """no_step_opt learns from each step's own reward. Under `progress` with the telescoping pay-back kept (the
    study's no_step_opt), the correct answer after every fact earned IsSolved − Φ_T = 1 − 1 = 0 and task B's second
    gold call +2/3 − 0.05 (task A's, its only one, +1 − 0.05): gathering out-earned answering on both tasks, while
    every G_0 comparison was blind (G_0 = r_0). The immediate form pays the answer 1: B's best call 0.6167 and A's
    0.95 both earn less. By hand from the oracle's labels (A: Φ 0 -> 1; B, three needed facts: 0 -> 1/3 -> 1)."""
    params, root, tasks, labelled, a_task, b_task = toy
    spec = RewardsConfig(shaping="progress", call_cost=0.05)
    summary, a, b = _returns(toy, spec, "no_step_opt")
    assert a["gather_margin"] == pytest.approx(0.95 - 1.0) and b["gather_margin"] == pytest.approx(2 / 3 - 0.05 - 1.0)
    assert summary["gather_beats_answer"] == 0.0
    reward_audit.enforce(summary, params, "toy")  # strict, share 0: accepted
    # the pay-back form, scored as steptool's per-step rewards read one step at a time: what no_step_opt trained on
    steps, _, gold_steps = labelled
    from pipeline.rewards import step_rewards
    direct = steps.filter(pl.col("archetype") == "direct").drop("archetype")
    r = step_rewards(direct.drop("task_id"), "steptool", spec).join(direct.select("traj_id", "task_id").unique(),
                                                                   on="traj_id")
    by_task = {t: g.sort("step_idx")["reward"].to_list() for (t,), g in r.group_by("task_id")}
    old_a, old_b = by_task[a_task.task_id], by_task[b_task.task_id]
    assert old_a == pytest.approx([0.95, 0.0]) and old_b == pytest.approx([1 / 3 - 0.05, 2 / 3 - 0.05, 0.0])
    per_task = pl.DataFrame({"task_id": [a_task.task_id, b_task.task_id],
                             "gather_margin": [max(v[:-1]) - v[-1] for v in (old_a, old_b)]})
    per_task = per_task.with_columns(*[pl.lit(1.0).alias(f"G_{x}") for x in reward_audit.ARCHETYPES],
                                     pl.lit(None, pl.Float64).alias("finish_advantage"))
    old = reward_audit.summarize(per_task, gold_steps, params.agent.max_steps)
    assert old["gather_beats_answer"] == 1.0
    with pytest.raises(ConfigError, match="a gold call earns more than the correct answer on 100%"):
        reward_audit.enforce({**summary, **old}, params, "toy")


@pytest.mark.long
def test_the_audit_goes_through_the_llm_judges_cost_cap_and_cache(toy, tmp_path, monkeypatch):
    """With the openai annotator the archetypes are judged by the LLM through the annotator's client: the cost
    estimate stops an audit above annotate.max_cost_usd before any call, a run pays once, and a second audit is
    answered from the judge's cache (no HTTP call)."""
    from pipeline.annotate.llm_judge import BudgetExceeded
    from pipeline.annotate.scripted_judge_server import JudgeServer

    params, root, tasks, _, a, _ = toy
    monkeypatch.setenv("STEPTOOL_TEST_JUDGE_KEY", "k")
    server = JudgeServer()
    try:
        def with_judge(**kw):
            ann = dataclasses.replace(params.annotate, annotator="openai", base_url=server.url, model="judge-test",
                                      api_key_env="STEPTOOL_TEST_JUDGE_KEY", n_votes=1, timeout_s=2.0,
                                      cache_path=str(tmp_path / "judge.sqlite"), **kw)
            return dataclasses.replace(params, annotate=ann)

        one = tasks[:1]  # the 1-call task: six archetypes, six judge calls
        with pytest.raises(BudgetExceeded):
            reward_audit.run(with_judge(max_cost_usd=1e-9), root, "steptool", RewardsConfig(shaping="min_form", call_cost=0.0), one)
        assert server.http_calls == 0
        summary, per_task = reward_audit.run(with_judge(max_cost_usd=0), root, "steptool",
                                             RewardsConfig(shaping="min_form", call_cost=0.0), one)
        calls = server.http_calls
        assert calls > 0 and summary["annotator"] == "openai" and per_task.height == 1
        assert summary["unlabelled"] == 0  # every archetype came back labelled
        again, _ = reward_audit.run(with_judge(max_cost_usd=1e-9), root, "steptool", RewardsConfig(shaping="min_form", call_cost=0.0),
                                    one)
        assert server.http_calls == calls and again["mean_return"] == summary["mean_return"]
    finally:
        server.close()
