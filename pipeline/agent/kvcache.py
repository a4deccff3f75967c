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


_GROWING_LAYER = None


def _growing_layer():
    """The cache layer of `growing_cache` (a transformers `DynamicLayer`), made once: transformers is imported only
    when a policy runs."""
    global _GROWING_LAYER
    if _GROWING_LAYER is None:
        from transformers.cache_utils import DynamicLayer

        class GrowingLayer(DynamicLayer):
            """States in a preallocated buffer `[capacity rows, heads, columns, head_dim]`: the model sees rows
            `[:_b]` and columns `[_s:_n]` (`keys`, `values` are views), and writes the next token at column `_n`.
            `RunningBatch` adds and removes rows and trims leading columns in place."""

            def __init__(self, reserve: int):
                super().__init__()
                self.reserve = reserve
                self._k = self._v = None
                self._b = self._s = self._n = 0

            def regrow(self, like_k: torch.Tensor, like_v: torch.Tensor, rows: int, width: int, extra: int = 0):
                """Move the live states into a new buffer of `rows` rows: `width` columns (at least the live ones,
                which end right-aligned in them) after `_room`'s free columns on the left, and `extra` plus
                `_room`'s on the right. `like_k`, `like_v` give the heads, head_dim and dtype."""
                if not self.is_initialized:
                    self.lazy_initialization(like_k, like_v)
                left, right = _room(width, self.reserve)
                end = left + width
                shape = (rows, like_k.shape[1], end + extra + right, like_k.shape[-1])
                k, v = like_k.new_empty(shape), like_v.new_empty(shape)
                live = self._n - self._s
                if live:
                    k[:self._b, :, end - live:end] = self.keys
                    v[:self._b, :, end - live:end] = self.values
                self._k, self._v, self._s, self._n = k, v, end - live, end
                return self._view()

            def _view(self):
                self.keys = self._k[:self._b, :, self._s:self._n]
                self.values = self._v[:self._b, :, self._s:self._n]
                return self

            def update(self, key_states, value_states, *args, **kwargs):
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                t = key_states.shape[-2]
                if self._k is None:
                    self._b = key_states.shape[0]
                if self._k is None or self._n + t > self._k.shape[-2]:  # full: a new buffer for the live columns
                    self.regrow(key_states, value_states, self._b if self._k is None else self._k.shape[0],
                                self._n - self._s, extra=t)
                self._k[:self._b, :, self._n:self._n + t] = key_states
                self._v[:self._b, :, self._n:self._n + t] = value_states
                self._n += t
                self._view()
                return self.keys, self.values

        _GROWING_LAYER = GrowingLayer
    return _GROWING_LAYER


