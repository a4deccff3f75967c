"""The trainer's scale-out pieces (docs/architecture.md, "Scaling out"): the round's precompute on the trainer's device, batched,
equal to one trajectory at a time; gradient checkpointing (full and LoRA) giving the same gradients while
actually recomputing the layers."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _cfg(name: str, **kw):
    from trainer.config import StepPPOConfig

    base = dict(output_dir=str(REPO / ".pytest_cache" / name), report_to=[], use_cpu=True, variant="steptool",
                num_train_epochs=1, per_device_train_batch_size=4, gradient_accumulation_steps=1,
                learning_rate=1e-4, save_strategy="no", seed=0, disable_tqdm=True, logging_steps=1,
                lr_scheduler_type="constant")
    base.update(kw)
    return StepPPOConfig(**base)


def test_the_precompute_runs_on_the_trainers_device_after_it_placed_the_model(tokenizer):
    """Every forward of the round's precompute (reference/old log-probs, value features) sees the model and all
    of its inputs on `args.device`, and none runs before `Trainer.__init__` has placed the model there (the
    old trainer ran it in its own `__init__`, on the CPU of a GPU host). bench/gpu.py runs the same check on
    CUDA."""
    from tests.support.device_check import record_forward_devices
    from tests.support.tiny_model import make_tiny_model
    from tests.support.toy_env import play
    from trainer.model import PolicyWithValue
    from trainer.step_ppo import StepPPOTrainer

    model = make_tiny_model(tokenizer, seed=3)
    examples, _ = play(model, tokenizer, 6, 3, 11, "steptool")
    wrapped = PolicyWithValue(model)
    seen = record_forward_devices(wrapped)
    trainer = StepPPOTrainer(wrapped, _cfg("scale-device"), examples, pad_id=tokenizer.pad_token_id)
    assert seen == [], "a forward pass ran before the Trainer placed the model"
    trainer.train()
    want = torch.device(trainer.args.device).type
    precompute = [s for s in seen if not s["training"]]
    assert precompute, "the precompute never ran a forward pass"
    for s in seen:
        assert s["params"] == {want} and s["inputs"] == {want}, s


def test_the_batched_precompute_equals_one_trajectory_at_a_time(tokenizer):
    """Right-padded batches of similar lengths: the same reference log-probs and value features as each
    trajectory alone (fp32), in the examples' order, for step- and token-level variants."""
    from tests.support.tiny_model import make_tiny_model
    from tests.support.toy_env import mixed_lengths
    from trainer.model import PolicyWithValue
    from trainer.ppo_round import precompute

    model = make_tiny_model(tokenizer, seed=4)
    examples = mixed_lengths(model, tokenizer)
    assert len({len(e.input_ids) for e in examples}) == 4, "the check needs trajectories of different lengths"
    wrapped = PolicyWithValue(model)
    for variant in ("steptool", "ppo_outcome"):
        one, _ = precompute(wrapped, examples, _cfg("scale-pre", variant=variant, per_device_eval_batch_size=1,
                                                    baseline="zero"))
        many, _ = precompute(wrapped, examples, _cfg("scale-pre", variant=variant, per_device_eval_batch_size=5,
                                                     baseline="zero"))
        for a, b, e in zip(one, many, examples):
            assert a.input_ids == e.input_ids == b.input_ids
            assert a.ref_logprobs == pytest.approx(b.ref_logprobs, abs=1e-5)
            assert a.old_values == pytest.approx(b.old_values, abs=1e-4)
            assert len(a.ref_logprobs) == sum(e.action_mask)


