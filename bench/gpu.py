"""The GPU check (docs/architecture.md, "Scaling out"): what one CUDA GPU does with this trainer and policy, in under 10 minutes,
with only torch, transformers, accelerate and peft installed (no weights: models are randomly initialised
from the configs of real architectures, token ids are random; no tokenizer, no polars, no trl).

    python -m bench.gpu [--out DIR] [--quick]        (--quick: the tiny model only, also runs on a CPU)

1. placement: a PPO round's precompute runs on the GPU, the model and every input of its forward passes on
   it (recorded inside the forward), none before the Trainer placed the model (tests/support/device_check.py);
2. agreement: the tiny model's action-token log-probs on the CPU (fp32) against the GPU in fp32 and under bf16
   autocast (max |difference|);
3. training: tokens/s and peak memory of one PPO round (StepPPOTrainer) in the train stage's own configuration
   of profiles/gpu.yaml (over params.yaml: its max_length, per-device batch, LoRA rank, gradient checkpointing,
   bf16, weights loaded as the stage loads them: pipeline.devices.training_dtype) for a 7B architecture
   (Qwen2.5-7B's config, LoRA as the profile) and a 0.5B one (Qwen2.5-0.5B's config, LoRA and full
   fine-tuning), each beside `steptool plan`'s estimate for the same shape (pipeline/plan.py; the plan adds
   10% for the allocator). Full fine-tuning of the 7B needs ~160 GB (the plan): not run;
4. the precompute alone: trajectories/s on the GPU for the 0.5B architecture;
5. generation: HFPolicy batched sampling tokens/s for the 0.5B architecture at batch 1, 16 and 64.

Prints one table and writes gpu.json (to --out, default $OUT or .) with every figure and the versions.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

QWEN05 = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
              num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
              tie_word_embeddings=True, rms_norm_eps=1e-6)
QWEN7 = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
             num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, rope_theta=1e6,
             tie_word_embeddings=False, rms_norm_eps=1e-6)
TINY = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True)


def _model(arch: dict, device: str, dtype=torch.float32, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(Qwen2Config(**arch, bos_token_id=1, eos_token_id=2, pad_token_id=2))
    return model.to(dtype)


def _examples(n: int, length: int, vocab: int, seed: int = 0):
    """Trajectories of random ids: 4 steps of `length` / 8 action tokens each, after a prompt."""
    from trainer.data import Example

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        mask, bounds = [0] * length, []
        step = length // 8
        for k in range(4):
            a = length // 2 + k * step - step
            mask[a:a + step // 2] = [1] * (step // 2)
            bounds.append((a, a + step // 2))
        out.append(Example(f"t{i}", ids, mask, bounds, [0.2, 0.0, 0.5, 1.0], group=f"task{i // 2}"))
    return out


def _cfg(out: str, **kw):
    from trainer.config import StepPPOConfig

    from pipeline import variants

    base = dict(output_dir=out, report_to=[], variant=variants.DEFAULT, num_train_epochs=1, per_device_train_batch_size=2,
                per_device_eval_batch_size=4, gradient_accumulation_steps=1, learning_rate=1e-6, save_strategy="no",
                seed=0, disable_tqdm=True, logging_steps=1, lr_scheduler_type="constant", use_cpu=False)
    base.update(kw)
    return StepPPOConfig(**base)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def placement(device: str, tmp: str) -> dict:
    from tests.support.device_check import record_forward_devices
    from trainer.model import PolicyWithValue
    from trainer.step_ppo import StepPPOTrainer

    model = _model(TINY, "cpu")  # built on the CPU: the Trainer must move it
    wrapped = PolicyWithValue(model)
    seen = record_forward_devices(wrapped)
    trainer = StepPPOTrainer(wrapped, _cfg(tmp, use_cpu=device == "cpu"), _examples(4, 256, TINY["vocab_size"]))
    before = len(seen)
    trainer.train()
    pre = [s for s in seen if not s["training"]]
    want = torch.device(trainer.args.device).type
    ok = before == 0 and bool(pre) and all(s["params"] == {want} and s["inputs"] == {want} for s in seen)
    return {"trainer_device": str(trainer.args.device), "forwards_before_placement": before,
            "precompute_forwards": len(pre), "all_on_device": ok,
            "devices_seen": sorted({d for s in seen for d in s["params"] | s["inputs"]})}


def agreement(device: str) -> dict:
    from trainer.model import PolicyWithValue

    cpu = PolicyWithValue(_model(TINY, "cpu")).eval()
    ex = _examples(4, 512, TINY["vocab_size"], seed=3)
    ids = torch.tensor([e.input_ids for e in ex])
    att = torch.ones_like(ids)
    rows, pos = torch.nonzero(torch.tensor([e.action_mask for e in ex]), as_tuple=True)
    with torch.no_grad():
        ref = cpu(ids, att, rows, pos)[2]
        gpu = PolicyWithValue(_model(TINY, "cpu")).to(device).eval()
        gpu.load_state_dict(cpu.state_dict())
        args = [t.to(device) for t in (ids, att, rows, pos)]
        fp32 = gpu(*args)[2].cpu()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            bf16 = gpu(*args)[2].float().cpu()
    return {"tokens": int(len(ref)), "max_abs_fp32": float((fp32 - ref).abs().max()),
            "max_abs_bf16_autocast": float((bf16 - ref).abs().max()), "mean_abs_bf16_autocast":
            float((bf16 - ref).abs().mean())}


def stage_train(repo: Path = Path(__file__).resolve().parents[1]) -> dict:
    """The train section profiles/gpu.yaml gives the train stage: params.yaml's, with the profile's keys over it
    (read as YAML: the device machine has no polars for the project's own params loader)."""
    import yaml

    train = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))["train"]
    train.update(yaml.safe_load((repo / "profiles" / "gpu.yaml").read_text(encoding="utf-8")).get("train") or {})
    return train


