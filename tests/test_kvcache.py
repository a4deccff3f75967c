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


def _ending_early(tokenizer, renderer, world, jobs) -> int:
    """A token the tiny random model writes early in some actions and late or never in others, made the end-of-turn
    token, so that actions end at different lengths (the random model rarely writes its real one)."""
    import collections

    probe = _policy(tokenizer, 0, 0.9)
    first: dict[int, set] = collections.defaultdict(set)  # token -> the positions where it first appears
    for r in run_cot(jobs, probe, renderer, lambda: ToolWorldEnv(world), max_steps=1, seed=3):
        ids = r.steps[0].generation.token_ids
        for t in set(ids[1:]):
            first[t].add(ids.index(t))
    return max(first, key=lambda t: (len(first[t]), -t))


def test_continuous_batching_gives_the_actions_of_lockstep_and_one_by_one(world, splits, tokenizer):
    """Chains whose actions end at different lengths: under continuous batching (a chain's next prompt joins the rows
    still decoding, and new chains fill free rows) every action's tokens are those of one `generate` per agent step
    and of a policy that runs one prompt at a time, log-probs within 1e-4, sampled at T = 0.9 with each step's seed,
    whether joining rows are prefilled one at a time (a CPU) or together (an accelerator); rows really joined running
    batches."""
    renderer = ChatRenderer(tokenizer)
    jobs = [(t, k) for t in splits["train"][:4] for k in range(2)]  # 8 chains, 4 rows
    eos = _ending_early(tokenizer, renderer, world, jobs)

    def play(batch_size: int, continuous: bool):
        policy = _policy(tokenizer, 100_000, 0.9)
        policy.batch_size, policy.eos_id = batch_size, eos
        return policy, run_cot(jobs, policy, renderer, lambda: ToolWorldEnv(world), max_steps=3, seed=3,
                               continuous=continuous)

    cont_policy, cont = play(4, True)
    lock_policy, lock = play(4, False)
    _, single = play(1, True)
    together_policy = _policy(tokenizer, 100_000, 0.9)  # joining rows prefilled together, as on an accelerator
    together_policy.batch_size, together_policy.eos_id, together_policy.prefill_per_row = 4, eos, False
    together = run_cot(jobs, together_policy, renderer, lambda: ToolWorldEnv(world), max_steps=3, seed=3)
    _same(cont, together)
    lengths = {len(s.generation.token_ids) for r in cont for s in r.steps}
    assert len(lengths) >= 3 and any(s.generation.ended for r in cont for s in r.steps)
    assert cont_policy.stats["joined_rows"] >= 4 and lock_policy.stats["joined_rows"] == 0
    _same(cont, lock)
    _same(cont, single)
    assert [r.traj_id for r in cont] == [r.traj_id for r in lock]  # job order
    assert cont_policy.stats["generated_tokens"] == sum(len(s.generation.token_ids) for r in cont for s in r.steps)


def test_running_batch_by_hand():
    """kvcache.RunningBatch, one layer, one head, dim 1, keys = the token and values = its negative (0 = padding):
    the first admission drops a column no row uses and right-aligns the narrower part, with zeros where it pads; a
    later row is written into a free row of the same buffer (no copy of the running rows); a token is written at
    one column for every row; a leaving row's place is taken by the last row, and a column no row uses any more
    leaves the view; a row wider than the view widens it on the left (zeros for the rows already there); more rows
    than the buffer holds make a new buffer."""
    from types import SimpleNamespace

    from pipeline.agent.kvcache import RunningBatch

    def part(rows):
        t = torch.tensor(rows, dtype=torch.float32).view(len(rows), 1, len(rows[0]), 1)
        return SimpleNamespace(layers=[SimpleNamespace(keys=t, values=-t)]), (torch.tensor(rows) != 0).long()

    def seen(batch):
        layer = batch.cache.layers[0]
        keys = layer.keys.reshape(batch.rows, -1).tolist()
        assert layer.values.reshape(batch.rows, -1).tolist() == [[-x for x in row] for row in keys]
        return keys, batch.mask.tolist()

    batch = RunningBatch(reserve=2, capacity=4)
    batch.admit([part([[0, 0, 5, 6], [0, 7, 8, 9]])])
    assert seen(batch) == ([[0, 5, 6], [7, 8, 9]], [[0, 1, 1], [1, 1, 1]])
    buffer = batch.cache.layers[0]._k
    assert buffer.shape == (4, 1, 5, 1)  # 4 rows; 3 columns, no room on the left (a quarter of 3), 2 reserved
    batch.admit([part([[1, 2]])])
    assert seen(batch) == ([[0, 5, 6], [7, 8, 9], [0, 1, 2]], [[0, 1, 1], [1, 1, 1], [0, 1, 1]])
    assert batch.cache.layers[0]._k is buffer
    batch.step()
    batch.cache.layers[0].update(torch.full((3, 1, 1, 1), 4.0), torch.full((3, 1, 1, 1), -4.0))
    assert seen(batch) == ([[0, 5, 6, 4], [7, 8, 9, 4], [0, 1, 2, 4]], [[0, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]])
    assert batch.retire([0, 2]) == [0, 2]  # the 7-row leaves; the last row takes its place
    assert seen(batch) == ([[5, 6, 4], [1, 2, 4]], [[1, 1, 1], [1, 1, 1]])  # column 0 was only the 7-row's
    assert batch.cache.layers[0]._k is buffer
    batch.admit([part([[8, 8, 8, 8]])])
    assert seen(batch) == ([[0, 5, 6, 4], [0, 1, 2, 4], [8, 8, 8, 8]], [[0, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]])
    assert batch.cache.layers[0]._k is buffer
    batch.admit([part([[0, 3], [2, 2]])])  # 5 rows > 4: a new buffer
    assert batch.cache.layers[0]._k is not buffer and batch.cache.layers[0]._k.shape[0] == 5
    assert seen(batch) == ([[0, 5, 6, 4], [0, 1, 2, 4], [8, 8, 8, 8], [0, 0, 0, 3], [0, 0, 2, 2]],
                           [[0, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1], [0, 0, 1, 1]])
    assert batch.retire([]) == [] and batch.rows == 0 and batch.cache is None


def test_the_bench_records_continuous_requests_as_the_lockstep_calls(world, splits, tokenizer):
    """bench/agent.py gives the unbatched policy and the bare forward the prompts of a continuous run grouped by agent
    step: they are, step by step, the prompts one `generate` per step is called with, and generate the same tokens.
    The model's own time (what the bench's limit is) is part of the policy's time."""
    from bench.agent import _Recording

    renderer = ChatRenderer(tokenizer)
    jobs = [(t, 0) for t in splits["train"][:3]] + [(splits["train"][0], 1)]

    def record(continuous: bool):
        policy = _policy(tokenizer, 100_000, 0.0)
        policy.batch_size = 2
        rec = _Recording(policy)
        run_cot(jobs, rec, renderer, lambda: ToolWorldEnv(world), max_steps=3, seed=2, continuous=continuous)
        return policy, rec

    cont_policy, cont = record(True)
    lock_policy, lock = record(False)
    assert len(cont.calls) == len(lock.calls) == 3
    for (cp, cs, _), (lp, ls, _), cg, lg in zip(cont.calls, lock.calls, cont.generated, lock.generated):
        assert sorted(zip(cp, cs, map(tuple, cg))) == sorted(zip(lp, ls, map(tuple, lg)))
    assert 0 < cont_policy.stats["forward_seconds"] < cont_policy.stats["seconds"]


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
