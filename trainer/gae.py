"""Generalised advantage estimation over *steps* (StepTool); the token-level variants run the same recursion over
their action tokens (trainer/ppo_round.py's unit axis: an action token's next value is the next action token's).

Step level (docs/architecture.md, "Advantages and the PPO round"), for a trajectory of T steps with
rewards r_t and values V(s_t):

    δ_t = r_t + γ·V(s_{t+1}) − V(s_t),   V(s_{T+1}) = 0
    A_t = Σ_k (γλ)^k δ_{t+k},            R_t = A_t + V(s_t)

so credit crosses steps with one factor γλ per step, never per token. The final reward reaches step 1
with weight (γλ)^(T−1) (with V = 0). The reference implementation instead runs GAE per token through
masked observation tokens, so the factor is applied hundreds of times between two actions.
"""
from __future__ import annotations

import torch


def step_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
             lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Step-level GAE.

    Args:
        rewards: [batch, steps] r_t (the KL penalty already subtracted, if any).
        values: [batch, steps] V(s_t), the value at the state each action was chosen in.
        mask: [batch, steps] 1 on real steps, 0 on padding; real steps come first in each row.
        gamma, lam: discount and GAE λ, both in [0, 1].

    Returns:
        (advantages, returns), both [batch, steps], 0 on padding. V after the last real step is 0.
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape:
        raise ValueError(f"shapes differ: rewards {tuple(rewards.shape)}, values {tuple(values.shape)}, "
                         f"mask {tuple(mask.shape)}")
    mask = mask.to(rewards.dtype)
    values = values * mask
    steps = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(last)  # 0 past the end (masked)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[:, t] = last
    return adv, (adv + values) * mask

