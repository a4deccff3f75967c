"""Stage `train` (one per variant): step-grained PPO of the warm-started policy on the collected
trajectories with the variant's rewards -> data/models/<variant>, metrics, a training log for plots and the
round's table (per step: reward, baseline, advantage as trained) in data/rounds/<variant>.parquet.

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

from pipeline import layout, variants
from pipeline.agent.prompts import ChatRenderer
from pipeline.config import Params, to_dict
from pipeline.devices import resolve_device, resolve_precision
from pipeline.errors import SteptoolError
from pipeline.fsutil import atomic_path, write_json
from pipeline.runner import run_stage
from pipeline.schema import ADVANTAGES, ROUND_STEPS, STEPS, TOKENS, read_table, write_table

ARGS = (("variant", dict(nargs="?", default=variants.DEFAULT, choices=list(variants.NAMES),
                         help="training variant: " + variants.describe())),)
LOGGED = ("policy_loss", "value_loss", "approx_kl", "clipfrac", "explained_variance", "reward_mean",
          "advantage_mean", "kl_ref", "kl_ref_token", "entropy", "tokens_per_s", "loss", "grad_norm", "learning_rate")


def _run_key(params: Params, variant: str, files: list[Path]) -> str:
    h = hashlib.sha256(json.dumps([variant, to_dict(params.train), params.agent.prompt_format]).encode())
    for f in files:
        h.update(f.name.encode())
        h.update(str(f.stat().st_size).encode())
        h.update(f.read_bytes()[:1 << 20])
    return h.hexdigest()[:16]


def run(params: Params, root: Path = Path("."), variant: str = variants.DEFAULT) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.config import StepPPOConfig
    from trainer.data import examples_from_tables
    from trainer.model import PolicyWithValue
    from trainer.ppo_round import round_table
    from trainer.step_ppo import StepPPOTrainer

    t = params.train
    sft, trajectories, adv_file = root / layout.SFT_MODEL, root / layout.TRAJECTORIES, root / layout.advantages_file(variant)
    steps = pl.from_arrow(read_table(layout.table(trajectories, "steps"), STEPS))
    tokens = pl.from_arrow(read_table(layout.table(trajectories, "tokens"), TOKENS))
    rewards = pl.from_arrow(read_table(adv_file, ADVANTAGES))
    tok = AutoTokenizer.from_pretrained(sft)
    examples, stats = examples_from_tables(steps, tokens, rewards, ChatRenderer(tok, params.agent.prompt_format),
                                           t.max_length)
    if not examples:
        raise SteptoolError(f"{adv_file}: no trajectory to train on ({stats['trajectories']} read, "
                            f"{stats['too_long']} longer than train.max_length = {t.max_length} even with every "
                            f"observation shortened)")
    device = resolve_device(params.agent.device)
    model = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32)
    if t.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=t.lora_r, lora_alpha=2 * t.lora_r, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    wrapped = PolicyWithValue(model, value_grad_to_trunk=t.value_grad_to_trunk)
    ckpt = root / layout.CHECKPOINTS / variant
    key = _run_key(params, variant, [sft / "model.safetensors", layout.table(trajectories, "tokens"), adv_file])
    key_file = ckpt / "run_key.txt"
    if ckpt.exists() and (not key_file.exists() or key_file.read_text() != key):
        shutil.rmtree(ckpt)  # checkpoints of other inputs: start over
    ckpt.mkdir(parents=True, exist_ok=True)
    key_file.write_text(key)
    resume = any(ckpt.glob("checkpoint-*/trainer_state.json"))
    # the section as is (its keys are TrainingArguments' names), plus what the stage decides
    cfg = StepPPOConfig(
        **to_dict(t), variant=variant, output_dir=str(ckpt), report_to=[], use_cpu=device == "cpu",
        bf16=resolve_precision(t.precision, device) == "bf16", lr_scheduler_type="constant", warmup_steps=0,
        data_seed=t.seed, save_strategy="steps", logging_steps=1, disable_tqdm=False, dataloader_num_workers=0,
        train_sampling_strategy="group_by_length")  # similar lengths: less padding
    trainer = StepPPOTrainer(wrapped, cfg, examples, pad_id=tok.pad_token_id)
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    with atomic_path(root / layout.model_dir(variant)) as tmp:
        tmp.mkdir()
        wrapped.save_policy(tmp, tok)
    history = [{k: h[k] for k in ("step", *LOGGED) if k in h} for h in trainer.state.log_history if "policy_loss" in h]
    write_json(root / layout.train_plot(variant), history)
    write_table(round_table(examples, trainer.train_dataset.items, variant), root / layout.round_table(variant),
                ROUND_STEPS)
    last = history[-1] if history else {}
    metrics = {"variant": variant, **stats, "examples": len(examples), "optimizer_steps": trainer.state.global_step,
               "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 1), "resumed": resume,
               **{k: round(v, 6) if isinstance(v, float) else v for k, v in trainer.round_stats.items()},
               **{f"final_{k}": last[k] for k in LOGGED if k in last}}
    if history:
        for k in ("reward_mean", "approx_kl", "clipfrac", "explained_variance", "kl_ref"):
            vals = [h[k] for h in history if k in h and h[k] == h[k]]
            if vals:
                metrics[f"mean_{k}"] = round(sum(vals) / len(vals), 6)
    write_json(root / layout.metrics_file("train", variant), metrics)
    shutil.rmtree(ckpt, ignore_errors=True)  # done: the model is in data/models/<variant>
    return (f"train ({variant}): {len(examples)} trajectories, {trainer.state.global_step} optimizer steps"
            f"{' (resumed)' if resume else ''}, {metrics['train_runtime_s']} s -> {layout.model_dir(variant)}")


def main(argv: list[str] | None = None) -> int:
    return run_stage("train", __doc__, run, argv, ARGS)


if __name__ == "__main__":
    raise SystemExit(main())