def _grads(model, tokenizer, lora: bool, checkpointing: bool):
    """Gradients of a loss on log-probs and values of two padded sequences, and how often layer 0 ran forward."""
    from tests.support.tiny_model import make_tiny_model
    from trainer.model import PolicyWithValue

    policy = make_tiny_model(tokenizer, seed=7)
    if lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        policy = get_peft_model(policy, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                   task_type="CAUSAL_LM", init_lora_weights=False))
    m = PolicyWithValue(policy, value_grad_to_trunk=True)
    if checkpointing:
        m.gradient_checkpointing_enable()
        assert m.is_gradient_checkpointing
    m.train()
    calls = []
    # a pre-hook on a submodule: transformers checkpoints the layer's forward (hooks on the layer itself run once),
    # and torch's recompute stops early, after the last tensor it needs (a post-hook on the MLP never fires)
    m.trunk.layers[0].self_attn.register_forward_pre_hook(lambda *a: calls.append(1))
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 2, 2, 2]])
    att = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])
    rows, pos = torch.tensor([0, 0, 1]), torch.tensor([3, 4, 2])
    _, v, lp, _ = m(ids, att, rows, pos)
    (lp.sum() + v[att > 0].pow(2).sum()).backward()
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}, len(calls)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_gradient_checkpointing_recomputes_the_layers_and_keeps_the_gradients(tokenizer, lora):
    plain, n_plain = _grads(None, tokenizer, lora, checkpointing=False)
    ckpt, n_ckpt = _grads(None, tokenizer, lora, checkpointing=True)
    assert n_plain == 1 and n_ckpt == 2, "checkpointing should run layer 0's attention again in the backward pass"
    assert set(plain) == set(ckpt) and plain
    if lora:
        assert all("lora_" in n or "v_head" in n for n in plain), "LoRA should train the adapters only"
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=1e-4, atol=1e-6, msg=n)


def test_train_gradient_checkpointing_reaches_the_model_through_the_trainer(tokenizer):
    """`train.gradient_checkpointing: true` in the params turns it on through the Trainer's own hook."""
    from tests.support.tiny_model import make_tiny_model
    from tests.support.toy_env import play
    from trainer.model import PolicyWithValue
    from trainer.step_ppo import StepPPOTrainer

    model = make_tiny_model(tokenizer, seed=3)
    examples, _ = play(model, tokenizer, 4, 2, 11, "steptool")
    wrapped = PolicyWithValue(model)
    trainer = StepPPOTrainer(wrapped, _cfg("scale-gc", gradient_checkpointing=True), examples,
                             pad_id=tokenizer.pad_token_id)
    trainer.train()
    assert wrapped.is_gradient_checkpointing and trainer.state.global_step == 1


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, tokenizer):
    """One `accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2` on the CPU (gloo) that
    runs the warm start, a PPO round, the FSDP2 precompute and the rounds' wait (tests/support/multiprocess.py);
    its folder, with the tiny base model the warm start starts from."""
    import shutil
    import subprocess
    import sys

    from tests.support.tiny_model import save_tiny_model

    root = tmp_path_factory.mktemp("two-processes")
    base = save_tiny_model(root / "base", tokenizer, seed=3)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    subprocess.run([accelerate, "launch", "--config_file", "configs/accelerate/ddp.yaml", "--num_processes", "2",
                    "--mixed_precision", "no", "-m", "tests.support.multiprocess", str(base), str(root / "two")],
                   cwd=REPO, env=env, check=True, timeout=400)
    return root


def _same_weights(got: dict, want: dict, what: str = "") -> None:
    """Several processes' weights against one process's: the same names, each equal to float tolerance (the
    gradient all-reduce sums in another order)."""
    assert set(got) == set(want), what
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6, msg=f"{what}{k}")


