"""Agent throughput on this machine, one run:

1. batched vs unbatched generation on the same prompts: tasks played (cot, greedy) with the pipeline's
   agent.batch_size (params.yaml; as many tasks as one batch holds) and continuous batching (HFPolicy.serve: a
   chain's next prompt joins the rows still decoding), every request recorded, then the same prompts, agent step by
   agent step, given to a batch_size=1 policy; the ratio is generated tokens/s batched over unbatched (target >= 3x
   on 2 CPU cores). Both use the prefix KV cache, as the pipeline does: without it, re-running the whole context at
   every step (prefill, ~1x batched or not on a CPU) dominates and hides what batching buys.
2. what the prefix KV cache buys: the same prompts, batched, without it.
3. what continuous batching buys: the same tasks played in lockstep, one `generate` per agent step (each step waits
   for its longest action; rows that finish still leave the batch), same tokens (tested).
4. end-to-end collection rate (trajectories/min, cot, the collect params) on the same tasks.
5. the machine's limit: the batched agent's throughput as a share of its own forward calls alone (the model run at
   exactly the agent's shapes, every prefill and decode step, timed inside `HFPolicy._forward`: what is left once
   Python, sampling, name constraints, cache copies and merges are gone); and, as references, a bare batched forward
   of the same prompts agent step by agent step (left-padded, whole prompts prefilled, decoding to the step's longest
   generation, argmax), decode only and with the full prefill.

BENCH_PARTS (comma list of generation, cache, lockstep, limit, collect; default all) runs some of them.

BENCH_PROMPTS (tasks = batch size; default params.yaml's agent.batch_size), BENCH_STEPS (4) and
BENCH_NEW_TOKENS (96) size it; BENCH_PRECISION (fp32|bf16) overrides
the pipeline's 'auto' precision (bf16 on an AMX CPU).
"""
from __future__ import annotations

import os
import tempfile
import time

import polars as pl

from pipeline.agent.backends import HFPolicy, SamplingConfig
from pipeline.agent.play import collect
from pipeline import layout
from pipeline.agent.prompts import ChatRenderer
from pipeline.agent.rollout import run_cot
from pipeline.config import load_params
from pipeline.devices import resolve_precision, weights_dtype
from pipeline.envs import ToolWorldEnv
from pipeline.task import Task
from pipeline.toolworld.world import ToolWorld


def _model_dir() -> str:
    for d in (layout.SFT_MODEL, layout.BASE_MODEL):
        if (d / "config.json").exists():
            return str(d)
    raise SystemExit("bench agent: run `make repro` (or dvc repro base_model) first: no model in data/models")


class _Recording:
    """Keeps every request (prompt, seed, slot) and what it generated, grouped by agent step into `calls` (as one
    `generate` per step would have been called), so that another policy, or a bare forward, can be given exactly the
    same prompts. Passes `serve` through (continuous batching) when the policy has it."""

    def __init__(self, inner):
        self.inner, self.name, self.calls, self.lengths, self.generated = inner, inner.name, [], [], []
        self._steps: dict[int, int] = {}
        if hasattr(inner, "serve"):
            self.serve = self._serve

    def _add(self, step: int, prompt, seed, slot, gen) -> None:
        if step not in self._steps:
            self._steps[step] = len(self.calls)
            self.calls.append(([], [], []))
            self.lengths.append([])
            self.generated.append([])
        at = self._steps[step]
        for column, value in zip(self.calls[at], (prompt, seed, slot)):
            column.append(value)
        self.lengths[at].append(len(gen.token_ids))
        self.generated[at].append(list(gen.token_ids))

    def generate(self, prompts, seeds, slots=None):
        gens = self.inner.generate(prompts, seeds, slots)
        step = len(self._steps)
        for p, sd, sl, g in zip(prompts, seeds, slots or [None] * len(prompts), gens):
            self._add(step, p, sd, sl, g)
        return gens

    def _serve(self, source):
        rec = self

        asked = {}

        class Source:
            def take(self, n, wait):
                reqs = source.take(n, wait)
                asked.update({id(r.key): r for r in reqs})
                return reqs

            def done(self, key, gen):
                r = asked.pop(id(key))
                rec._add(len(key.rollout.steps), r.prompt, r.seed, r.slot, gen)  # run_cot's chain, at this step
                source.done(key, gen)

        self.inner.serve(Source())


