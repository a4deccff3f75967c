"""Stage `train` (one per variant): step-grained PPO of the warm-started policy on the collected
trajectories with the variant's rewards -> data/models/<variant>, metrics and a training log for plots.

Resumable: checkpoints go to data/checkpoints/<variant> every `train.save_steps` optimizer steps; a
rerun with the same inputs resumes from the last one (optimizer, scheduler and RNG state included) and
ends with the weights an uninterrupted run would have.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import polars as pl

from pipeline.agent.prompts import ChatRenderer
from pipeline.config import Params, to_dict
from pipeline.devices import resolve_device, resolve_precision
from pipeline.fsutil import atomic_path, write_json
from pipeline.rewards import VARIANTS
from pipeline.schema import ADVANTAGES, STEPS, TOKENS, read_table

SFT = Path("data/models/sft")
TRAJ = Path("data/trajectories")
ADV = Path("data/advantages")
CKPT = Path("data/checkpoints")
MODELS = Path("data/models")
METRICS = Path("data/metrics/train")
PLOTS = Path("data/plots/train")
LOGGED = ("policy_loss", "value_loss", "approx_kl", "clipfrac", "explained_variance", "reward_mean",
          "advantage_mean", "kl_ref", "kl_ref_token", "entropy", "tokens_per_s", "loss", "grad_norm", "learning_rate")


def _run_key(params: Params, variant: str, files: list[Path]) -> str:
    h = hashlib.sha256(json.dumps([variant, to_dict(params.train), params.agent.prompt_format]).encode())
    for f in files:
        h.update(f.name.encode())
        h.update(str(f.stat().st_size).encode())
        h.update(f.read_bytes()[:1 << 20])
    return h.hexdigest()[:16]


def run(params: Params, root: Path = Path("."), variant: str = "steptool") -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.config import StepPPOConfig
    from trainer.data import examples_from_tables
    from trainer.model import PolicyWithValue
    from trainer.step_ppo import StepPPOTrainer

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (one of {', '.join(VARIANTS)})")
    t = params.train
    steps = pl.from_arrow(read_table(root / TRAJ / "steps.parquet", STEPS))
    tokens = pl.from_arrow(read_table(root / TRAJ / "tokens.parquet", TOKENS))
    rewards = pl.from_arrow(read_table(root / ADV / f"{variant}.parquet", ADVANTAGES))
    tok = AutoTokenizer.from_pretrained(root / SFT)
    examples, stats = examples_from_tables(steps, tokens, rewards, ChatRenderer(tok, params.agent.prompt_format),
                                           t.max_length)
    if not examples:
        raise ValueError(f"no trajectory to train on: {stats}")
    device = resolve_device(params.agent.device)
    model = AutoModelForCausalLM.from_pretrained(root / SFT, dtype=torch.float32)
    if t.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=t.lora_r, lora_alpha=2 * t.lora_r, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    wrapped = PolicyWithValue(model, value_grad_to_trunk=t.value_grad_to_trunk)
    ckpt = root / CKPT / variant
    key = _run_key(params, variant, [root / SFT / "model.safetensors", root / TRAJ / "tokens.parquet",
                                     root / ADV / f"{variant}.parquet"])
    key_file = ckpt / "run_key.txt"
    if ckpt.exists() and (not key_file.exists() or key_file.read_text() != key):
        shutil.rmtree(ckpt)  # checkpoints of other inputs: start over
    ckpt.mkdir(parents=True, exist_ok=True)
    key_file.write_text(key)
    resume = any(ckpt.glob("checkpoint-*/trainer_state.json"))
    cfg = StepPPOConfig(
        output_dir=str(ckpt), report_to=[], use_cpu=device == "cpu", bf16=resolve_precision(t.precision, device) == "bf16",
        variant=variant, gamma=t.gamma, lam=t.lam,
        cliprange=t.cliprange, cliprange_value=t.cliprange_value, vf_coef=t.vf_coef, kl_coef=t.kl_coef,
        kl_estimator=t.kl_estimator, entropy_coef=t.entropy_coef, num_train_epochs=t.ppo_epochs,
        per_device_train_batch_size=t.batch_size, gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate, lr_scheduler_type="constant", warmup_steps=0, seed=t.seed, data_seed=t.seed,
        old_logprobs=t.old_logprobs, value_init=t.value_init, max_length=t.max_length, lora=t.lora, lora_r=t.lora_r,
        save_strategy="steps", save_steps=t.save_steps, logging_steps=1, disable_tqdm=False,
        dataloader_num_workers=0, train_sampling_strategy="group_by_length")  # similar lengths: less padding
    trainer = StepPPOTrainer(wrapped, cfg, examples, pad_id=tok.pad_token_id)
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    with atomic_path(root / MODELS / variant) as tmp:
        tmp.mkdir()
        wrapped.save_policy(tmp, tok)
    history = [{k: h[k] for k in ("step", *LOGGED) if k in h} for h in trainer.state.log_history if "policy_loss" in h]
    write_json(root / PLOTS / f"{variant}.json", history)
    last = history[-1] if history else {}
    metrics = {"variant": variant, **stats, "examples": len(examples), "optimizer_steps": trainer.state.global_step,
               "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 1), "resumed": resume,
               **{f"final_{k}": last[k] for k in LOGGED if k in last}}
    if history:
        for k in ("reward_mean", "approx_kl", "clipfrac", "explained_variance", "kl_ref"):
            vals = [h[k] for h in history if k in h and h[k] == h[k]]
            if vals:
                metrics[f"mean_{k}"] = round(sum(vals) / len(vals), 6)
    write_json(root / METRICS / f"{variant}.json", metrics)
    shutil.rmtree(ckpt, ignore_errors=True)  # done: the model is in data/models/<variant>
    return (f"train ({variant}): {len(examples)} trajectories, {trainer.state.global_step} optimizer steps"
            f"{' (resumed)' if resume else ''}, {metrics['train_runtime_s']} s -> {MODELS / variant}")


def main(argv: list[str] | None = None) -> int:
    from pipeline.cli import run_stage

    return run_stage("train", __doc__, run, argv, positional=(
        ("variant", dict(nargs="?", default="steptool", choices=list(VARIANTS), help="training variant")),))

if __name__ == "__main__":
    raise SystemExit(main())
