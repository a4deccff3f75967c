"""What every policy backend shares, without torch: the `Policy` protocol, its `Generation`s, the sampling
settings, the constrained function-name slot (`NameSlot`, see pipeline/agent/backends.py) and
`ScriptedPolicy`, which replays fixed texts (tests, demos). The agent loop (rollout.py) needs only these,
so reading artifacts or building the CLI does not import torch."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol


@dataclass
class Generation:
    token_ids: list[int]  # generated ids, the end-of-turn token included when generated
    logprobs: list[float]  # one per token id
    text: str  # decoded, without the end-of-turn token
    ended: bool  # the end-of-turn token was generated (else max_new_tokens cut it)


@dataclass(frozen=True)
class NameSlot:
    """After the last `trigger` in the generated text, the text must go on as one of `choices` (each a
    function name with the format's text around it, e.g. " Search_for_x\n"). An empty trigger constrains
    from the first generated token."""

    trigger: str
    choices: tuple[str, ...]


def slot_remainders(text: str, slot: NameSlot) -> set[str] | None:
    """What may still follow `text` in `slot`: None when the slot is not open (no trigger yet, a choice
    already completed, or the text left every choice, which can only happen if it was not constrained)."""
    if slot.trigger:
        i = ("\n" + text).rfind(slot.trigger)  # the leading newline lets a trigger match at the very start
        if i < 0:
            return None
        partial = ("\n" + text)[i + len(slot.trigger):]
    else:
        partial = text
    rests = {c[len(partial):] for c in slot.choices if c.startswith(partial)}
    if not rests or "" in rests:
        return None
    return rests


class Policy(Protocol):
    name: str

    def generate(self, prompts: list[list[int]], seeds: list[int],
                 slots: list[NameSlot | None] | None = None) -> list[Generation]: ...


@dataclass
class Request:
    """One prompt to complete; `key` comes back with its generation (`RequestSource.done`)."""
    key: object
    prompt: list[int]
    seed: int
    slot: NameSlot | None = None


class RequestSource(Protocol):
    """Where a continuously batching policy (HFPolicy.serve) gets its prompts and sends their generations. A request
    may depend on an earlier one's generation (an agent's next step on its last action and the tool's answer), so
    requests are taken as they become ready, not all at once."""

    def take(self, n: int, wait: bool) -> list[Request]:
        """Up to `n` requests ready now. `wait`: nothing is running, so block until one is ready; an empty list
        then means that none will ever come."""
        ...

    def done(self, key: object, generation: Generation) -> None: ...


class RequestList:
    """A fixed list of requests, taken in order; each generation lands in `out[key]` (HFPolicy.generate)."""

    def __init__(self, requests: list[Request]):
        self.todo = deque(requests)
        self.out: dict = {}

    def take(self, n: int, wait: bool) -> list[Request]:
        return [self.todo.popleft() for _ in range(min(n, len(self.todo)))]

    def done(self, key: object, generation: Generation) -> None:
        self.out[key] = generation


@dataclass
class SamplingConfig:
    max_new_tokens: int = 160
    temperature: float = 1.0
    top_p: float = 1.0


class ScriptedPolicy:
    """Answers each prompt with the next text of a script (for tests): ``script(prompt_ids, seed) -> text``."""

    def __init__(self, tokenizer, script, name: str = "scripted"):
        self.tok = tokenizer
        self.script = script
        self.name = name

    def generate(self, prompts: list[list[int]], seeds: list[int], slots=None) -> list[Generation]:
        out = []
        for p, seed in zip(prompts, seeds):
            text = self.script(p, seed)
            ids = self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
            out.append(Generation(ids, [0.0] * len(ids), text, True))
        return out