def train_round(arch: dict, name: str, device: str, tmp: str, *, lora: bool, stage: dict, micro_batches: int = 3) -> dict:
    """One PPO round of `micro_batches` × the stage's per-device batch of max_length-token trajectories, one
    optimizer step per micro-batch, with the stage's settings; tokens/s, peak memory and the plan's estimate."""
    from pipeline.devices import training_dtype
    from pipeline.plan import Shape, in_gb, training_memory
    from trainer.model import PolicyWithValue, with_lora
    from trainer.step_ppo import StepPPOTrainer

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    bf16 = device != "cpu"
    batch, length, ckpt = int(stage["per_device_train_batch_size"]), int(stage["max_length"]), \
        bool(stage["gradient_checkpointing"])
    model = _model(arch, device, training_dtype("bf16" if bf16 else "fp32", device, trains=not lora))
    if lora:
        model = with_lora(model, int(stage["lora_r"]))  # as the train stage (trainer.rounds.load_policy)
    wrapped = PolicyWithValue(model)
    cfg = _cfg(tmp, bf16=bf16, gradient_checkpointing=ckpt, per_device_train_batch_size=batch,
               per_device_eval_batch_size=int(stage["per_device_eval_batch_size"]),
               logits_chunk=int(stage["logits_chunk"]))
    n = micro_batches * batch
    plan = in_gb(training_memory(Shape.from_config({**arch, "model_type": "qwen2"}), lora=lora,
                                 lora_r=int(stage["lora_r"]), batch=batch, max_length=length, checkpointing=ckpt,
                                 bf16=bf16, engine_name="single", processes=1,
                                 logits_chunk=int(stage["logits_chunk"]), value_head=True))
    examples = _examples(n, length, arch["vocab_size"])
    trainer = StepPPOTrainer(wrapped, cfg, examples)
    _sync()
    t0 = time.perf_counter()
    trainer.train()
    _sync()
    wall = time.perf_counter() - t0
    speeds = [h["tokens_per_s"] for h in trainer.state.log_history if "tokens_per_s" in h]
    peak = torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None
    row = {"model": name, "lora": lora, "gradient_checkpointing": ckpt, "batch": batch, "trajectories": n,
           "tokens_per_trajectory": length, "round_s": round(wall, 2),
           "train_tokens_per_s": round(sum(speeds[1:]) / max(1, len(speeds) - 1), 1) if len(speeds) > 1 else None,
           "peak_gb": round(peak, 2) if peak is not None else None, "plan_gb": plan["total"],
           "plan_parts_gb": {k: v for k, v in plan.items() if k not in ("total", "trainable_m")},
           "peak_over_plan": round(peak / plan["total"], 3) if peak is not None else None}
    del trainer, wrapped, model
    return row


