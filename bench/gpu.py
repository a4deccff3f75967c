"""The GPU check (docs/architecture.md, "Scaling out"): what one CUDA GPU does with this trainer and policy, in under 10 minutes,
with only torch, transformers, accelerate and peft installed (no weights: models are randomly initialised
from the configs of real architectures, token ids are random; no tokenizer, no polars, no trl).

    python -m bench.gpu [--out DIR] [--quick]        (--quick: the tiny model only, also runs on a CPU)

1. placement: a PPO round's precompute runs on the GPU, the model and every input of its forward passes on
   it (recorded inside the forward), none before the Trainer placed the model (tests/support/device_check.py);
2. agreement: the tiny model's action-token log-probs on the CPU (fp32) against the GPU in fp32 and under bf16
   autocast (max |difference|);
3. training: tokens/s and peak memory of one PPO round (StepPPOTrainer, 2048-token trajectories, 2 per
   batch) for a 0.5B architecture (Qwen2.5-0.5B's config) with full fine-tuning and LoRA, with and without
   gradient checkpointing, and a 7B architecture (Qwen2.5-7B's config) with LoRA on bf16 weights, with and
   without gradient checkpointing (full fine-tuning of 7B with fp32 AdamW state needs ~120 GB: not run);
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


def train_round(arch: dict, name: str, device: str, tmp: str, *, lora: bool, checkpointing: bool,
                weights=torch.float32, n: int = 8, length: int = 2048) -> dict:
    from trainer.model import PolicyWithValue
    from trainer.step_ppo import StepPPOTrainer

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = _model(arch, device, weights)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    wrapped = PolicyWithValue(model)
    cfg = _cfg(tmp, bf16=device != "cpu", gradient_checkpointing=checkpointing)
    examples = _examples(n, length, arch["vocab_size"])
    trainer = StepPPOTrainer(wrapped, cfg, examples)
    _sync()
    t0 = time.perf_counter()
    trainer.train()
    _sync()
    wall = time.perf_counter() - t0
    speeds = [h["tokens_per_s"] for h in trainer.state.log_history if "tokens_per_s" in h]
    row = {"model": name, "lora": lora, "gradient_checkpointing": checkpointing, "trajectories": n,
           "tokens_per_trajectory": length, "round_s": round(wall, 2),
           "train_tokens_per_s": round(sum(speeds[1:]) / max(1, len(speeds) - 1), 1) if len(speeds) > 1 else None,
           "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None}
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
            report["training"] = []
            for name, arch, lora, ckpt, weights in (
                    ("qwen2.5-0.5b", QWEN05, False, False, torch.float32),
                    ("qwen2.5-0.5b", QWEN05, False, True, torch.float32),
                    ("qwen2.5-0.5b", QWEN05, True, False, torch.float32),
                    ("qwen2.5-0.5b", QWEN05, True, True, torch.float32),
                    ("qwen2.5-7b", QWEN7, True, False, torch.bfloat16),
                    ("qwen2.5-7b", QWEN7, True, True, torch.bfloat16)):
                step("_row", train_round, arch, name, device, tmp, lora=lora, checkpointing=ckpt, weights=weights)
                report["training"].append(report.pop("_row"))
            step("precompute_0.5b", precompute_speed, QWEN05, device)
            step("generation_0.5b", generation, QWEN05, device)
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    (out / "gpu.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0 if report.get("placement", {}).get("all_on_device") else 1


if __name__ == "__main__":
    raise SystemExit(main())
