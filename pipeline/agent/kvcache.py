"""Prefix KV cache: the key/value states of sequences the policy has already run, reused across calls.

An agent's prompt at step t+1 is its prompt at step t, the action it just generated, and the tool's
answer. Without reuse every step re-runs the whole context through the model (prefill), which on a CPU
costs more than writing the action; with reuse only the new tokens (observation + next header) are run.
The same holds for DFSDT siblings (one parent prompt, several children) and for the samples of one task:
within one call, what several prompts share (`shared_prefixes`) is prefilled once ahead of them and stored, so a
batch does not compute it once per row (HFPolicy._run_shared_prefixes).

Keys and values at position i depend only on tokens 0..i (causal attention, absolute rotary positions),
so the states of any stored sequence are valid for every prompt that shares its first n tokens: lookup
takes the longest common prefix over the stored entries. Results equal a full prefill up to float
rounding (tested: same tokens, log-probs within 1e-4).

Entries are one row each (`[heads, length, head_dim]` per layer), evicted least recently used beyond
`max_tokens`; an entry that is a prefix of a newer one is dropped (a chain keeps one entry, its latest).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass
class CacheEntry:
    ids: torch.Tensor  # [length] token ids, on the CPU
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each [heads, length, head_dim]

    def __len__(self) -> int:
        return int(self.ids.numel())


def common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """Length of the longest common prefix of two 1-D id tensors."""
    n = min(a.numel(), b.numel())
    if n == 0:
        return 0
    diff = (a[:n] != b[:n]).nonzero()
    return n if diff.numel() == 0 else int(diff[0, 0])


class PrefixCache:
    """Least-recently-used store of per-row KV states, looked up by longest common prefix."""

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self.entries: OrderedDict[int, CacheEntry] = OrderedDict()
        self._next = 0
        self.tokens = 0
        self.stats = {"lookups": 0, "hits": 0, "reused_tokens": 0, "prompt_tokens": 0}

    def lookup(self, prompt: list[int], count: bool = True) -> tuple[CacheEntry | None, int]:
        """The entry sharing the longest prefix with `prompt`, and how many tokens of it to reuse: at most
        len(prompt) - 1, since the last prompt token must run to give the next token's logits. `count`: add it to
        `stats` (the prompts the policy was asked for; not the shared prefixes it runs ahead of them)."""
        best, best_n, best_key = self._longest(prompt)
        best_n = min(best_n, len(prompt) - 1)
        if count:
            self.stats["lookups"] += 1
            self.stats["prompt_tokens"] += len(prompt)
        if best is None or best_n <= 0:
            return None, 0
        self.entries.move_to_end(best_key)
        if count:
            self.stats["hits"] += 1
            self.stats["reused_tokens"] += best_n
        return best, best_n

    def served(self, ids: list[int]) -> int:
        """How many leading tokens of `ids` some entry holds (no cap, no stats, no recency)."""
        return self._longest(ids)[1]

    def _longest(self, ids: list[int]) -> tuple[CacheEntry | None, int, int | None]:
        p = torch.tensor(ids, dtype=torch.long)
        best, best_n, best_key = None, 0, None
        for key, entry in self.entries.items():
            n = common_prefix(p, entry.ids)
            if n > best_n:
                best, best_n, best_key = entry, n, key
        return best, best_n, best_key

    def store(self, ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        if self.max_tokens <= 0 or len(ids) > self.max_tokens or not ids:
            return
        t = torch.tensor(ids, dtype=torch.long)
        for key in [k for k, e in self.entries.items() if len(e) <= len(t) and common_prefix(t, e.ids) == len(e)]:
            self.tokens -= len(self.entries.pop(key))
        self.entries[self._next] = CacheEntry(t, layers)
        self._next += 1
        self.tokens += len(t)
        while self.tokens > self.max_tokens:
            _, old = self.entries.popitem(last=False)
            self.tokens -= len(old)

    def clear(self) -> None:
        self.entries.clear()
        self.tokens = 0


def common_length(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two id lists (`common_prefix` for tensors)."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def left_padded(parts: list[list[int]], starts: list[int], pad_id: int) -> tuple[torch.Tensor, ...]:
    """A batch of id lists, right-aligned (left padding, as a batched prefill pads): ids [B, W] (pad_id in the
    padding), attention mask [B, W] (1 on real tokens) and position ids [B, W] (row r counts from starts[r])."""
    width = max(len(x) for x in parts)
    ids = torch.full((len(parts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(parts), width), dtype=torch.long)
    positions = torch.zeros((len(parts), width), dtype=torch.long)
    for r, (x, at) in enumerate(zip(parts, starts)):
        if x:
            ids[r, width - len(x):] = torch.tensor(x, dtype=torch.long)
            mask[r, width - len(x):] = 1
            positions[r, width - len(x):] = torch.arange(at, at + len(x))
    return ids, mask, positions


def shared_prefixes(prompts: list[list[int]], min_len: int) -> list[list[int]]:
    """The prefixes that two or more of `prompts` share, each as long as it can be (one per group of prompts), at
    least `min_len` tokens and at most each sharing prompt's length less one (its last token runs for the logits).
    Sorted, the prompts of a group are neighbours: each neighbour pair's common prefix is a candidate, and one that
    is a prefix of the next candidate is dropped (the longer one serves every prompt the shorter would). E.g. the
    system prompt's preamble of tasks with other tools, the whole prompt of a task's samples or of DFSDT siblings.
    Pure: [P] lists of ids -> [G] lists of ids, sorted."""
    s = sorted(prompts)
    found = set()
    for a, b in zip(s, s[1:]):
        k = min(common_length(a, b), len(a) - 1, len(b) - 1)
        if k >= max(min_len, 1):
            found.add(tuple(a[:k]))
    cands = sorted(found)
    return [list(c) for c, nxt in zip(cands, cands[1:] + [()]) if nxt[:len(c)] != c]


def batch_past(hits: list[tuple[CacheEntry | None, int]], device: torch.device):
    """Left-padded batch of the reused states: per layer (keys, values) `[batch, heads, P, head_dim]` with
    P = the longest reuse, and the `[batch, P]` attention mask (1 on reused positions)."""
    bsz = len(hits)
    width = max(n for _, n in hits)
    first = next(e for e, n in hits if e is not None and n > 0)
    n_layers, sample = len(first.layers), first.layers[0][0]
    heads, dim = sample.shape[0], sample.shape[-1]
    mask = torch.zeros((bsz, width), dtype=torch.long, device=device)
    layers = []
    for li in range(n_layers):
        k = torch.zeros((bsz, heads, width, dim), dtype=sample.dtype, device=sample.device)
        v = torch.zeros_like(k)
        for r, (entry, n) in enumerate(hits):
            if entry is not None and n > 0:
                ek, ev = entry.layers[li]
                k[r, :, width - n:] = ek[:, :n]
                v[r, :, width - n:] = ev[:, :n]
        layers.append((k, v))
    for r, (_, n) in enumerate(hits):
        if n > 0:
            mask[r, width - n:] = 1
    return layers, mask


def growing_cache(reserve: int, past: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
    """A transformers `DynamicCache` whose layers write new states into a preallocated buffer instead of
    concatenating at every token. The stock layer's `torch.cat` copies the whole cache per generated token:
    measured on 2 CPU cores, 66% of a decode step at batch 8 and 600 tokens of context. Room for `reserve`
    more tokens is made whenever the buffer is full (one copy per `reserve` tokens)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self._k = self._v = None
                self._n = 0
            n = self._n + key_states.shape[-2]
            if self._k is None or n > self._k.shape[-2]:
                shape = (*key_states.shape[:2], n + reserve, key_states.shape[-1])
                k, v = key_states.new_empty(shape), value_states.new_empty(shape)
                if self._n:
                    k[:, :, :self._n] = self._k[:, :, :self._n]
                    v[:, :, :self._n] = self._v[:, :, :self._n]
                self._k, self._v = k, v
            self._k[:, :, self._n:n] = key_states
            self._v[:, :, self._n:n] = value_states
            self._n = n
            self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]
            return self.keys, self.values

    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer
    for k, v in past or []:
        layer = GrowingLayer()
        layer.update(k, v)
        cache.layers.append(layer)
    return cache


def keep_rows(cache, keep: torch.Tensor) -> None:
    """Shrink a dynamic cache (`growing_cache`'s or transformers' plain one) to the batch rows `keep`: a finished
    row leaves the batch, so the attention and matmuls of later tokens stop paying for it."""
    for layer in cache.layers:
        if getattr(layer, "_k", None) is not None:  # growing_cache's preallocated buffers
            layer._k, layer._v = layer._k.index_select(0, keep), layer._v.index_select(0, keep)
            layer.keys, layer.values = layer._k[:, :, :layer._n], layer._v[:, :, :layer._n]
        else:
            layer.keys, layer.values = layer.keys.index_select(0, keep), layer.values.index_select(0, keep)