def _reset(policy: HFPolicy) -> None:
    policy.stats.update({k: type(v)() for k, v in policy.stats.items()})
    if policy.prefix_cache is not None:
        policy.prefix_cache.clear()


def _play(policy: HFPolicy, tasks, renderer, world, steps: int, continuous: bool = True):
    """Play the tasks (cot, greedy; `continuous`: run_cot's continuous batching, else one generate per agent step);
    returns the rollouts, the calls made, generated tokens and seconds."""
    _reset(policy)
    rec = _Recording(policy)
    t0 = time.perf_counter()
    rollouts = run_cot([(t, 0) for t in tasks], rec, renderer, lambda: ToolWorldEnv(world), max_steps=steps,
                       seed=1, constrain_names=True, continuous=continuous)
    el = time.perf_counter() - t0
    gen = sum(len(s.generation.token_ids) for r in rollouts for s in r.steps)
    return rollouts, rec, gen, el


def _bare(policy: HFPolicy, calls, lengths) -> tuple[int, float, float]:
    """The same calls as a bare batched forward through the policy's own model call (`_forward`, last-position logits
    only) with the agent's own preallocated KV cache (`growing_cache`; transformers' default concatenates the whole
    cache at every token, which would make the limit lower than what this code already reaches): (the agent's
    generated tokens, seconds of decode, seconds of prefill)."""
    import torch

    from pipeline.agent.kvcache import growing_cache, left_padded

    decode = prefill = 0.0
    with torch.inference_mode():
        for (prompts, _, _), n in zip(calls, lengths):
            ids, att, _ = left_padded(prompts, [0] * len(prompts), policy.pad_id)  # as a batched generate pads
            ids, att = ids.to(policy.device), att.to(policy.device)
            t0 = time.perf_counter()
            cache = growing_cache(max(n)) if policy._plain_cache else None
            cache, logits = policy._forward(cache, input_ids=ids, attention_mask=att)
            t1 = time.perf_counter()
            for _ in range(max(n) - 1):
                att = torch.cat([att, att.new_ones((len(prompts), 1))], dim=1)
                cache, logits = policy._forward(cache, input_ids=logits.argmax(-1, keepdim=True), attention_mask=att)
            decode += time.perf_counter() - t1
            prefill += t1 - t0
    return sum(sum(n) for n in lengths), decode, prefill


def _replay(policy: HFPolicy, calls):
    """The same prompts, call by call (each call's prompts one at a time when batch_size=1)."""
    _reset(policy)
    t0 = time.perf_counter()
    gen = sum(len(g.token_ids) for prompts, seeds, slots in calls for g in policy.generate(prompts, seeds, slots))
    return gen, time.perf_counter() - t0