def growing_cache(reserve: int, past: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
    """A transformers `DynamicCache` whose layers write new states into a preallocated buffer instead of
    concatenating at every token. The stock layer's `torch.cat` copies the whole cache per generated token:
    measured on 2 CPU cores, 66% of a decode step at batch 8 and 600 tokens of context. Room for `reserve`
    more tokens is made whenever the buffer is full (one copy per `reserve` tokens)."""
    from functools import partial

    from transformers import DynamicCache

    layer = _growing_layer()
    cache = DynamicCache()
    cache.layer_class_to_replicate = partial(layer, reserve)
    for k, v in past or []:
        grown = layer(reserve)
        grown.update(k, v)
        cache.layers.append(grown)
    return cache


def _room(width: int, reserve: int) -> tuple[int, int]:
    """Free columns a new buffer for `width` live ones gets on the left (for joining rows longer than the running
    ones: a chain's next prompt is its last one, an action and an answer) and on the right (tokens to write before
    the next copy; at least `reserve`). A quarter of the width each: a running batch under continuous batching lives
    for many actions, one column per decode step, and every new buffer copies all its rows."""
    return width // 4, max(reserve, width // 4)


def _used(mask: torch.Tensor) -> int:
    """The first column of a `[B, W]` attention mask that some row uses (W when none does)."""
    used = mask.any(0).nonzero()
    return int(used[0, 0]) if used.numel() else mask.shape[1]


class RunningBatch:
    """The KV states and attention mask of the rows decoding together under continuous batching (HFPolicy.serve),
    kept in one preallocated buffer per layer (`growing_cache`'s layers) for `capacity` rows.

    Rows are right-aligned: every row writes its next token at the same column, and the mask `[rows, W]` marks each
    row's own positions (1) against padding (0). A finished row leaves by taking the last row's place (`retire`: one
    row copied per leaving row, not the whole batch), and leading columns that no row uses any more are dropped from
    the view; joining rows are written into free rows, right-aligned (`admit`: only their own states are copied).
    A new buffer is made, and everything copied once, only when rows or columns run out. Padding positions hold
    zeros or the finite states of rows that left, never uninitialised memory: a masked position's value still meets
    a zero weight in attention, and 0 * NaN is NaN."""

    def __init__(self, reserve: int, capacity: int):
        self.reserve, self.capacity = reserve, capacity
        self.cache = None
        self.mask: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    def admit(self, parts: list[tuple[object, torch.Tensor]]) -> None:
        """Add the rows of `parts` after the running ones: [(cache, attention mask [B_i, W_i])], each cache's layers
        holding W_i positions (a prefill's cache); their columns that no row uses are left out."""
        leads = [_used(m) for _, m in parts]
        widths = [m.shape[1] - lead for (_, m), lead in zip(parts, leads)]
        adding = sum(m.shape[0] for _, m in parts)
        if self.mask is None:
            self.mask = parts[0][1].new_zeros((0, 0))
        first = self.cache.layers[0] if self.cache is not None else None
        if first is None or self.rows + adding > first._k.shape[0] or max(widths) > first._n:
            self._renew(parts[0][0], self.rows + adding, max(widths + [self.mask.shape[1]]))
            first = self.cache.layers[0]
        start = min(first._s, first._n - max(widths))
        grow = first._s - start  # columns the running rows gain on the left (their padding)
        at = self.rows
        for li, layer in enumerate(self.cache.layers):
            for buf, name in ((layer._k, "keys"), (layer._v, "values")):
                if grow:
                    buf[:at, :, start:layer._s] = 0
                row = at
                for (cache, m), lead, w in zip(parts, leads, widths):
                    n = m.shape[0]
                    buf[row:row + n, :, start:layer._n - w] = 0
                    buf[row:row + n, :, layer._n - w:layer._n] = getattr(cache.layers[li], name)[:, :, lead:]
                    row += n
            layer._b, layer._s = at + adding, start
            layer._view()
        width = first._n - start
        running = torch.cat([self.mask.new_zeros((at, grow)), self.mask], dim=1)
        self.mask = torch.cat([running] + [torch.cat([m.new_zeros((m.shape[0], width - w)), m[:, lead:]], dim=1)
                                           for (_, m), lead, w in zip(parts, leads, widths)])

    def _renew(self, like, rows: int, width: int) -> None:
        """A new buffer per layer for `rows` rows (at least `capacity`) and `width` columns with room around them
        (`_room`), the running rows copied in, right-aligned (what `admit` needs when rows or columns run out).
        `like`: a cache whose layers give the heads, head_dim and dtype."""
        if self.cache is None:
            layer = _growing_layer()
            self.cache = growing_cache(self.reserve)
            self.cache.layers.extend(layer(self.reserve) for _ in like.layers)
        for mine, template in zip(self.cache.layers, like.layers):
            mine.regrow(template.keys, template.values, max(rows, self.capacity), width)

    def retire(self, keep: list[int]) -> list[int]:
        """Keep only the rows `keep` (ascending): each kept row beyond the new row count moves into a leaving row's
        place. Returns the new order (row i now holds what row order[i] held); leading columns no kept row uses
        leave the view."""
        new = len(keep)
        kept = set(keep)
        holes = [i for i in range(new) if i not in kept]
        movers = [i for i in keep if i >= new]
        order = list(range(new))
        for h, m in zip(holes, movers):
            order[h] = m
        if new == 0:
            self.cache = self.mask = None
            return order
        self.mask = self.mask[order]
        trim = _used(self.mask)
        self.mask = self.mask[:, trim:]
        for layer in self.cache.layers:
            if movers:
                s, n = layer._s, layer._n
                layer._k[holes, :, s:n] = layer._k[movers, :, s:n]
                layer._v[holes, :, s:n] = layer._v[movers, :, s:n]
            layer._b, layer._s = new, layer._s + trim
            layer._view()
        return order

    def step(self) -> torch.Tensor:
        """The mask with one more column for the token every row is about to run."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=1)
        return self.mask
