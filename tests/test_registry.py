"""Adding a part is its module plus one registration (docs/architecture.md, "How to add a part"): a throwaway
variant, annotator, environment kind, search strategy, reward shaping and pass-rate judge, registered from a module in a temporary folder, are accepted by the
params check, listed by `steptool params` and the CLI's choices, and used by the phase that dispatches to them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from pipeline.errors import ConfigError
from pipeline.registry import ANNOTATORS, ENVIRONMENTS, JUDGES, SHAPINGS, Part, Registry
from tests.conftest import REPO

THROWAWAY = textwrap.dedent('''
    """A throwaway annotator, environment kind, variant, strategy, shaping and judge: what a user adding one
    writes."""
    import polars as pl

    from pipeline import variants
    from pipeline.annotate.base import StepLabel, TrajLabel
    from pipeline.envs import ToolWorldEnv
    from pipeline.agent.rollout import run_chains
    from pipeline.registry import ANNOTATORS, ENVIRONMENTS, JUDGES, SHAPINGS, STRATEGIES, Part
    from pipeline.toolworld.world import ToolWorld

    CALLS = []


    def annotate(trajs, steps_by_traj, tasks, cfg, cache_path=None, progress=True):
        CALLS.append(len(trajs))
        labels = [TrajLabel(t["traj_id"], [StepLabel(1.0, 5.0) for _ in steps_by_traj[t["traj_id"]]], "Solved",
                            1.0, "always_five", "v1") for t in trajs]
        return labels, {"throwaway_calls": len(trajs)}


    def make(env_cfg, world_cfg, world=None):
        CALLS.append("env")
        return ToolWorldEnv(world or ToolWorld.from_config(world_cfg), world_cfg.max_observation_length)


    def chains_again(jobs, policy, renderer, make_env, search):
        CALLS.append("strategy")
        return run_chains(jobs, policy, renderer, make_env, search)


    def half_p(df, spec, myopic):
        CALLS.append("shaping")
        return df, pl.when(pl.col("is_last")).then(0.0).otherwise(pl.col("_p") / 2)


    def always_unsure(trajs, steps, tasks, params):
        CALLS.append("judge")
        return {t["traj_id"]: ["Unsure"] for t in trajs}, {"judged": len(trajs)}


    ANNOTATORS.register(Part("always_five", "labels every call 5", "throwaway_parts:annotate"))
    ENVIRONMENTS.register(Part("echo_world", "ToolWorld again, through another maker", "throwaway_parts:make",
                               frozenset({"toolworld"})))
    variants.register(variants.Variant("throwaway_variant", step_rewards=True, credit_across_steps=False,
                                       token_level=True, help="a fifth variant"))
    STRATEGIES.register(Part("chain_again", "CoT under another name", "throwaway_parts:chains_again"))
    SHAPINGS.register(Part("half_p", "half the paper's step reward", "throwaway_parts:half_p"))
    JUDGES.register(Part("always_unsure", "says Unsure to everything", "throwaway_parts:always_unsure"))
''')

SCRIPT = textwrap.dedent('''
    import contextlib, io, json, sys
    sys.path.insert(0, sys.argv[1])
    import throwaway_parts  # registers
    from pipeline.config import parse_params
    from steptool.cli import main

    params = parse_params({"annotate": {"annotator": "always_five"}, "rewards": {"shaping": "half_p"},
                           "env": {"kind": "echo_world"}, "variants": ["steptool", "throwaway_variant"],
                           "evaluate": {"models": ["sft", "throwaway_variant"], "judge": "always_unsure"}})
    out = {"parsed": [params.annotate.annotator, params.env.kind, params.variants, params.rewards.shaping,
                      params.evaluate.judge]}
    # a judge that needs no gold facts is accepted for StableToolBench's tasks
    sb = parse_params({"tasks": {"source": "stabletoolbench"}, "env": {"kind": "replay"}, "collect": {"replay": False},
                       "annotate": {"annotator": "heuristic"}, "rewards": {"shaping": "half_p"},
                       "evaluate": {"judge": "always_unsure"}})
    out["stabletoolbench_judge"] = sb.evaluate.judge
    try:  # a strategy to evaluate needs its task count
        parse_params({"evaluate": {"strategies": ["cot", "chain_again"]}})
    except Exception as e:
        out["no_count"] = str(e)
    ev = parse_params({"collect": {"strategy": "chain_again"},
                       "evaluate": {"strategies": ["cot", "chain_again"], "tasks_per_level": {"chain_again": 1}}})
    out["strategies"] = [ev.collect.strategy, ev.evaluate.strategies, ev.evaluate.tasks_per_level]
    for argv in (["params"], ["train", "--help"], ["play", "--help"], ["audit-rewards", "--help"]):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
            main(argv)
        out[argv[0]] = buf.getvalue()

    from pipeline.annotate.run import label_trajectories
    from pipeline.envs import make_env
    from pipeline.task import Task

    task = Task(task_id="t", query="q", level="I1", split="train", api_list=[])
    traj = {"traj_id": "a", "task_id": "t"}
    steps = [{"traj_id": "a", "step_idx": 0}, {"traj_id": "a", "step_idx": 1}]
    labels, stats = label_trajectories([traj], steps, {"t": task}, params.annotate, progress=False)
    make_env(params.env, params.toolworld)
    out["labels"] = [(s.succ_calling, s.contribution) for s in labels[0].steps]
    out["stats"] = stats

    import polars as pl
    from pipeline.evaluate.results import result_rows
    from pipeline.registry import JUDGES
    from pipeline.rewards import step_rewards

    table = pl.DataFrame({"traj_id": ["a", "a"], "step_idx": [0, 1], "succ_calling": [1.0, None],
                          "contribution": [5.0, None], "is_solved_score": [None, 1.0]})
    out["rewards"] = step_rewards(table, "steptool", params.rewards)["reward"].to_list()
    played = {"traj_id": "a", "task_id": "t", "sample_idx": 0, "final_answer": "x", "finish_type": "give_answer",
              "n_steps": 1, "actions_generated": 1}
    finish = [{"traj_id": "a", "step_idx": 0, "is_finish": True}]
    statuses, judge_stats = JUDGES.implementation(params.evaluate.judge)([played], finish, {"t": task}, params)
    (row,) = result_rows("sft", "cot", [played], finish, {"t": task}, statuses, judge=params.evaluate.judge)
    out["judged"] = [row["judge"], row["statuses"], row["pass_score"], judge_stats]

    # the collection dispatches to the registered strategy, and records its name
    from pipeline.agent.play import collect
    from pipeline.agent.policy import ScriptedPolicy
    from pipeline.agent.prompts import ChatRenderer, format_action
    from pipeline.models import SMOLLM2, load_tokenizer

    tok = load_tokenizer(SMOLLM2)
    give_up = format_action("no", "Finish", {"return_type": "give_up_and_restart"})
    collect([task], ScriptedPolicy(tok, lambda p, s: give_up), ChatRenderer(tok),
            lambda: make_env(params.env, params.toolworld), sys.argv[1] + "/played", "k", strategy="chain_again",
            progress=False)
    out["played"] = pl.read_parquet(sys.argv[1] + "/played/trajectories.parquet")["strategy"].to_list()
    out["calls"] = throwaway_parts.CALLS
    print("RESULT " + json.dumps(out))
''')


def test_a_registered_throwaway_part_is_accepted_listed_and_used(tmp_path):
    (tmp_path / "throwaway_parts.py").write_text(THROWAWAY)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**{k: v for k, v in os.environ.items() if k in ("HOME", "XDG_CACHE_HOME")},
                                               "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert out["parsed"] == ["always_five", "echo_world", ["steptool", "throwaway_variant"], "half_p", "always_unsure"]
    assert out["stabletoolbench_judge"] == "always_unsure"
    for name, help_ in (("always_five", "labels every call 5"), ("echo_world", "through another maker"),
                        ("throwaway_variant", "a fifth variant"), ("half_p", "half the paper's step reward"),
                        ("always_unsure", "says Unsure to everything")):
        assert name in out["params"] and help_ in out["params"], name  # `steptool params` reads the registries
    assert "throwaway_variant" in out["train"]  # the stage's choices
    assert "echo_world" in out["play"]  # --env's choices
    assert "half_p" in out["audit-rewards"]  # --shaping's choices
    assert out["labels"] == [[1.0, 5.0], [1.0, 5.0]] and out["stats"]["throwaway_calls"] == 1
    # by hand: p_0 = (1·1 + 5/5)/2 = 1, halved 0.5, minus call_cost 0.05; the last step earns IsSolved 1
    assert out["rewards"] == pytest.approx([0.45, 1.0])
    assert out["judged"] == ["always_unsure", ["Unsure"], 0.5, {"judged": 1}]
    assert "evaluate.tasks_per_level has no entry for strategy 'chain_again'" in out["no_count"]
    assert out["strategies"] == ["chain_again", ["cot", "chain_again"], {"cot": 12, "dfsdt": 4, "chain_again": 1}]
    assert "chain_again" in out["play"]  # --strategy's choices
    assert out["played"] == ["chain_again"]
    assert out["calls"] == [1, "env", "shaping", "judge", "strategy", "env"]


def test_an_unknown_or_repeated_name_is_refused():
    reg = Registry("x.kind", "f()")
    reg.register(Part("a", "first", "m:f"))
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(Part("a", "again", "m:g"))
    with pytest.raises(ValueError, match="'module:function'"):
        reg.register(Part("b", "no function", "m"))
    with pytest.raises(ConfigError, match=r"x.kind must be one of 'a', got 'z'"):
        reg.get("z")
    assert not reg.has("z", "anything")


def test_properties_not_names_decide_what_the_params_check_refuses():
    """The checks read properties: an annotator that needs gold is refused for StableToolBench tasks, and
    progress shaping needs one that gives progress, whatever they are called."""
    from pipeline.config import parse_params

    needs_gold = [n for n in ANNOTATORS.names() if ANNOTATORS.has(n, "needs_gold")]
    in_process = [n for n in ENVIRONMENTS.names() if ENVIRONMENTS.has(n, "toolworld")]
    assert needs_gold == ["oracle"] and in_process == ["toolworld"]
    with pytest.raises(ConfigError, match="needs annotate.annotator heuristic or openai"):
        parse_params({"tasks": {"source": "stabletoolbench"}, "env": {"kind": "replay"},
                      "evaluate": {"judge": "openai"}, "collect": {"replay": False}})
    with pytest.raises(ConfigError, match="needs env.kind http or replay"):
        parse_params({"tasks": {"source": "stabletoolbench"}, "annotate": {"annotator": "heuristic"}})
    with pytest.raises(ConfigError, match="which only annotate.annotator oracle gives"):
        parse_params({"annotate": {"annotator": "heuristic"}, "rewards": {"shaping": "progress"}})
    assert [n for n in SHAPINGS.names() if SHAPINGS.has(n, "needs_progress")] == ["progress"]
    assert [n for n in JUDGES.names() if JUDGES.has(n, "needs_gold")] == ["rule"]
    with pytest.raises(ConfigError, match="needs evaluate.judge openai"):
        parse_params({"tasks": {"source": "stabletoolbench"}, "env": {"kind": "replay"}, "collect": {"replay": False},
                      "annotate": {"annotator": "heuristic"}, "rewards": {"shaping": "min_form"}})
