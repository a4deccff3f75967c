"""Which tokens the constrained function name allows, for the sampler and for the trainer.

`HFPolicy` (pipeline/agent/backends.py) samples a function name's tokens from the model's distribution masked to
`NameConstraint.allowed`; with `train.name_logprobs: constrained` the trainer recomputes the same sets from the
collected action ids (`NameConstraint.per_action_token`) and trains the log-probs of that masked distribution
(docs/architecture.md, "Constrained names in the loss"). Torch-free: the sets are token ids, built from each
token's text alone.
"""
from __future__ import annotations

import bisect

from pipeline.agent.policy import NameSlot, slot_remainders
from pipeline.agent.prompts import name_slot


def token_texts(tok) -> list[str]:
    """The text of every token id alone (what `tok.batch_decode([[i] ...])` gives). The Rust tokenizer's own
    batch decode is ~15x faster than transformers' per-item Python (0.09 s against 1.35 s for SmolLM2's 49k
    tokens: once per policy, so once per collect or evaluate process); a tokenizer that post-processes decoded
    text (`clean_up_tokenization_spaces`) or has no Rust backend goes through `batch_decode`."""
    ids = [[i] for i in range(len(tok))]
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None and not getattr(tok, "clean_up_tokenization_spaces", False):
        return backend.decode_batch(ids, skip_special_tokens=False)
    return tok.batch_decode(ids, skip_special_tokens=False)


def function_name_slot(fmt: str, function_names) -> NameSlot:
    """The slot of a task whose functions are `function_names` (Finish is always a choice)."""
    trigger, before, after = name_slot(fmt)
    return NameSlot(trigger, tuple(before + n + after for n in sorted(set(function_names) | {"Finish"})))


class NameConstraint:
    """A tokenizer's vocabulary indexed by token text (built once; the end-of-turn token is never allowed)."""

    def __init__(self, tokenizer):
        self.token_text = token_texts(tokenizer)
        self.eos_id = tokenizer.eos_token_id
        by_text: dict[str, list[int]] = {}
        for i, t in enumerate(self.token_text):
            if t and i != self.eos_id:
                by_text.setdefault(t, []).append(i)
        self.by_text = by_text
        self.sorted_texts = sorted(by_text)

    def allowed(self, generated: list[int], slot: NameSlot) -> list[int] | None:
        """Token ids that keep `generated` inside one of the slot's choices, or None when unconstrained: tokens
        spelling a prefix of a remainder, and tokens that complete it and run on (e.g. '",' after a name)."""
        return self._allowed("".join(self.token_text[t] for t in generated), slot)

    def _allowed(self, text: str, slot: NameSlot) -> list[int] | None:
        rests = slot_remainders(text, slot)
        if rests is None:
            return None
        allowed: set[int] = set()
        for rest in rests:
            for k in range(1, len(rest) + 1):
                allowed.update(self.by_text.get(rest[:k], ()))
            j = bisect.bisect_left(self.sorted_texts, rest)
            while j < len(self.sorted_texts) and self.sorted_texts[j].startswith(rest):
                allowed.update(self.by_text[self.sorted_texts[j]])
                j += 1
        return sorted(allowed)

    def per_action_token(self, action_ids: list[int], slot: NameSlot) -> dict[int, list[int]]:
        """{k: the ids the sampler allowed at action token k} for the action's constrained tokens (the others
        were sampled from the whole vocabulary). An action the sampler wrote under `slot` holds its own token k
        in the set at k; one that was not (a scripted or imported action) may not, and the caller decides."""
        out: dict[int, list[int]] = {}
        text = ""
        for k, t in enumerate(action_ids):
            allowed = self._allowed(text, slot)
            if allowed is not None:
                out[k] = allowed
            text += self.token_text[t]
        return out
