"""Several PPO rounds in one train stage (docs/architecture.md, "Seeds and rounds"): round 2 collects with round
1's policy, a run killed between rounds keeps the finished round and the rerun does only what is left, and
a changed param starts the run's work over."""
from __future__ import annotations

import json
import shutil

import polars as pl
import pytest
import torch
import yaml

from pipeline import layout


@pytest.fixture()
def round1(tmp_path, tiny_model_dir):
    """A root where collect@0, annotate@0 and advantages@steptool-0 have run with a tiny sft."""
    from pipeline.config import load_params
    from stages import advantages, annotate, collect
    from stages import tasks as tasks_stage
    from tests.conftest import REPO

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tasks"].update(train={"I1": 2, "I2": 1, "I3": 1}, test={"I1": 1, "I2": 1, "I3": 1})
    raw["agent"].update(max_steps=2, max_new_tokens=8)
    raw["collect"].update(max_tasks=2, n_samples=2, chunk_size=2)
    raw["train"].update(rounds=2, seeds=[0], save_steps=100)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "params.yaml")
    tasks_stage.run(params, tmp_path)
    shutil.copytree(tiny_model_dir, tmp_path / layout.SFT_MODEL)
    collect.run(params, tmp_path, 0)
    annotate.run(params, tmp_path, 0)
    advantages.run(params, tmp_path, "steptool", 0)
    return tmp_path, params


def test_a_kill_between_rounds_keeps_round_one(round1, monkeypatch):
    from pipeline.errors import SteptoolError
    from stages import train
    from trainer import rounds

    root, params = round1
    real, calls, kill, refs = rounds.train_round, [], [True], []

    def dies_in_round_two(params, root, variant, seed, start, trajectories, adv_file, work, ref=None):
        calls.append(work.name)
        refs.append((work.name, start, ref))
        if work.name == "r2" and kill[0]:
            raise SteptoolError("killed")
        return real(params, root, variant, seed, start, trajectories, adv_file, work, ref)

    monkeypatch.setattr(rounds, "train_round", dies_in_round_two)
    with pytest.raises(SteptoolError, match="killed"):
        train.run(params, root, "steptool", 0)
    work = root / layout.checkpoint_dir("steptool", 0)
    assert (work / "r1" / "metrics.json").exists() and (work / "r1" / "model" / "config.json").exists()
    # round 2 had collected and annotated with round 1's policy before it died: kept for the rerun
    assert (work / "r2" / "trajectories" / "trajectories.parquet").exists()
    assert not (root / layout.model_dir("steptool", 0)).exists()

    kill[0] = False
    msg = train.run(params, root, "steptool", 0)
    assert calls == ["r1", "r2", "r2"] and "rounds [1] were done" in msg
    # round 2 starts from round 1's policy, but the KL's reference is the SFT policy in both rounds
    assert all(ref == root / layout.SFT_MODEL for _, _, ref in refs)
    assert refs[0][1] == root / layout.SFT_MODEL and refs[-1][1] == work / "r1" / "model"
    metrics = json.loads((root / layout.metrics_file("train", layout.run_name("steptool", 0))).read_text())
    assert metrics["rounds"] == 2 and metrics["resumed_rounds"] == [1] and metrics["round"] == 2
    r1 = pl.read_parquet(root / layout.round_dir("steptool", 0, 1) / "round.parquet")
    r2 = pl.read_parquet(root / layout.round_dir("steptool", 0, 2) / "round.parquet")
    sft_ids = set(pl.read_parquet(root / layout.table(layout.trajectories_dir(0), "trajectories"))["traj_id"])
    assert set(r1["traj_id"]) <= sft_ids and not set(r2["traj_id"]) & sft_ids  # round 2 played by round 1's policy
    assert r1["ratio"].null_count() == r2["clipped"].null_count() == 0  # each step's PPO ratio and clip share
    annotated = pl.read_parquet(root / layout.round_dir("steptool", 0, 2) / "annotated" / "steps.parquet")
    assert set(annotated["traj_id"]) == set(r2["traj_id"])
    assert (root / layout.model_dir("steptool", 0) / "model.safetensors").exists()
    assert not work.exists()


def test_a_changed_param_starts_the_runs_work_over(tmp_path, monkeypatch):
    from pipeline.config import parse_params, to_dict
    from pipeline.errors import SteptoolError
    from stages import train
    from trainer import rounds

    root, params = tmp_path, parse_params({"train": {"rounds": 2}})
    for f in (layout.SFT_MODEL / "model.safetensors", layout.table(layout.trajectories_dir(0), "tokens"),
              layout.advantages_file("steptool", 0)):  # the run key reads these inputs (their bytes only)
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_bytes(b"x")

    def dies(*args, **kwargs):
        raise SteptoolError("killed")

    monkeypatch.setattr(rounds, "run_round", dies)
    work = root / layout.checkpoint_dir("steptool", 0)
    (work / "r1").mkdir(parents=True)
    (work / "run_key.txt").write_text("of other params")
    (work / "r1" / "metrics.json").write_text("{}")  # a finished round of another run
    with pytest.raises(SteptoolError, match="killed"):
        train.run(params, root, "steptool", 0)
    assert not (work / "r1").exists()  # not mistaken for this run's round 1
    raw = to_dict(params)
    raw["train"]["seeds"] = [0, 3]  # another seed joins: seed 0's work is still its own
    key = (work / "run_key.txt").read_text()
    (work / "r1").mkdir()
    (work / "r1" / "metrics.json").write_text("{}")  # this run's finished round 1: skipped, round 2 is next
    (work / "r1" / "history.json").write_text("[]")
    with pytest.raises(SteptoolError, match="killed"):
        train.run(parse_params(raw), root, "steptool", 0)
    assert (work / "run_key.txt").read_text() == key and (work / "r1" / "metrics.json").exists()
    with pytest.raises(SteptoolError, match="not one of train.seeds"):
        train.run(params, root, "steptool", 5)


