"""Prefix KV cache: lookup by longest common prefix, eviction, and generations equal to a full prefill."""
from __future__ import annotations

import torch

from pipeline.agent.backends import HFPolicy, SamplingConfig
from pipeline.agent.kvcache import PrefixCache, common_prefix
from pipeline.agent.prompts import ChatRenderer
from pipeline.agent.rollout import run_cot, run_dfsdt_batch
from pipeline.envs import ToolWorldEnv
from tests.support.tiny_model import make_tiny_model


def _kv(n: int, value: float = 0.0):
    return [(torch.full((2, n, 4), value), torch.full((2, n, 4), value))]


def test_common_prefix():
    t = torch.tensor
    assert common_prefix(t([1, 2, 3]), t([1, 2, 4])) == 2
    assert common_prefix(t([1, 2]), t([1, 2, 3])) == 2
    assert common_prefix(t([5]), t([1])) == 0
    assert common_prefix(t([], dtype=torch.long), t([1])) == 0


def test_lookup_takes_the_longest_shared_prefix_and_leaves_one_token_to_run():
    c = PrefixCache(max_tokens=100)
    c.store([1, 2, 3, 4], _kv(4, 1.0))
    c.store([1, 2, 9], _kv(3, 2.0))
    entry, n = c.lookup([1, 2, 3, 4, 5, 6])
    assert n == 4 and float(entry.layers[0][0][0, 0, 0]) == 1.0
    entry, n = c.lookup([1, 2, 9, 7])
    assert n == 3 and float(entry.layers[0][0][0, 0, 0]) == 2.0
    _, n = c.lookup([1, 2, 3, 4])  # the whole prompt is cached: its last token still runs for the logits
    assert n == 3
    assert c.lookup([7, 7]) == (None, 0)
    assert c.stats["hits"] == 3 and c.stats["reused_tokens"] == 10


def test_store_drops_prefixes_and_evicts_least_recently_used():
    c = PrefixCache(max_tokens=10)
    c.store([1, 2, 3], _kv(3))
    c.store([1, 2, 3, 4, 5], _kv(5))  # the chain grew: its old entry is redundant
    assert [e.ids.tolist() for e in c.entries.values()] == [[1, 2, 3, 4, 5]] and c.tokens == 5
    c.store([7, 8, 9], _kv(3))
    c.lookup([1, 2, 3, 4, 5, 6])  # touch the first entry: [7, 8, 9] is now the oldest
    c.store([4, 4, 4, 4], _kv(4))  # 12 tokens > 10: evict the least recently used
    assert sorted(e.ids.tolist()[0] for e in c.entries.values()) == [1, 4] and c.tokens == 9
    c.store(list(range(11)), _kv(11))  # larger than the whole budget: not stored
    assert c.tokens == 9


def _policy(tokenizer, kv_tokens: int, temperature: float = 0.9):
    return HFPolicy(make_tiny_model(tokenizer), tokenizer, SamplingConfig(max_new_tokens=12, temperature=temperature),
                    batch_size=4, kv_cache_tokens=kv_tokens)


