"""Policy backends: who writes the actions.

``HFPolicy`` samples from a transformers model: many prompts at once (left padding, KV cache),
temperature / top-p, a seed per row (a row's sample does not depend on what else is in the batch),
stop at the end-of-turn token, and the behaviour log-prob of every generated token.

**The behaviour log-prob, one definition for every backend**: ``log_softmax(logits)`` of the sampled token, at
temperature 1, before top-p and before the name mask: the model's own probability, which is what the trainer
computes (trainer/model.py, token_logprobs) and what vLLM returns by default (its "raw" log-probs). So with
`train.old_logprobs: behaviour` the first PPO ratio is 1 whatever the sampling temperature. The sampling
distribution (tempered, truncated, masked) differs from that π_old; like TRL and verl at T != 1 the trainer
treats the samples as if drawn from π_old. The torch-free parts (the `Policy` protocol, `Generation`, `NameSlot`,
``ScriptedPolicy``, which replays fixed texts) are in pipeline/agent/policy.py.

Constrained function names (`NameSlot`): right after an action's name trigger (``\nAction:`` in the
ReAct formats, ``<tool_call>\n{"name": "`` in chat_tools) the sampler may only write one of the task's
function names and its terminator, as guided decoding in vLLM or outlines would; thoughts and arguments
stay free. Sampling uses the masked distribution; the recorded log-prob is the model's own, unmasked,
so that the trainer's ratio π_θ/π_old starts at exactly 1.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field

import torch

from pipeline.agent.kvcache import (PrefixCache, RunningBatch, batch_past, growing_cache, left_padded,
                                    shared_prefixes)
from pipeline.agent.name_constraint import NameConstraint
from pipeline.agent.policy import (Generation, NameSlot, Policy, Request, RequestList, RequestSource, SamplingConfig,
                                   ScriptedPolicy, slot_remainders)

__all__ = ["Generation", "HFPolicy", "NameSlot", "OpenAIPolicy", "Policy", "SamplingConfig", "ScriptedPolicy",
           "slot_remainders"]


@dataclass
class _Row:
    """A request being decoded: its generator, the tokens and log-probs so far."""
    req: Request
    gen: torch.Generator
    tokens: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    done: bool = False


class HFPolicy:
    """Batched sampling from a causal LM on CPU or GPU."""

    def __init__(self, model, tokenizer, sampling: SamplingConfig, batch_size: int = 8, name: str = "hf",
                 device: str | None = None, kv_cache_tokens: int = 0):
        self.model = model.eval()
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        # Our cache layers are plain full-attention ones: models with sliding-window or other layer types
        # keep transformers' own cache, without prefix reuse.
        self._plain_cache = (all(t == "full_attention" for t in (getattr(cfg, "layer_types", None) or []))
                             and not getattr(cfg, "use_sliding_window", False))
        # Prefix KV cache across calls (agent steps, DFSDT siblings): 0 disables it. See kvcache.py.
        self.prefix_cache = PrefixCache(kv_cache_tokens) if kv_cache_tokens > 0 and self._plain_cache else None
        self.tok = tokenizer
        self.sampling = sampling
        self.batch_size = batch_size
        self.name = name
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model.to(self.device)
        self.eos_id = tokenizer.eos_token_id
        self._names: NameConstraint | None = None  # built at the first constrained name
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.stats = {"prompt_tokens": 0, "generated_tokens": 0, "seconds": 0.0, "forward_seconds": 0.0,
                      "joined_rows": 0}
        # A row that wrote its end-of-turn token leaves the batch (its states are stored first) and a waiting request
        # takes its place: the rest stop paying for its attention and matmuls. False keeps a batch until its longest
        # row ends (tests/test_kvcache.py compares the two on the same prompts).
        self.retire_finished = True
        # `serve` prefills the requests joining a running batch one at a time on a CPU, where a prefill costs what its
        # tokens cost and padding them to the longest is pure waste; together on an accelerator, where a forward
        # call's fixed cost dominates a short prefill.
        self.prefill_per_row = self.device.type == "cpu"
        # A prefix shared by several prompts of one call is prefilled once ahead of them when at least this long
        # (shorter ones cost a forward call for little; 0 turns it off).
        self.min_shared_prefix = 32
        # transformers 5 calls the KV cache `cache`; 4.x called it `past_key_values`.
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_kw = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def _forward(self, cache, **kw):
        t0 = time.perf_counter()
        if cache is not None:
            kw[self._cache_kw] = cache
        out = self.model(use_cache=True, **self._keep_kw, **kw)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        logits = out.logits[:, -1, :].float()
        # the model's own time (exact on a CPU; on a GPU, where kernels run asynchronously, only what launching
        # them took): bench/agent.py gives the agent's throughput as a share of these forward calls alone
        self.stats["forward_seconds"] += time.perf_counter() - t0
        return cache, logits

    @classmethod
    def from_pretrained(cls, path: str, sampling: SamplingConfig, batch_size: int = 8, device: str | None = None,
                        dtype: str = "float32", kv_cache_tokens: int = 0):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        return cls(model, tok, sampling, batch_size, name=str(path), device=device, kv_cache_tokens=kv_cache_tokens)

    @staticmethod
    def _cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """(keys, values) per layer of a plain dynamic cache, else None (sliding windows, quantized or
        static caches: their states cannot be sliced per row, so the prefix cache is skipped)."""
        from transformers.cache_utils import DynamicLayer

        layers = getattr(cache, "layers", None)
        if not layers or any(not isinstance(layer, DynamicLayer) or getattr(layer, "is_sliding", False)
                             for layer in layers):
            return None
        return [(layer.keys, layer.values) for layer in layers]

    def _prefill(self, prompts: list[list[int]], count: bool = True):
        """Run the prompts, reusing cached prefixes. Returns (cache, last logits, attention mask, next position).
        `count`: the lookups go into the prefix cache's stats (not for the shared prefixes run ahead)."""
        bsz = len(prompts)
        hits = ([self.prefix_cache.lookup(p, count) for p in prompts] if self.prefix_cache else [(None, 0)] * bsz)
        reused = [n for _, n in hits]
        ids, mask, positions = left_padded([p[n:] for p, n in zip(prompts, reused)], reused, self.pad_id)
        ids, mask, positions = ids.to(self.device), mask.to(self.device), positions.to(self.device)
        reserve = self.sampling.max_new_tokens + 1
        past = None
        if max(reused) > 0:
            layers, past_mask = batch_past(hits, ids.device)
            past = growing_cache(ids.shape[1] + reserve, layers)  # room for the new tokens: no second copy of the past
            mask = torch.cat([past_mask, mask], dim=1)
        elif self._plain_cache:
            past = growing_cache(reserve)
        cache, logits = self._forward(past, input_ids=ids, attention_mask=mask, position_ids=positions)
        return cache, logits, mask, positions[:, -1] + 1

    def _store(self, cache, mask: torch.Tensor, rows: list[tuple[int, list[int]]]) -> None:
        """Keep the states of each (batch position, prompt + generated tokens but the last, which never ran)."""
        layers = self._cache_layers(cache)
        if layers is None:
            return
        for b, seq in rows:
            where = mask[b].nonzero().view(-1)[:len(seq)]
            if where.numel() != len(seq):
                continue
            self.prefix_cache.store(seq, [(k[b].index_select(1, where), v[b].index_select(1, where))
                                          for k, v in layers])

    def generate(self, prompts: list[list[int]], seeds: list[int],
                 slots: list[NameSlot | None] | None = None) -> list[Generation]:
        """One generation per prompt: `serve` over the prompts, shortest first (similar lengths pad less)."""
        if len(prompts) != len(seeds) or (slots is not None and len(slots) != len(prompts)):
            raise ValueError("one seed (and one slot, when given) per prompt")
        slots = slots or [None] * len(prompts)
        t0 = time.perf_counter()
        self._run_shared_prefixes(prompts)
        self.stats["seconds"] += time.perf_counter() - t0
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        source = RequestList([Request(i, prompts[i], seeds[i], slots[i]) for i in order])
        self.serve(source)
        return [source.out[i] for i in range(len(prompts))]

    @torch.no_grad()
    def _run_shared_prefixes(self, prompts: list[list[int]]) -> None:
        """Prefill once what several prompts of this call share and the prefix cache does not hold yet (the system
        prompt's preamble across tasks, a task's samples, DFSDT siblings), and store it: each row then prefills only
        its own rest. Without this a batch computes a shared prefix once per row, where a batch_size=1 policy reuses
        it from the cache from the second row on (bench/agent.py)."""
        if self.prefix_cache is None or len(prompts) < 2 or self.min_shared_prefix <= 0:
            return
        todo = [p for p in shared_prefixes(prompts, self.min_shared_prefix) if self.prefix_cache.served(p) < len(p)]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            cache, _, mask, _ = self._prefill(chunk, count=False)
            self._store(cache, mask, list(enumerate(chunk)))

    def allowed_tokens(self, generated: list[int], slot: NameSlot) -> list[int] | None:
        """Token ids that keep `generated` inside one of the slot's choices, or None when unconstrained
        (pipeline/agent/name_constraint.py; the vocabulary is indexed once per policy)."""
        if self._names is None:
            self._names = NameConstraint(self.tok)
        return self._names.allowed(generated, slot)

    def _choose(self, logits: torch.Tensor, rows: list["_Row"]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's next token (its name slot's mask applied, its own generator) and the token's log-prob."""
        masked = None
        for b, row in enumerate(rows):
            if row.req.slot is not None and not row.done:
                allowed = self.allowed_tokens(row.tokens, row.req.slot)
                if allowed is not None:
                    if masked is None:
                        masked = logits.clone()
                    keep = torch.full_like(logits[b], float("-inf"))
                    keep[allowed] = 0.0
                    masked[b] += keep
        return self._sample(logits, [row.gen for row in rows], masked)

    @torch.no_grad()
    def serve(self, source: RequestSource) -> None:
        """Continuous batching: complete the requests `source` hands out, `batch_size` rows decoding together.

        A row that writes its end-of-turn token (or its `max_new_tokens`-th) leaves the batch at once: its states go
        to the prefix cache, its generation to `source.done` (where an agent makes the tool call and readies its next
        prompt), and the rows still writing go on. Waiting requests join the running rows as soon as a row is free
        (joining costs only their own states, so there is nothing to gain by waiting for more of them: measured on
        bench/agent.py's plays, admitting at 1 free row of 16 instead of 4 took 9% fewer decode steps and was about
        6% faster end to end). An agent step therefore never waits for the longest action of
        the others, as one `generate` per agent step would. On a CPU a joining request is prefilled on its own (reusing
        its cached prefix), not padded to the longest of the requests joining with it: a prefill costs what its
        tokens cost there, and padding was a third of the prefilled tokens on bench/agent.py's plays. Its states are
        written into the running batch's free rows (kvcache.RunningBatch: no copy of the running rows, none when a
        row leaves). Each row samples with its own generator, so a request's tokens do not depend on the rows beside
        it (up to float rounding). Models whose cache is not plain full attention, or `retire_finished = False`,
        prefill a batch's requests together and keep the batch until its last row ends."""
        t0 = time.perf_counter()
        outside = 0.0  # seconds in the source (tool calls, the agent's bookkeeping)
        s = self.sampling
        reserve = s.max_new_tokens + 1
        dynamic = self.retire_finished and self._plain_cache  # rows can leave and join a running batch
        batch = RunningBatch(reserve, self.batch_size)
        rows: list[_Row] = []
        cache = mask = next_pos = logits = None
        while True:
            free = self.batch_size - len(rows)
            if free and (not rows or dynamic):
                t1 = time.perf_counter()
                new = source.take(free, wait=not rows)
                outside += time.perf_counter() - t1
                if new:
                    prompts = [r.prompt for r in new]
                    self._run_shared_prefixes(prompts)
                    if dynamic:
                        groups = [[p] for p in prompts] if self.prefill_per_row else [prompts]
                        fresh = [self._prefill(g) for g in groups]
                        self.stats["joined_rows"] += len(new) if rows else 0
                        batch.admit([(c, m) for c, _, m, _ in fresh])
                        cache, mask = batch.cache, batch.mask
                        lg, pos = torch.cat([f[1] for f in fresh]), torch.cat([f[3] for f in fresh])
                        next_pos, logits = (torch.cat([next_pos, pos]), torch.cat([logits, lg])) if rows else (pos, lg)
                    else:
                        cache, logits, mask, next_pos = self._prefill(prompts)
                    rows += [_Row(r, torch.Generator().manual_seed(int(r.seed) % (2**63))) for r in new]
                    self.stats["prompt_tokens"] += sum(len(p) for p in prompts)
            if not rows:
                break
            chosen, chosen_lp = self._choose(logits, rows)
            for b, row in enumerate(rows):
                if not row.done:
                    row.tokens.append(int(chosen[b]))
                    row.logps.append(float(chosen_lp[b]))
                    row.done = row.tokens[-1] == self.eos_id or len(row.tokens) >= s.max_new_tokens
            leaving = [b for b, row in enumerate(rows) if row.done] if dynamic else \
                (list(range(len(rows))) if all(row.done for row in rows) else [])
            if leaving:
                if self.prefix_cache is not None:  # (a row's last token never ran)
                    self._store(cache, mask, [(b, rows[b].req.prompt + rows[b].tokens[:-1]) for b in leaving])
                t1 = time.perf_counter()
                for b in leaving:
                    self.stats["generated_tokens"] += len(rows[b].tokens)
                    source.done(rows[b].req.key, self._generation(rows[b]))
                outside += time.perf_counter() - t1
                gone = set(leaving)
                order = batch.retire([b for b in range(len(rows)) if b not in gone])
                rows = [rows[b] for b in order]
                if not rows:
                    cache = None
                    continue
                idx = torch.tensor(order)
                mask, next_pos, chosen = batch.mask, next_pos[idx.to(next_pos.device)], chosen[idx]
            step_ids = chosen.view(len(rows), 1).to(self.device)
            if dynamic:
                mask = batch.step()
            else:
                mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=self.device)], dim=1)
            cache, logits = self._forward(cache, input_ids=step_ids, attention_mask=mask,
                                          position_ids=next_pos.view(len(rows), 1))
            next_pos = next_pos + 1
        self.stats["seconds"] += time.perf_counter() - t0 - outside

    def _generation(self, row: "_Row") -> Generation:
        t = row.tokens
        ended = bool(t) and t[-1] == self.eos_id
        return Generation(t, row.logps, self.tok.decode(t[:-1] if ended else t, skip_special_tokens=False), ended)

    def _sample(self, logits: torch.Tensor, gens: list[torch.Generator],
                masked: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample from `masked` (constrained rows) or `logits`; the log-prob is always from `logits`."""
        s = self.sampling
        draw = logits if masked is None else masked
        logp = torch.log_softmax(logits.float(), dim=-1)  # the recorded log-prob: T = 1, unmasked

        def recorded(chosen: torch.Tensor) -> torch.Tensor:  # gathered where the logits are (no [B, V] copy)
            return logp.gather(-1, chosen.to(logp.device).view(-1, 1)).view(-1).cpu()

        if s.temperature <= 0:
            chosen = draw.argmax(dim=-1).cpu()
            return chosen, recorded(chosen)
        probs = torch.softmax(draw.float() / s.temperature, dim=-1).cpu()  # sampled on the CPU: a generator per row
        if s.top_p < 1.0:
            sorted_p, sorted_i = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < s.top_p  # always keeps the most likely token
            sorted_p = sorted_p * keep
            probs = torch.zeros_like(probs).scatter(-1, sorted_i, sorted_p)
        chosen = torch.stack([torch.multinomial(probs[r], 1, generator=g)[0] for r, g in enumerate(gens)])
        return chosen, recorded(chosen)


class OpenAIPolicy:
    """Any OpenAI-compatible completions server that takes token ids (vLLM, SGLang; `vllm serve DIR` names the
    model DIR).

    Prompts go as token ids, the rendered ids themselves, so the server conditions on exactly what the HF
    backend would; ids come back as ids (vLLM's `return_tokens_as_token_ids`) with the server's log-probs,
    which vLLM computes at temperature 1 before any processing ("raw"), this project's behaviour log-prob
    (see the module doc). A server that returns text tokens instead gets its text re-encoded; log-probs that
    do not align with those ids are NaN (the trainer then recomputes them) and counted (`misaligned`).

    Constrained names (`NameSlot`): an action is generated in up to three requests, as the HF backend masks
    only the name: free text until the slot's trigger (a stop string, kept in the output), then the name as a
    structured-output choice among the slot's choices (`constraint`: 'structured_outputs' for vLLM >= 0.10.2,
    'guided_choice' for older vLLM, 'none' to send one free request), then the rest, free. The three parts'
    ids and log-probs are concatenated; the token budget is shared.

    The prompts of a call run `concurrency` at a time, with tenacity retries (exponential backoff) on 429, 5xx,
    timeouts and dropped connections. The API key comes from the environment variable `api_key_env` and is
    never logged or written.
    """

    def __init__(self, base_url: str, model: str, tokenizer, sampling: SamplingConfig, *, concurrency: int = 8,
                 api_key_env: str = "OPENAI_API_KEY", max_retries: int = 6, timeout_s: float = 120.0,
                 name: str | None = None, constraint: str = "structured_outputs"):
        import os

        from openai import OpenAI

        if constraint not in ("structured_outputs", "guided_choice", "none"):
            raise ValueError(f"constraint must be structured_outputs, guided_choice or none, got {constraint!r}")
        self.tok = tokenizer
        self.sampling = sampling
        self.model = model
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.constraint = constraint
        self.name = name or model
        self.eos_id = tokenizer.eos_token_id
        self.client = OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "EMPTY", timeout=timeout_s,
                             max_retries=0)  # retries are ours (tenacity), so they are counted and bounded
        self.stats = {"prompt_tokens": 0, "generated_tokens": 0, "seconds": 0.0, "retries": 0, "misaligned": 0,
                      "requests": 0, "constrained_names": 0}

    def generate(self, prompts: list[list[int]], seeds: list[int],
                 slots: list[NameSlot | None] | None = None) -> list[Generation]:
        from concurrent.futures import ThreadPoolExecutor

        if len(prompts) != len(seeds) or (slots is not None and len(slots) != len(prompts)):
            raise ValueError("one seed (and one slot, when given) per prompt")
        t0 = time.perf_counter()
        slots = slots or [None] * len(prompts)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            out = list(pool.map(self._one, prompts, seeds, slots))
        self.stats["prompt_tokens"] += sum(len(p) for p in prompts)
        self.stats["generated_tokens"] += sum(len(g.token_ids) for g in out)
        self.stats["seconds"] += time.perf_counter() - t0
        return out

    def _one(self, prompt: list[int], seed: int, slot: NameSlot | None) -> Generation:
        budget = self.sampling.max_new_tokens
        if slot is None or self.constraint == "none":
            ids, lps, finish = self._complete(prompt, seed, budget)
            return self._generation(ids, lps, finish == "stop")
        ids: list[int] = []
        lps: list[float] = []
        finish = "length"
        if slot.trigger:  # 1: free text up to the trigger
            ids, lps, finish = self._complete(prompt, seed, budget, stop=slot.trigger)
            if (ids and ids[-1] == self.eos_id) or len(ids) >= budget:
                return self._generation(ids, lps, finish == "stop")
        # 2: the name: what may still follow (the trigger's last token can carry a character of it) as the
        # server's structured-output choice; a closing end-of-turn token the grammar forces is not the action's
        rests = slot_remainders(self.tok.decode(ids, skip_special_tokens=False), slot)
        if rests is None:  # stopped before the trigger (a stop string cannot be missed: it ended otherwise)
            return self._generation(ids, lps, finish == "stop")
        name_ids, name_lps, _ = self._complete(prompt + ids, seed + 1, budget - len(ids), choices=tuple(sorted(rests)))
        if name_ids and name_ids[-1] == self.eos_id:
            name_ids, name_lps = name_ids[:-1], name_lps[:-1]
        ids, lps = ids + name_ids, lps + name_lps
        self.stats["constrained_names"] += 1
        if len(ids) >= budget:
            return self._generation(ids, lps, False)
        rest_ids, rest_lps, finish = self._complete(prompt + ids, seed + 2, budget - len(ids))  # 3: the rest
        return self._generation(ids + rest_ids, lps + rest_lps, finish == "stop")

    def _generation(self, ids: list[int], lps: list[float], stopped: bool) -> Generation:
        import math

        ended = bool(ids) and ids[-1] == self.eos_id
        if stopped and not ended:  # the server stopped on end-of-turn without returning it
            ids, lps, ended = ids + [self.eos_id], lps + [math.nan], True
        text = self.tok.decode(ids[:-1] if ended else ids, skip_special_tokens=False)
        return Generation(ids, lps, text, ended)

    def _complete(self, prompt: list[int], seed: int, max_tokens: int, stop: str | None = None,
                  choices: tuple[str, ...] | None = None) -> tuple[list[int], list[float], str]:
        """One completion request: (generated ids, their log-probs, finish reason)."""
        import math

        import openai
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential, wait_random

        def count_retry(state):
            self.stats["retries"] += 1

        s = self.sampling
        extra: dict = {"return_tokens_as_token_ids": True, "skip_special_tokens": False,
                       "stop_token_ids": [self.eos_id], "include_stop_str_in_output": True}
        if choices is not None:
            extra.update({"structured_outputs": {"choice": list(choices)}} if self.constraint == "structured_outputs"
                         else {"guided_choice": list(choices)})
        retrying = Retrying(
            retry=retry_if_exception_type((openai.RateLimitError, openai.APIConnectionError, openai.APITimeoutError,
                                           openai.InternalServerError)),
            wait=wait_exponential(multiplier=0.05, max=8.0) + wait_random(0, 0.05),
            stop=stop_after_attempt(self.max_retries),
            before_sleep=count_retry, reraise=True)
        resp = retrying(self.client.completions.create, model=self.model, prompt=prompt, max_tokens=max_tokens,
                        temperature=s.temperature, top_p=s.top_p, seed=int(seed) % (2**31), logprobs=1,
                        stop=[stop] if stop else None, extra_body=extra)
        self.stats["requests"] += 1
        choice = resp.choices[0]
        tokens = list(getattr(choice.logprobs, "tokens", None) or []) if choice.logprobs else []
        server_lp = list(getattr(choice.logprobs, "token_logprobs", None) or []) if choice.logprobs else []
        if tokens and all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
            ids = [int(t.split(":", 1)[1]) for t in tokens]
        else:  # a server without token-id output: re-encode its text
            ids = self.tok(choice.text or "", add_special_tokens=False)["input_ids"]
        if len(server_lp) == len(ids) and all(x is not None for x in server_lp):
            lps = [float(x) for x in server_lp]
        else:
            self.stats["misaligned"] += 1
            lps = [math.nan] * len(ids)
        return ids, lps, choice.finish_reason or "length"
