"""Agent throughput on this machine, one run:

1. batched vs unbatched generation on the same prompts (real task prompts, the pipeline's model):
   generated tokens/s with batch_size=8 over batch_size=1 (target >= 3x on 2 CPU cores);
2. end-to-end collection rate (trajectories/min, cot, the collect params) on a few train tasks.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import polars as pl

from pipeline.agent.backends import HFPolicy, SamplingConfig
from pipeline.agent.collect import collect
from pipeline.agent.prompts import ChatRenderer, system_prompt, user_message
from pipeline.envs import ToolWorldEnv
from pipeline.task import Task
from pipeline.toolworld.world import ToolWorld


def _model_dir() -> str:
    for d in ("data/models/sft", "data/models/base"):
        if Path(d, "config.json").exists():
            return d
    raise SystemExit("bench agent: run `make repro` (or dvc repro base_model) first: no model in data/models")


def main() -> None:
    n = int(os.environ.get("BENCH_PROMPTS", "8"))
    new_tokens = int(os.environ.get("BENCH_NEW_TOKENS", "48"))
    model_dir = _model_dir()
    tasks = [Task.from_row(r) for r in pl.read_parquet("data/tasks/train.parquet").head(n).to_dicts()]
    world = ToolWorld.from_catalog("data/tools/catalog.json")
    # Always generate new_tokens tokens (temperature 1, eos allowed but rare early): same work both ways.
    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=1.0)
    batched = HFPolicy.from_pretrained(model_dir, sampling, batch_size=n)
    renderer = ChatRenderer(batched.tok)
    prompts = [renderer.encode(renderer.prefix(system_prompt(t.api_list), user_message(t.query))) for t in tasks]
    seeds = list(range(n))
    batched.generate(prompts[:1], seeds[:1])  # warm-up
    t0 = time.perf_counter()
    g_b = batched.generate(prompts, seeds)
    tb = time.perf_counter() - t0
    single = HFPolicy(batched.model, batched.tok, sampling, batch_size=1)
    t0 = time.perf_counter()
    g_s = single.generate(prompts, seeds)
    ts = time.perf_counter() - t0
    tok_b, tok_s = sum(len(g.token_ids) for g in g_b), sum(len(g.token_ids) for g in g_s)
    print(f"generation ({model_dir}, {n} prompts of ~{sum(map(len, prompts)) // n} tokens, up to {new_tokens} new): "
          f"batched {tok_b / tb:.1f} tok/s, unbatched {tok_s / ts:.1f} tok/s, ratio {(tok_b / tb) / (tok_s / ts):.2f}x")
    policy = HFPolicy(batched.model, batched.tok, SamplingConfig(max_new_tokens=128, temperature=0.8), batch_size=8)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = collect(tasks, policy, renderer, lambda: ToolWorldEnv(world), tmp, "bench", n_samples=1, max_steps=6,
                    progress=False)
        el = time.perf_counter() - t0
    print(f"collect (cot, {len(tasks)} tasks, max 6 steps): {s['trajectories'] / el * 60:.2f} trajectories/min, "
          f"{s['steps'] / el * 60:.1f} steps/min, parse success {s['parse_success']:.0%}")