def precompute_speed(arch: dict, device: str, n: int = 32, length: int = 2048) -> dict:
    from trainer.model import PolicyWithValue
    from trainer.ppo_round import precompute

    model = PolicyWithValue(_model(arch, device)).to(device)
    examples = _examples(n, length, arch["vocab_size"])
    cfg = _cfg(tempfile.mkdtemp(), bf16=device != "cpu", per_device_eval_batch_size=8, baseline="zero")
    precompute(model, examples[:8], cfg)  # warm-up
    _sync()
    t0 = time.perf_counter()
    precompute(model, examples, cfg)
    _sync()
    dt = time.perf_counter() - t0
    return {"trajectories": n, "tokens_per_trajectory": length, "seconds": round(dt, 2),
            "trajectories_per_s": round(n / dt, 2), "tokens_per_s": round(n * length / dt, 1)}


class _IdTokenizer:
    """What HFPolicy needs of a tokenizer, for random ids: no text (a real tokenizer is not installed there)."""

    eos_token_id = 2
    pad_token_id = 2

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(map(str, ids))


def generation(arch: dict, device: str, batches=(1, 16, 64), new_tokens: int = 128, prompt: int = 512) -> list[dict]:
    from pipeline.agent.backends import HFPolicy, SamplingConfig

    model = _model(arch, device, torch.bfloat16 if device != "cpu" else torch.float32)
    model.generation_config.eos_token_id = None
    rows = []
    for b in batches:
        policy = HFPolicy(model, _IdTokenizer(), SamplingConfig(max_new_tokens=new_tokens, temperature=1.0),
                          batch_size=b)
        policy.eos_id = -1  # random weights: never stop early, every row writes new_tokens
        g = torch.Generator().manual_seed(b)
        prompts = [torch.randint(3, arch["vocab_size"], (prompt,), generator=g).tolist() for _ in range(b)]
        policy.generate(prompts[:1], [0])  # warm-up
        _sync()
        t0 = time.perf_counter()
        out = policy.generate(prompts, list(range(b)))
        _sync()
        dt = time.perf_counter() - t0
        tokens = sum(len(o.token_ids) for o in out)
        rows.append({"batch": b, "prompt_tokens": prompt, "new_tokens": tokens, "seconds": round(dt, 2),
                     "tokens_per_s": round(tokens / dt, 1)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for gpu.json (default: $OUT or .)")
    ap.add_argument("--quick", action="store_true", help="the tiny model only (placement, agreement): any device")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t_start = time.perf_counter()
    import accelerate
    import transformers

    report: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "accelerate": accelerate.__version__, "python": sys.version.split()[0]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def step(key, fn, *a, **kw):
        t0 = time.perf_counter()
        try:
            report[key] = fn(*a, **kw)
        except Exception as e:  # one failed measurement must not cost the others (the device time is scarce)
            report[key] = {"error": f"{type(e).__name__}: {e}"[:400]}
        print(f"[{time.perf_counter() - t_start:6.1f}s] {key} ({time.perf_counter() - t0:.1f}s): "
              f"{json.dumps(report[key])[:300]}", flush=True)
        (out / "gpu.json").write_text(json.dumps(report, indent=2))

    with tempfile.TemporaryDirectory() as tmp:
        step("placement", placement, device, tmp)
        step("agreement", agreement, device)
        if not args.quick and device == "cuda":
            report["training"], stage = [], stage_train()
            report["stage"] = {k: stage[k] for k in ("per_device_train_batch_size", "max_length", "lora_r",
                                                     "gradient_checkpointing", "logits_chunk")}
            for name, arch, lora in (("qwen2.5-7b", QWEN7, True), ("qwen2.5-0.5b", QWEN05, True),
                                     ("qwen2.5-0.5b", QWEN05, False)):
                step("_row", train_round, arch, name, device, tmp, lora=lora, stage=stage)
                report["training"].append(report.pop("_row"))
            step("precompute_0.5b", precompute_speed, QWEN05, device)
            step("generation_0.5b", generation, QWEN05, device)
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    (out / "gpu.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0 if report.get("placement", {}).get("all_on_device") else 1


if __name__ == "__main__":
    raise SystemExit(main())
