"""Trainer throughput, in one run on this machine:

1. one PPO round of `StepPPOTrainer` (the reference/old-log-prob pass included) against the plain baseline
   on the same trajectories and batches: a bare forward + backward + optimizer step of the same model
   (loss on action tokens from full logits) plus a reference forward per batch. Printed as the ratio
   baseline time / our time (target >= 0.85);
2. the share of padding tokens per batch with length-grouped batching (target <= 15%) and without;
3. peak memory (CUDA allocator peak on a GPU, the process's max RSS on a CPU).

Uses data/models/sft and data/trajectories when they exist (BENCH_TRAJ of them, default 8), else the toy
environment with a tiny model.
"""
from __future__ import annotations

import os
import resource
import tempfile
import time

import polars as pl
import torch

from pipeline import layout, variants
from pipeline.agent.prompts import ChatRenderer
from pipeline.config import load_params
from pipeline.rewards import PAPER, reward_table
from trainer.config import StepPPOConfig
from trainer.data import examples_from_tables
from trainer.model import PolicyWithValue
from trainer.step_ppo import StepPPOTrainer, collate


def _real(n: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.annotate.oracle import oracle_label  # noqa: F401  (annotations come from data/annotated)

    tok = AutoTokenizer.from_pretrained(layout.SFT_MODEL)
    steps = pl.read_parquet(layout.table(layout.trajectories_dir(0), "steps"))
    tokens = pl.read_parquet(layout.table(layout.trajectories_dir(0), "tokens"))
    keep = steps["traj_id"].unique(maintain_order=True).head(n)
    annotated = pl.read_parquet(layout.table(layout.annotated_dir(0), "steps")).filter(pl.col("traj_id").is_in(keep))
    rewards = reward_table(annotated, PAPER)
    params = load_params("params.yaml")
    ex, _ = examples_from_tables(steps.filter(pl.col("traj_id").is_in(keep)), tokens, rewards,
                                 ChatRenderer(tok, params.agent.prompt_format), params.train.max_length)
    return AutoModelForCausalLM.from_pretrained(layout.SFT_MODEL, dtype=torch.float32), tok, ex, str(layout.SFT_MODEL)


def _toy(n: int):
    from pipeline.models import SMOLLM2, load_tokenizer
    from tests.support.tiny_model import make_tiny_model
    from tests.support.toy_env import play

    tok = load_tokenizer(SMOLLM2)
    model = make_tiny_model(tok, num_hidden_layers=4, hidden_size=256, intermediate_size=512)
    ex, _ = play(model, tok, n, 6, 0, variants.DEFAULT)
    return model, tok, ex, "tiny toy model"


def _peak_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    n = int(os.environ.get("BENCH_TRAJ", "8"))
    have_real = (layout.SFT_MODEL / "config.json").exists() and layout.table(layout.annotated_dir(0), "steps").exists()
    model, tok, examples, what = (_real if have_real else _toy)(n)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    bs = 2
    with tempfile.TemporaryDirectory() as tmp:
        cfg = StepPPOConfig(output_dir=tmp, report_to=[], use_cpu=device.type == "cpu", num_train_epochs=1,
                            per_device_train_batch_size=bs, gradient_accumulation_steps=1, learning_rate=1e-6, save_strategy="no", seed=0,
                            disable_tqdm=True, logging_steps=1000, train_sampling_strategy="group_by_length")
        wrapped = PolicyWithValue(model).to(device)
        t0 = time.perf_counter()
        trainer = StepPPOTrainer(wrapped, cfg, examples, pad_id=tok.pad_token_id)
        trainer.train()
        ours = time.perf_counter() - t0
        batches = list(trainer.get_train_dataloader())
    peak = _peak_mb(device)
    pad_grouped = 1 - sum(float(b["attention_mask"].sum()) for b in batches) / sum(b["attention_mask"].numel() for b in batches)
    plain = [collate(trainer.train_dataset.items[i:i + bs], tok.pad_token_id) for i in range(0, len(examples), bs)]
    pad_plain = 1 - sum(float(b["attention_mask"].sum()) for b in plain) / sum(b["attention_mask"].numel() for b in plain)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    model.train()
    t0 = time.perf_counter()
    for b in batches:
        ids, att, am = b["input_ids"].to(device), b["attention_mask"].to(device), b["action_mask"].to(device)
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
        target = ids[:, 1:].masked_fill(am[:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            model(input_ids=ids, attention_mask=att)  # the reference forward
    base = time.perf_counter() - t0
    tokens = sum(len(e.input_ids) for e in examples)
    print(f"trainer ({what}, {len(examples)} trajectories, {tokens} tokens, batch {bs}, {device.type}): one PPO round "
          f"{ours:.1f} s, baseline fwd+bwd+ref {base:.1f} s, ratio {base / ours:.2f} (target >= 0.85)")
    print(f"trainer: padding share {pad_grouped:.1%} with length-grouped batches, {pad_plain:.1%} without "
          f"(target <= 15%); peak memory {peak:.0f} MiB")


if __name__ == "__main__":
    main()