def _same(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert [s.generation.token_ids for s in ra.steps] == [s.generation.token_ids for s in rb.steps]
        for sa, sb in zip(ra.steps, rb.steps):
            assert max(abs(x - y) for x, y in zip(sa.generation.logprobs, sb.generation.logprobs)) < 1e-4


def test_cot_with_the_prefix_cache_equals_full_prefill(world, splits, tokenizer):
    renderer = ChatRenderer(tokenizer)
    jobs = [(t, k) for t in splits["train"][:3] for k in range(2)]
    plain = run_cot(jobs, _policy(tokenizer, 0), renderer, lambda: ToolWorldEnv(world), max_steps=3, seed=5)
    cached_policy = _policy(tokenizer, 100_000)
    cached = run_cot(jobs, cached_policy, renderer, lambda: ToolWorldEnv(world), max_steps=3, seed=5)
    _same(plain, cached)
    st = cached_policy.prefix_cache.stats
    # steps 2 and 3 reuse everything but the new observation; step 1 shares the system prompt across samples
    assert st["hits"] >= 2 * len(jobs) and st["reused_tokens"] > 0.6 * st["prompt_tokens"]
    # one entry per chain: each step's entry replaced the previous one
    assert len(cached_policy.prefix_cache.entries) <= len(jobs)


def test_dfsdt_with_the_prefix_cache_equals_full_prefill(world, splits, tokenizer):
    renderer = ChatRenderer(tokenizer)
    jobs = [(t, 0) for t in splits["train"][:2]]
    kw = dict(max_steps=3, width=2, budget=6, seed=3, backtrack_on_error=False)  # random weights: go deep
    plain = run_dfsdt_batch(jobs, _policy(tokenizer, 0), renderer, lambda: ToolWorldEnv(world), **kw)
    cached_policy = _policy(tokenizer, 100_000)
    cached = run_dfsdt_batch(jobs, cached_policy, renderer, lambda: ToolWorldEnv(world), **kw)
    _same(plain, cached)
    assert [r.tree for r in plain] == [r.tree for r in cached]
    assert cached_policy.prefix_cache.stats["hits"] > 0


def test_a_tiny_budget_still_gives_the_same_generations(world, splits, tokenizer):
    renderer = ChatRenderer(tokenizer)
    jobs = [(t, 0) for t in splits["train"][:3]]
    plain = run_cot(jobs, _policy(tokenizer, 0, 0.0), renderer, lambda: ToolWorldEnv(world), max_steps=2)
    small = _policy(tokenizer, 700, 0.0)  # room for about one chain: most lookups miss or hit partially
    _same(plain, run_cot(jobs, small, renderer, lambda: ToolWorldEnv(world), max_steps=2))
    assert small.prefix_cache.tokens <= 700


def test_finished_rows_leave_the_batch_without_changing_any_generation(tokenizer):
    """A row that wrote its end-of-turn token leaves the batch (retire_finished). Every row's tokens and log-probs
    are those of the run that keeps finished rows in until the longest ends, and the prefix cache holds the
    same sequences. The random model rarely ends a row, so a token it writes early is made the end token."""
    prompts = [tokenizer.encode(f"question {i}: " + "word " * (3 * i)) for i in range(6)]
    seeds = list(range(6))
    probe = _policy(tokenizer, 0, 0.9)
    probe.sampling = SamplingConfig(24, 0.9, 1.0)
    first = probe.generate(prompts, seeds)
    eos = first[0].token_ids[2]  # row 0 ends at its 3rd token; others end wherever they write it, or run to 24

    def run(retire: bool):
        policy = _policy(tokenizer, 100_000, 0.9)
        policy.sampling = SamplingConfig(24, 0.9, 1.0)
        policy.eos_id, policy.retire_finished = eos, retire
        return policy, policy.generate(prompts, seeds)

    kept_policy, kept = run(False)
    retired_policy, retired = run(True)
    lengths = sorted(len(g.token_ids) for g in retired)
    assert lengths[0] <= 3 and lengths[-1] == 24  # some rows left early, one ran to the limit
    for a, b in zip(kept, retired):
        assert a.token_ids == b.token_ids and a.ended == b.ended
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4
    stored = lambda p: sorted(e.ids.tolist() for e in p.prefix_cache.entries.values())  # noqa: E731
    assert stored(kept_policy) == stored(retired_policy) and len(stored(retired_policy)) == 6


def test_the_bench_limit_at_the_agents_shapes_runs_the_agents_computation(world, splits, tokenizer):
    """bench/agent.py's limit (`bare_same_shapes`) is the agent's work without its Python: given the agent's greedy
    calls, what its prefix cache served (`cache_plan`, computed from the calls alone) is what the cache reports, the
    shared prefixes are the ones the policy ran ahead, and the bare forward's argmax writes the agent's own tokens,
    row for row, with rows leaving the batch as the agent's did."""
    from bench.agent import _Recording, bare_same_shapes, cache_plan

    renderer = ChatRenderer(tokenizer)
    policy = _policy(tokenizer, 100_000, 0.0)
    policy.batch_size = 2  # 3 tasks, the first twice: two batches per call, the second of two rows
    ran = []
    run_shared = policy._run_shared_prefixes
    policy._run_shared_prefixes = lambda prompts: (ran.append(len(policy.prefix_cache.entries)), run_shared(prompts))
    rec = _Recording(policy)
    jobs = [(t, k) for t, k in ((splits["train"][0], 0), (splits["train"][0], 1), (splits["train"][1], 0),
                                (splits["train"][2], 0))]
    run_cot(jobs, rec, renderer, lambda: ToolWorldEnv(world), max_steps=2, seed=2)
    plan = cache_plan(rec.calls, rec.generated, policy.batch_size, policy.min_shared_prefix)
    assert sum(sum(p["rows"]) for p in plan) == policy.prefix_cache.stats["reused_tokens"] > 0
    # the first call: the two samples of task 0 share their whole prompt but its last token, run once ahead of the
    # rows; the preamble the other tasks share with it is a prefix of that one, so it is not run again, and every
    # row of the first call is served
    first = [c for chunk in plan[0]["shared"] for c, _ in chunk]
    assert first == [rec.calls[0][0][0][:-1]]
    assert all(n > 0 for n in plan[0]["rows"]) and len(ran) == len(rec.calls) and ran[0] == 0
    total, seconds, argmax = bare_same_shapes(policy, rec.calls, rec.generated, plan)
    assert argmax == rec.generated and total == sum(map(sum, rec.lengths)) and seconds > 0


def test_shared_prefixes_by_hand():
    """Groups of prompts that share a prefix get the longest one they share (capped at each prompt's length less one;
    a prefix of another candidate is dropped), at least `min_len` long."""
    from pipeline.agent.kvcache import shared_prefixes

    a, b = [1, 2, 3, 4, 5], [1, 2, 3, 4, 6]
    c = [1, 2, 9]
    assert shared_prefixes([a, b, c], 2) == [[1, 2, 3, 4]]  # [1, 2] is a prefix of [1, 2, 3, 4]: the longer serves c
    assert shared_prefixes([a, list(a)], 1) == [[1, 2, 3, 4]]  # the same prompt twice: all but its last token
    assert shared_prefixes([a, b, [7, 8, 9], [7, 8, 1]], 2) == [[1, 2, 3, 4], [7, 8]]
    assert shared_prefixes([a, b], 5) == [] and shared_prefixes([a], 1) == [] and shared_prefixes([a, [9]], 1) == []