def _one_thread(fn, *args):
    """`fn` with one torch thread, as the launched processes run (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_two_processes_under_accelerate_launch_match_one(two_processes, tmp_path):
    """Each process precomputes half the round on the DDP-prepared model (gathered, so both train on the same
    advantages; each process's count is checked, so a precompute that ran every trajectory on every process
    fails here) and takes half of each global batch of 4; the trained weights equal one process's with batches
    of 4 (float tolerance: the gradient all-reduce sums in another order)."""
    import json

    from safetensors.torch import load_file

    from tests.support import ddp_train

    one, two = tmp_path / "one", two_processes / "two" / "ppo"
    _one_thread(ddp_train.main, one)
    r1, r2 = (json.loads((d / "round.json").read_text()) for d in (one, two))
    assert (r1["world"], r2["world"]) == (1, 2)
    assert (r1["shards"], r2["shards"]) == ([8], [4, 4]), "each process precomputes its half of the round"
    assert r1["steps"] == r2["steps"] == 2
    for a, b in zip(r1["ref_logprobs"], r2["ref_logprobs"], strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    for a, b in zip(r1["advantages"], r2["advantages"], strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    # each process recorded the step ratios of its half; gathered, every trajectory's, as one process saw them
    assert (r1["own_ratios"], r2["own_ratios"]) == (8, 4) and r1["ratios"].keys() == r2["ratios"].keys()
    for i, (ratio, clipped) in r1["ratios"].items():
        assert r2["ratios"][i][0] == pytest.approx(ratio, abs=1e-4) and r2["ratios"][i][1] == clipped
    w1, w2 = (load_file(d / "model" / "model.safetensors") for d in (one, two))
    start = load_file(one / "start.safetensors")
    assert set(start) >= set(w1)
    assert max(float((w1[k] - start[k]).abs().max()) for k in w1) > 1e-4, "training did not move the weights"
    _same_weights(w2, w1)


@pytest.mark.slow
def test_the_warm_start_on_two_processes_matches_one(two_processes, tmp_path):
    """As `warmstart.launcher` starts the stage: each process takes half of every step's 4 paths and the main one
    alone writes the model, which equals one process's (float tolerance). The action-only loss is scaled back by
    the number of processes, as transformers' own loss is: without that each step would be half as large
    (checked by removing it: the weights differ)."""
    from safetensors.torch import load_file

    from tests.support import ddp_warmstart

    base, two = two_processes / "base", two_processes / "two" / "warmstart"
    _one_thread(ddp_warmstart.main, base, tmp_path / "one")
    assert not [p for p in two.parent.iterdir() if p.name.startswith((".warmstart", "warmstart."))], \
        "a second writer left files"
    w1, w2, start = (load_file(d / "model.safetensors") for d in (tmp_path / "one", two, base))
    assert max(float((w1[k] - start[k]).abs().max()) for k in w1) > 1e-3, "training did not move the weights"
    _same_weights(w2, w1)


@pytest.mark.slow
def test_the_precompute_under_fsdp2_on_two_processes_equals_one(two_processes, tmp_path):
    """The policy sharded by FSDP2 as accelerate's plugin shards it (tests/support/fsdp_precompute.py): 7
    trajectories split 4 / 3, in batches of 3, so the ranks have different numbers of batches of their own and
    the stand-in pass keeps their collectives paired (without it the launch fails). The reference and old
    log-probs, the value head's fit (written into the sharded parameter, read back whole), its in-sample values
    and the crossfit baseline equal one unsharded process's; the trunk features never leave their rank (the
    ridge fits sum over ranks)."""
    import json

    from tests.support import fsdp_precompute
    from trainer.model import PolicyWithValue
    from trainer.ppo_round import precompute

    two = json.loads((two_processes / "two" / "fsdp.json").read_text())
    _, model, examples = fsdp_precompute.setup()
    one = PolicyWithValue(model)
    items, stats = precompute(one, examples, fsdp_precompute.config(str(tmp_path / "ckpt")))
    assert two["world"] == 2 and two["shards"] == [4, 3] and stats["shards"] == [7]
    assert two["local_head_rows"] == [1], "the value head was not sharded: the test would not reach DTensors"
    assert two["gathered"] == ["list"], "only per-unit lists cross ranks, not the [units, H] features"
    head = one.v_head.weight.view(-1).tolist() + one.v_head.bias.tolist()
    assert any(abs(x) > 1e-3 for x in head), "the fit left the head at zero"
    assert two["head"] == pytest.approx(head, abs=1e-5)
    for a, b, c, it in zip(two["ref_logprobs"], two["old_values"], two["baseline"], items, strict=True):
        assert a == pytest.approx(it.ref_logprobs, abs=1e-5)
        assert b == pytest.approx(it.old_values, abs=1e-4)
        assert c == pytest.approx(it.baseline, abs=1e-4)
    assert any(x != 0 for row in two["baseline"] for x in row), "crossfit gave zeros: one task only?"


@pytest.mark.slow
def test_the_other_processes_wait_for_the_main_ones_file_past_a_barriers_timeout(two_processes):
    """While the main process collects and annotates a round (3 s here), the other polls for its file and gets
    through only once it exists (`Processes.wait_for`); a barrier alone in a group whose timeout (1 s) is shorter
    than the main process's work fails on the waiting side, which is why the rounds do not use one there
    (tests/support/wait_main.py)."""
    import json

    folder = two_processes / "two" / "wait"
    written = json.loads((folder / "inputs.json").read_text())["written"]
    main, other = (json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1))
    assert other["through"] >= written > other["start"] + 2.5, "the other process went on before the file existed"
    assert other["barrier"].startswith("failed") and main["barrier"].startswith("failed")


@pytest.mark.long
def test_weights_load_in_the_dtype_they_train_in_and_a_bf16_lora_round_updates_only_fp32_weights(tokenizer, tmp_path):
    """A LoRA run under bf16 holds its frozen base in bf16 (half the memory) while the adapters and the value head
    keep fp32 master weights; a full fine-tune keeps every weight in fp32 (AdamW updates them), and fp32
    precision keeps everything fp32. One PPO round of the bf16 LoRA policy moves the adapters and the head and
    leaves the bf16 base as it was."""
    from pipeline.config import TrainConfig
    from tests.support.tiny_model import save_tiny_model
    from tests.support.toy_env import play
    from trainer.model import PolicyWithValue
    from trainer.rounds import load_policy
    from trainer.step_ppo import StepPPOTrainer

    start = save_tiny_model(tmp_path / "start", tokenizer, seed=6)

    def dtypes(model, trains: bool) -> set:
        return {p.dtype for p in model.parameters() if p.requires_grad == trains}

    lora = load_policy(start, TrainConfig(lora=True, lora_r=4, precision="bf16"), "cpu")
    assert dtypes(lora, False) == {torch.bfloat16} and dtypes(lora, True) == {torch.float32}
    full = load_policy(start, TrainConfig(lora=False, precision="bf16"), "cpu")
    assert dtypes(full, True) == {torch.float32} and dtypes(full, False) == set()
    lora32 = load_policy(start, TrainConfig(lora=True, lora_r=4, precision="fp32"), "cpu")
    assert dtypes(lora32, False) == dtypes(lora32, True) == {torch.float32}

    policy = PolicyWithValue(lora)
    examples, _ = play(policy.policy, tokenizer, 4, 2, 3, "steptool")
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    StepPPOTrainer(policy, _cfg("scale-bf16-lora", bf16=True, learning_rate=1e-2), examples,
                   pad_id=tokenizer.pad_token_id).train()
    moved = {n for n, p in policy.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved and all("lora_" in n or n.startswith("v_head.") for n in moved), moved
    assert all(torch.isfinite(p).all() for p in policy.parameters())
    assert {p.dtype for n, p in policy.named_parameters() if n in moved} == {torch.float32}


DEEPSPEED_MISSING = None if importlib.util.find_spec("deepspeed") else (
    "DeepSpeed is not installed (optional: .venv/bin/pip install --no-build-isolation 'deepspeed>=0.17,<0.20'; "
    "configs/accelerate/README.md)")


@pytest.fixture(scope="module", params=["zero2", "zero3"])
def deepspeed_run(request, tmp_path_factory, tokenizer):
    """One `accelerate launch --config_file configs/accelerate/<zero2|zero3>.yaml --num_processes 2` on the CPU
    (DeepSpeed's CPU accelerator over gloo) running tests/support/deepspeed_round.py: a PPO round, the warm start,
    and the round checkpointed every step then resumed from its first checkpoint; its folder and the tiny base."""
    import shutil
    import subprocess
    import sys

    from tests.support.tiny_model import save_tiny_model

    root = tmp_path_factory.mktemp(request.param)
    base = save_tiny_model(root / "base", tokenizer, seed=3)
    path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    subprocess.run([accelerate, "launch", "--config_file", f"configs/accelerate/{request.param}.yaml",
                    "--num_processes", "2", "--mixed_precision", "no", "-m", "tests.support.deepspeed_round",
                    str(base), str(root / "run")], cwd=REPO, env=env, check=True, timeout=400)
    return request.param, root


@pytest.mark.slow
@pytest.mark.skipif(DEEPSPEED_MISSING is not None, reason=str(DEEPSPEED_MISSING))
def test_deepspeed_zero2_and_zero3_on_two_processes_match_one(deepspeed_run, tmp_path):
    """Under DeepSpeed ZeRO-2 (optimizer state and gradients sharded) and ZeRO-3 (the weights too, the value head
    included), each process precomputes half the round on the engine, the value head's fit reaches the
    optimizer's fp32 master copy (else the first step would write the old head back), and the trained policy, saved
    from the gathered weights with the tied embedding once, equals one process's (float tolerance); the warm start
    too. A run resumed from the first of two checkpoints (DeepSpeed's own, loaded by the engine) trains only the
    second step and ends with the uninterrupted run's weights, head and per-step ratios. Under ZeRO-2 a LoRA round
    (the engine the README gives LoRA) saves the merged policy and its adapter as one process does."""
    import json

    from safetensors.torch import load_file

    from tests.support import ddp_train, ddp_warmstart

    stage, root = deepspeed_run
    run = root / "run"

    def read(d: Path):
        return (json.loads((d / "round.json").read_text()), load_file(d / "model" / "model.safetensors"),
                torch.load(d / "model" / "value_head.pt"))

    _one_thread(ddp_train.main, tmp_path / "one")
    (r1, w1, h1), (r2, w2, h2) = read(tmp_path / "one"), read(run / "ppo")
    assert (r2["world"], r2["zero_stage"], r2["head_partitioned"]) == (2, int(stage[-1]), stage == "zero3")
    assert (r1["shards"], r2["shards"]) == ([8], [4, 4]) and r1["steps"] == r2["steps"] == 2
    for a, b in zip(r1["advantages"], r2["advantages"], strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    assert "lm_head.weight" not in w2
    _same_weights(w2, w1)
    _same_weights(h2, h1, "value head ")
    assert r2["ratios"].keys() == r1["ratios"].keys()

    (rw, ww, hw), (rr, wr, hr) = read(run / "whole"), read(run / "resumed")
    assert (rw["ran"], rr["ran"]) == ([1, 2], [2]), "the resumed run did not start from its checkpoint"
    assert set(ww) == set(wr) and all(torch.equal(ww[k], wr[k]) for k in ww)
    assert all(torch.equal(hw[k], hr[k]) for k in hw) and rr["ratios"] == rw["ratios"]

    if stage == "zero2":  # LoRA (ZeRO-3 refuses it at save): the merged policy and the adapter equal one process's
        _one_thread(lambda: ddp_train.main(tmp_path / "one-lora", lora=True))
        (_, w1, h1), (_, w2, h2) = read(tmp_path / "one-lora"), read(run / "lora")
        a1, a2 = (load_file(d / "model" / "lora_adapter" / "adapter_model.safetensors")
                  for d in (tmp_path / "one-lora", run / "lora"))
        assert a1
        _same_weights(w2, w1)
        _same_weights(a2, a1, "adapter ")
        _same_weights(h2, h1, "value head ")

    _one_thread(ddp_warmstart.main, root / "base", tmp_path / "warm")
    s1, s2 = (load_file(d / "model.safetensors") for d in (tmp_path / "warm", run / "warmstart"))
    _same_weights(s2, s1)