def test_a_half_written_trainer_checkpoint_is_dropped_not_loaded(tmp_path):
    """A kill while transformers saves leaves a checkpoint folder without trainer_state.json (written last) or with
    half of it: resuming from it would fail. The run resumes from the last whole one."""
    from trainer.rounds import complete_checkpoints

    for step, state in ((20, '{"global_step": 20}'), (40, '{"global_step": 40}'), (60, '{"global_st'), (80, None)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"weights")
        if state is not None:
            (d / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-100").mkdir()  # the folder made, nothing in it yet
    assert [d.name for d in complete_checkpoints(tmp_path)] == ["checkpoint-20", "checkpoint-40"]
    assert sorted(d.name for d in tmp_path.iterdir()) == ["checkpoint-20", "checkpoint-40"]
    assert complete_checkpoints(tmp_path / "none") == []


@pytest.mark.long
def test_lora_rounds_through_a_vllm_style_server_load_each_rounds_adapter(round1):
    """agent.backend openai with train.lora: round 2's collection and each round's replay play the new policy
    through the server, which loads that round's adapter on the SFT model it serves (vLLM's documented
    /v1/load_lora_adapter: tests/support/openai_server.py); round 2 continues round 1's adapter, so each saved
    policy is the SFT model plus one adapter, exactly what the server plays."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from pipeline.config import load_params
    from pipeline.models import load_tokenizer
    from stages import train
    from tests.support.openai_server import CompletionServer

    root, _ = round1
    sft = layout.SFT_MODEL
    server = CompletionServer({}, load_tokenizer(str(root / sft)), lora_base=str(sft),
                              load=lambda name: AutoModelForCausalLM.from_pretrained(root / name).eval())
    try:
        raw = yaml.safe_load((root / "params.yaml").read_text())
        raw["agent"].update(backend="openai", base_url=server.url, server_constraint="structured_outputs")
        # adapters that matter: a large step, and baseline zero (advantages = returns, never all 0: the tiny model's
        # collection can give every trajectory the same return, which rloo turns into zero advantages and an adapter
        # that never moves, as on an AMD machine's AVX2 kernels)
        raw["train"].update(lora=True, lora_r=4, precision="fp32", learning_rate=1e-2, baseline="zero")
        raw["collect"].update(replay=True)
        (root / "params.yaml").write_text(yaml.safe_dump(raw))
        params = load_params(root / "params.yaml")
        train.run(params, root, "steptool", 0)
    finally:
        server.close()
    work = layout.checkpoint_dir("steptool", 0)
    names = [f"{work}/r{k}/model" for k in (1, 1, 2)]  # r1's replay, r2's collection, r2's replay
    assert [r["lora_name"].split("@")[0] for r in server.adapter_requests] == names
    assert all(set(r) == {"lora_name", "lora_path"} for r in server.adapter_requests)
    assert server.adapter_requests[0]["lora_name"] == server.adapter_requests[1]["lora_name"]  # loaded once
    r1_name, r2_name = server.adapter_requests[1]["lora_name"], server.adapter_requests[2]["lora_name"]
    asked = [r["model"] for r in server.requests_seen if "prompt" in r]
    assert r1_name in asked and r2_name in asked and str(sft) not in asked
    # the trained policy is the SFT model plus its one adapter (round 2 continued round 1's, not stacked on it)
    from peft import PeftModel

    final = root / layout.model_dir("steptool", 0)
    rebuilt = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(root / sft),
                                        final / layout.LORA_ADAPTER).merge_and_unload().state_dict()
    saved = load_file(final / "model.safetensors")
    start = load_file(root / sft / "model.safetensors")
    assert max(float((saved[k] - start[k]).abs().max()) for k in saved) > 1e-3, "training changed too little"
    for k, v in saved.items():
        assert torch.allclose(rebuilt[k], v, atol=1e-6), k


def test_constrained_name_logprobs_train_on_the_collections_own_slots(round1):
    """train.name_logprobs: constrained through the train stage: the function names come from the train tasks as
    the collection's environment offers them, every collected action token lies in its recomputed set (else the
    stage would stop), and the counts reach the train metrics."""
    from pipeline.agent.rollout import _known_functions
    from pipeline.config import load_params
    from pipeline.envs import make_env
    from pipeline.task_files import load_tasks
    from stages import train
    from trainer.rounds import task_name_slots

    root, params = round1
    slots = task_name_slots(root, params.agent.prompt_format)
    env = make_env(params.env, params.toolworld)
    for task in load_tasks(root, "train"):
        env.reset(task, episode="check")
        assert {c.strip() for c in slots[task.task_id].choices} == _known_functions(env) | {"Finish"}
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["train"].update(rounds=1, name_logprobs="constrained")
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    train.run(load_params(root / "params.yaml"), root, "steptool", 0)
    metrics = json.loads((root / layout.metrics_file("train", layout.run_name("steptool", 0))).read_text())
    assert metrics["name_tokens_constrained"] >= metrics["name_tokens_forced"] >= 0
    assert (root / layout.model_dir("steptool", 0) / "model.safetensors").exists()