def main() -> None:
    n = int(os.environ.get("BENCH_PROMPTS") or load_params("params.yaml").agent.batch_size)
    steps = int(os.environ.get("BENCH_STEPS", "4"))
    new_tokens = int(os.environ.get("BENCH_NEW_TOKENS", "96"))
    kv = 65536
    model_dir = _model_dir()
    tasks = [Task.from_row(r) for r in pl.read_parquet(layout.tasks_file("train")).head(n).to_dicts()]
    world = ToolWorld.from_catalog(layout.CATALOG)
    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0)
    precision = os.environ.get("BENCH_PRECISION") or resolve_precision("auto", "cpu")  # what the pipeline uses here
    batched = HFPolicy.from_pretrained(model_dir, sampling, batch_size=n, kv_cache_tokens=kv,
                                       dtype=weights_dtype(precision, "cpu"))
    renderer = ChatRenderer(batched.tok)
    batched.generate([renderer.encode(renderer.prefix("S", "U"))], [0])  # warm-up
    r_b, rec, gen_b, t_b = _play(batched, tasks, renderer, world, steps)
    forward = batched.stats["forward_seconds"]
    joined = batched.stats["joined_rows"]
    calls = rec.calls
    parts = os.environ.get("BENCH_PARTS", "generation,cache,lockstep,limit,collect").split(",")
    prompts = sum(s.prompt_len for r in r_b for s in r.steps)
    n_steps = sum(len(r.steps) for r in r_b)
    reuse = dict(batched.prefix_cache.stats)
    print(f"played ({model_dir}, {precision}, {n} tasks to {steps} steps, greedy, continuous batching, {n_steps} "
          f"actions, mean context {prompts // max(n_steps, 1)} tokens, {joined} rows joined a running batch): "
          f"batched {gen_b / t_b:.1f} tok/s ({gen_b} tokens in {t_b:.1f} s)")
    if "generation" in parts:
        single = HFPolicy(batched.model, batched.tok, sampling, batch_size=1, kv_cache_tokens=kv)
        gen_s, t_s = _replay(single, calls)
        print(f"generation (the unbatched policy gets the same prompts, step by step, {len(calls)} calls): batched "
              f"{gen_b / t_b:.1f} tok/s, unbatched {gen_s / t_s:.1f} tok/s ({gen_s} tokens), "
              f"ratio {(gen_b / t_b) / (gen_s / t_s):.2f}x")
    if "cache" in parts:
        nocache = HFPolicy(batched.model, batched.tok, sampling, batch_size=n)
        gen_n, t_n = _replay(nocache, calls)
        print(f"prefix KV cache (batched, same prompts): {gen_b / t_b:.1f} tok/s with, {gen_n / t_n:.1f} tok/s "
              f"without, ratio {(gen_b / t_b) / (gen_n / t_n):.2f}x; "
              f"{reuse['reused_tokens'] / max(reuse['prompt_tokens'], 1):.0%} of context tokens reused")
    if "lockstep" in parts:
        r_l, _, gen_l, t_l = _play(batched, tasks, renderer, world, steps, continuous=False)
        same = [[s.generation.token_ids for s in r.steps] for r in r_l] == [[s.generation.token_ids for s in r.steps]
                                                                             for r in r_b]
        print(f"continuous batching (same tasks): {gen_b / t_b:.1f} tok/s, lockstep (one generate per agent step) "
              f"{gen_l / t_l:.1f} tok/s ({gen_l} tokens, {'the same' if same else 'NOT the same'} actions), "
              f"ratio {(gen_b / t_b) / (gen_l / t_l):.2f}x")
    if "limit" in parts:
        print(f"the limit at the agent's own shapes (its forward calls alone, every prefill and decode step): "
              f"{gen_b / forward:.1f} tok/s ({forward:.1f} of its {t_b:.1f} s); the batched agent reaches "
              f"{forward / t_b:.2f} of it")
        gen_x, t_dec, t_pre = _bare(batched, calls, rec.lengths)
        print(f"a bare batched forward of the same prompts, step by step ({len(calls)} forwards of up to {n} rows, "
              f"decoding to each step's longest generation, argmax): decode only {gen_x / t_dec:.1f} tok/s (the batched "
              f"agent reaches {(gen_b / t_b) / (gen_x / t_dec):.2f} of it); with the full prefill of every prompt "
              f"{gen_x / (t_dec + t_pre):.1f} tok/s (the agent, with its prefix cache: "
              f"{(gen_b / t_b) / (gen_x / (t_dec + t_pre)):.2f}x)")
    if "collect" not in parts:
        return
    policy = HFPolicy(batched.model, batched.tok, SamplingConfig(max_new_tokens=new_tokens, temperature=0.8),
                      batch_size=n, kv_cache_tokens=kv)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = collect(tasks, policy, renderer, lambda: ToolWorldEnv(world), tmp, "bench", n_samples=1, max_steps=6,
                    progress=False, constrain_names=True)
        el = time.perf_counter() - t0
    print(f"collect (cot, {len(tasks)} tasks, max 6 steps, T=0.8): {s['trajectories'] / el * 60:.2f} trajectories/min, "
          f"{s['steps'] / el * 60:.1f} steps/min, parse success {s['parse_success']:.0%}")


if __name__ == "__main__":
    main()
