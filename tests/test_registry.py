"""Adding a part is its module plus one registration (docs/architecture.md, "How to add a part"): a throwaway
variant, annotator and environment kind, registered from a module in a temporary folder, are accepted by the
params check, listed by `steptool params` and the CLI's choices, and used by the phase that dispatches to them."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from pipeline.errors import ConfigError
from pipeline.registry import ANNOTATORS, ENVIRONMENTS, Part, Registry
from tests.conftest import REPO

THROWAWAY = textwrap.dedent('''
    """A throwaway annotator, environment kind and variant: what a user adding one writes."""
    from pipeline import variants
    from pipeline.annotate.base import StepLabel, TrajLabel
    from pipeline.envs import ToolWorldEnv
    from pipeline.registry import ANNOTATORS, ENVIRONMENTS, Part
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


    ANNOTATORS.register(Part("always_five", "labels every call 5", "throwaway_parts:annotate"))
    ENVIRONMENTS.register(Part("echo_world", "ToolWorld again, through another maker", "throwaway_parts:make",
                               frozenset({"toolworld"})))
    variants.register(variants.Variant("throwaway_variant", step_rewards=True, credit_across_steps=False,
                                       token_level=True, help="a fifth variant"))
''')

SCRIPT = textwrap.dedent('''
    import contextlib, io, json, sys
    sys.path.insert(0, sys.argv[1])
    import throwaway_parts  # registers
    from pipeline.config import parse_params
    from steptool.cli import main

    params = parse_params({"annotate": {"annotator": "always_five"}, "rewards": {"shaping": "min_form"},
                           "env": {"kind": "echo_world"}, "variants": ["steptool", "throwaway_variant"],
                           "evaluate": {"models": ["sft", "throwaway_variant"]}})
    out = {"parsed": [params.annotate.annotator, params.env.kind, params.variants]}
    for argv in (["params"], ["train", "--help"], ["play", "--help"]):
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
    out["calls"] = throwaway_parts.CALLS
    print("RESULT " + json.dumps(out))
''')


def test_a_registered_throwaway_part_is_accepted_listed_and_used(tmp_path):
    (tmp_path / "throwaway_parts.py").write_text(THROWAWAY)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert out["parsed"] == ["always_five", "echo_world", ["steptool", "throwaway_variant"]]
    for name, help_ in (("always_five", "labels every call 5"), ("echo_world", "through another maker"),
                        ("throwaway_variant", "a fifth variant")):
        assert name in out["params"] and help_ in out["params"], name  # `steptool params` reads the registries
    assert "throwaway_variant" in out["train"]  # the stage's choices
    assert "echo_world" in out["play"]  # --env's choices
    assert out["labels"] == [[1.0, 5.0], [1.0, 5.0]] and out["stats"]["throwaway_calls"] == 1
    assert out["calls"] == [1, "env"]


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
