"""A toy multi-step environment where exactly one action per step is right, for learning tests.

Each episode has `steps` turns. At every turn the agent writes one token, " A" (right) or " B" (wrong):
the sampler draws from those two only, so the right-action probability is p(A) / (p(A) + p(B)) at
the turn's context. Every observation is a run of " B" tokens,
so a trainer whose loss leaked onto observation tokens would learn to say " B".

Rewards as the annotate stage would give them: an intermediate step gets SC = Con/5 = 1 when right,
else 0, so r_t ∈ {0, 1}; the last step gets IsSolved = 1 when every action was right, else 0.
"""
from __future__ import annotations

import torch

from pipeline import variants
from pipeline.agent.prompts import ChatRenderer
from trainer.data import Example

RIGHT, WRONG = " A", " B"
OBSERVATION = " B" * 12
PREFIX_SYSTEM = "Answer every turn with A or B."
PREFIX_USER = "Play."


def right_ids(tok) -> tuple[int, int]:
    a = tok(RIGHT, add_special_tokens=False)["input_ids"]
    b = tok(WRONG, add_special_tokens=False)["input_ids"]
    assert len(a) == 1 and len(b) == 1
    return a[0], b[0]


@torch.no_grad()
def play(model, tok, n: int, steps: int, seed: int, variant: str) -> tuple[list[Example], float]:
    """`n` episodes sampled from `model` (each turn: A or B drawn from p(A), p(B) renormalised; every episode
    has the same length, so the batch needs no padding). Returns the examples, with the rewards of `variant`,
    and the share of right actions."""
    renderer = ChatRenderer(tok)
    prefix = renderer.prefix(PREFIX_SYSTEM, PREFIX_USER)
    a_id, b_id = right_ids(tok)
    gen = torch.Generator().manual_seed(seed)
    obs = renderer.encode(renderer.observation_segment(OBSERVATION, False))
    ctx = torch.tensor([renderer.encode(prefix)] * n)
    chosen = []
    model.eval()
    for _ in range(steps):
        logits = model(ctx, logits_to_keep=1).logits[:, -1].float()  # the last position's only: 49k-wide vocab
        p_a = torch.softmax(logits[:, [a_id, b_id]], -1)[:, 0]
        pick = torch.where(torch.rand(n, generator=gen) < p_a, a_id, b_id)
        chosen.append(pick)
        ctx = torch.cat([ctx, pick[:, None], torch.tensor([obs] * n)], 1)
    model.train()
    examples, right = [], 0
    for i in range(n):
        ok = [int(c[i]) == a_id for c in chosen]
        right += sum(ok)
        solved = float(all(ok))
        if not variants.get(variant).step_rewards:
            rewards = [0.0] * (steps - 1) + [solved]
        else:
            rewards = [float(x) for x in ok[:-1]] + [solved]
        r = renderer.render_from_prefix(prefix, [[int(c[i])] for c in chosen], [OBSERVATION] * (steps - 1),
                                        [False] * steps)
        # every episode plays the same task: one group, so rloo's baseline is the other episodes' mean
        examples.append(Example(f"toy-{seed}-{i}", r.input_ids, r.action_mask, r.step_bounds, rewards, group="toy"))
    return examples, right / (n * steps)


@torch.no_grad()
def right_probability(model, tok, steps: int) -> float:
    """Mean over the turns of p(A) / (p(A) + p(B)) along an all-right episode."""
    renderer = ChatRenderer(tok)
    a_id, b_id = right_ids(tok)
    ids = renderer.encode(renderer.prefix(PREFIX_SYSTEM, PREFIX_USER))
    model.eval()
    probs = []
    for _ in range(steps):
        logits = model(torch.tensor([ids]), logits_to_keep=1).logits[0, -1].float()
        p = torch.softmax(logits[[a_id, b_id]], -1)
        probs.append(float(p[0]))
        ids = ids + [a_id] + renderer.encode(renderer.observation_segment(OBSERVATION, False))
    model.train()
    return sum(probs) / len(probs)


def first_steps(ex: Example, k: int, group: str | None = None) -> Example:
    """The trajectory cut after its k-th action (a shorter trajectory of the same kind), in `group` if given."""
    end = ex.step_bounds[k - 1][1]
    return Example(f"{ex.traj_id}-{k}", ex.input_ids[:end], ex.action_mask[:end], ex.step_bounds[:k],
                   ex.rewards[:k], group=group or ex.group)


def mixed_lengths(model, tok, n: int = 7) -> list[Example]:
    """`n` trajectories of the toy environment cut after 1, 2, 3, 4, 1, ... actions (four lengths), as samples of
    three tasks (i % 3)."""
    full, _ = play(model, tok, n, 4, 5, "steptool")
    return [first_steps(e, 1 + i % 4, f"task-{i % 3}") for i, e in enumerate(full)]
