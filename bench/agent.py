"""Agent throughput on this machine, one run:

1. batched vs unbatched generation on the same prompts: tasks played (cot, greedy) with the pipeline's
   agent.batch_size (params.yaml; as many tasks as one batch holds), every call recorded, then the same calls given to a batch_size=1 policy; the ratio is generated
   tokens/s batched over unbatched (target >= 3x on 2 CPU cores). Both use the prefix KV cache,
   as the pipeline does: without it, re-running the whole context at every step (prefill, ~1x batched or
   not on a CPU) dominates and hides what batching buys.
2. what the prefix KV cache buys: the same calls, batched, without it.
3. what retiring finished rows buys: the same calls, batched, with a row leaving the batch when it writes its
   end-of-turn token, against keeping it in until the longest row ends (same tokens; tested).
4. end-to-end collection rate (trajectories/min, cot, the collect params) on the same tasks.
5. the machine's limit for those calls: a bare batched forward of the same model on the same prompts (left-padded,
   each call's whole prompts prefilled, then as many decode steps as its longest generation; argmax, no sampling,
   no parsing), counting the tokens the agent generated: decode only (the prefill outside the clock: no agent can
   beat it, since it must prefill too) and prefill + decode (no prefix cache: the agent's cache can beat it). The
   batched agent's throughput is given as a share of each. Then the limit at the agent's own shapes
   (`bare_same_shapes`): the same rows in each forward, only the suffixes the prefix cache leaves prefilled, each
   row leaving the batch when it has its tokens: the agent's work without its Python, sampling and cache copies.

BENCH_PARTS (comma list of generation, cache, retire, limit, collect; default all) runs some of them.

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
    """Keeps every call (prompts, seeds, slots) and what it generated, so that another policy, or a bare forward,
    can be given exactly the same prompts."""

    def __init__(self, inner):
        self.inner, self.name, self.calls, self.lengths, self.generated = inner, inner.name, [], [], []

    def generate(self, prompts, seeds, slots=None):
        self.calls.append((prompts, seeds, slots))
        gens = self.inner.generate(prompts, seeds, slots)
        self.lengths.append([len(g.token_ids) for g in gens])
        self.generated.append([list(g.token_ids) for g in gens])
        return gens


def cache_plan(calls, generated, batch_size: int, min_shared: int) -> list[dict]:
    """What the agent's prefix cache (pipeline/agent/kvcache.py) serves, call by call, computed from the calls alone
    as the policy does it when nothing is evicted (the bench's cache holds every sequence it plays): first the
    shared prefixes it runs ahead of the rows (`HFPolicy._run_shared_prefixes`), in chunks of `batch_size`, each
    with the tokens of it already held; then per row, batch by batch in the policy's order (by prompt length), the
    prompt tokens served: the longest common prefix with a sequence run before (a shared prefix, or an earlier
    batch's prompt and generation but its last token, which never runs), at most the prompt less one token.
    Returns per call {"shared": [[(prefix, served), ...] per chunk], "rows": [served per row]}."""
    from pipeline.agent.kvcache import common_length, shared_prefixes

    seen: list[list[int]] = []

    def held(ids: list[int]) -> int:
        return max((common_length(ids, s) for s in seen), default=0)

    out = []
    for (prompts, _, _), gens in zip(calls, generated):
        shared = []
        if min_shared > 0 and len(prompts) > 1:
            todo = [p for p in shared_prefixes(prompts, min_shared) if held(p) < len(p)]
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                shared.append([(c, max(min(held(c), len(c) - 1), 0)) for c in chunk])
                seen += chunk
        row = [0] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            for i in idx:
                row[i] = max(min(held(prompts[i]), len(prompts[i]) - 1), 0)
            seen += [prompts[i] + gens[i][:-1] for i in idx]
        out.append({"shared": shared, "rows": row})
    return out


def _reset(policy: HFPolicy) -> None:
    policy.stats.update(prompt_tokens=0, generated_tokens=0, seconds=0.0)
    if policy.prefix_cache is not None:
        policy.prefix_cache.clear()


def _play(policy: HFPolicy, tasks, renderer, world, steps: int):
    """Play the tasks (cot, greedy); returns the rollouts, the calls made, generated tokens and seconds."""
    _reset(policy)
    rec = _Recording(policy)
    t0 = time.perf_counter()
    rollouts = run_cot([(t, 0) for t in tasks], rec, renderer, lambda: ToolWorldEnv(world), max_steps=steps,
                       seed=1, constrain_names=True)
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


def _bare_prefill(policy: HFPolicy, seqs: list[list[int]], served: list[int], reserve: int):
    """A left-padded batched prefill of `seqs` whose first `served` tokens are already in a cache: that part is run
    off the clock (the agent copies it from its prefix cache, it does not compute it; kvcache.batch_past's layout),
    the rest on it. Returns (cache, last logits, attention mask, next positions, seconds on the clock)."""
    import torch

    from pipeline.agent.kvcache import growing_cache, left_padded

    dev, rows = policy.device, len(seqs)

    def padded(parts, starts):
        return tuple(t.to(dev) for t in left_padded(parts, starts, policy.pad_id))

    cache = growing_cache(reserve) if policy._plain_cache else None
    past = None
    if max(served) > 0:
        ids, past, pos = padded([s[:n] for s, n in zip(seqs, served)], [0] * rows)
        cache, _ = policy._forward(cache, input_ids=ids, attention_mask=past, position_ids=pos)
    ids, mask, pos = padded([s[n:] for s, n in zip(seqs, served)], served)
    mask = mask if past is None else torch.cat([past, mask], dim=1)
    t0 = time.perf_counter()
    cache, logits = policy._forward(cache, input_ids=ids, attention_mask=mask, position_ids=pos)
    return cache, logits, mask, pos[:, -1] + 1, time.perf_counter() - t0


def bare_same_shapes(policy: HFPolicy, calls, generated, plan) -> tuple[int, float, list[list[int]]]:
    """The agent's own work as a bare batched forward: per call, the shared prefixes the agent runs ahead of its rows
    (their unserved part prefilled), then the rows in the policy's order and batches, the prefix the agent's cache
    serves put in a cache off the clock, on the clock the rest prefilled in one left-padded forward and argmax decode
    steps, each row leaving the batch after as many tokens as the agent generated for it. No sampling, no name
    constraints, no parsing, no cache lookups or stores: what is left of the agent's time once its Python is gone.
    `plan`: `cache_plan`'s. Returns (generated tokens, seconds, the argmax tokens per call and row, in call order)."""
    import torch

    from pipeline.agent.kvcache import keep_rows

    total, seconds, argmax = 0, 0.0, []
    with torch.inference_mode():
        for (prompts, _, _), gens, step in zip(calls, generated, plan):
            for chunk in step["shared"]:
                seconds += _bare_prefill(policy, [c for c, _ in chunk], [n for _, n in chunk], 1)[-1]
            hits = step["rows"]
            order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
            out = {i: [] for i in order}
            for start in range(0, len(order), policy.batch_size):
                idx = order[start:start + policy.batch_size]
                n_new = [len(gens[i]) for i in idx]
                cache, logits, att, next_pos, t = _bare_prefill(policy, [prompts[i] for i in idx],
                                                                [hits[i] for i in idx], max(n_new) + 1)
                t0 = time.perf_counter()
                rows = list(range(len(idx)))
                for k in range(max(n_new)):
                    chosen = logits.argmax(-1)
                    for b, r in enumerate(rows):
                        out[idx[r]].append(int(chosen[b]))
                    alive = [b for b, r in enumerate(rows) if n_new[r] > k + 1]
                    if not alive:
                        break
                    if len(alive) < len(rows):
                        keep = torch.tensor(alive, device=att.device)
                        keep_rows(cache, keep)
                        att, next_pos, chosen = att[keep], next_pos[keep], chosen[keep]
                        rows = [rows[b] for b in alive]
                    att = torch.cat([att, att.new_ones((len(rows), 1))], dim=1)
                    cache, logits = policy._forward(cache, input_ids=chosen.view(-1, 1), attention_mask=att,
                                                    position_ids=next_pos.view(-1, 1))
                    next_pos = next_pos + 1
                seconds += t + time.perf_counter() - t0
                total += sum(n_new)
            argmax.append([out[i] for i in range(len(prompts))])
    return total, seconds, argmax


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
    calls = rec.calls
    parts = os.environ.get("BENCH_PARTS", "generation,cache,retire,limit,collect").split(",")
    prompts = sum(s.prompt_len for r in r_b for s in r.steps)
    n_steps = sum(len(r.steps) for r in r_b)
    reuse = dict(batched.prefix_cache.stats)
    print(f"played ({model_dir}, {precision}, {n} tasks to {steps} steps, greedy, {n_steps} actions, mean context "
          f"{prompts // max(n_steps, 1)} tokens, {len(calls)} calls): batched {gen_b / t_b:.1f} tok/s ({gen_b} tokens)")
    if "generation" in parts:
        single = HFPolicy(batched.model, batched.tok, sampling, batch_size=1, kv_cache_tokens=kv)
        gen_s, t_s = _replay(single, calls)
        print(f"generation (the unbatched policy gets the same {len(calls)} calls): batched {gen_b / t_b:.1f} tok/s, "
              f"unbatched {gen_s / t_s:.1f} tok/s ({gen_s} tokens), ratio {(gen_b / t_b) / (gen_s / t_s):.2f}x")
    if "cache" in parts:
        nocache = HFPolicy(batched.model, batched.tok, sampling, batch_size=n)
        gen_n, t_n = _replay(nocache, calls)
        print(f"prefix KV cache (batched, same calls): {gen_b / t_b:.1f} tok/s with, {gen_n / t_n:.1f} tok/s without, "
              f"ratio {(gen_b / t_b) / (gen_n / t_n):.2f}x; "
              f"{reuse['reused_tokens'] / max(reuse['prompt_tokens'], 1):.0%} of context tokens reused")
    if "retire" in parts:
        kept = HFPolicy(batched.model, batched.tok, sampling, batch_size=n, kv_cache_tokens=kv)
        kept.retire_finished = False
        gen_k, t_k = _replay(kept, calls)
        gen_r, t_r = _replay(batched, calls)
        print(f"finished rows leave the batch (batched, same calls): {gen_r / t_r:.1f} tok/s, kept until the longest "
              f"row ends {gen_k / t_k:.1f} tok/s, ratio {(gen_r / t_r) / (gen_k / t_k):.2f}x")
    if "limit" in parts:
        gen_l, t_dec, t_pre = _bare(batched, calls, rec.lengths)
        print(f"the machine's limit (a bare batched forward of the same {len(calls)} calls, decoding to each call's "
              f"longest generation, argmax): decode only {gen_l / t_dec:.1f} tok/s (the batched agent reaches "
              f"{(gen_b / t_b) / (gen_l / t_dec):.2f} of it); with the full prefill of every call "
              f"{gen_l / (t_dec + t_pre):.1f} tok/s (the agent, with its prefix cache: "
              f"{(gen_b / t_b) / (gen_l / (t_dec + t_pre)):.2f}x)")
        plan = cache_plan(calls, rec.generated, batched.batch_size, batched.min_shared_prefix)
        gen_x, t_x, _ = bare_same_shapes(batched, calls, rec.generated, plan)
        print(f"the limit at the agent's own shapes (the same rows per forward, the suffixes its prefix cache leaves "
              f"prefilled, each row decoding as many tokens as it generated, argmax): {gen_x / t_x:.1f} tok/s; the "
              f"batched agent reaches {(gen_b / t_b) / (gen_x / t_x):.2f} of it")
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
