"""`StepPPOConfig`: the PPO knobs on top of `transformers.TrainingArguments` (learning rate, batch sizes,
epochs = PPO epochs over the round's trajectories, seed, checkpointing, logging), each with its help."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments


def _f(default, help_: str):
    return field(default=default, metadata={"help": help_})


@dataclass
class StepPPOConfig(TrainingArguments):
    variant: Literal["steptool", "no_step_reward", "no_step_opt", "ppo_outcome"] = _f(
        "steptool", "steptool: step rewards, step-level GAE. no_step_reward: outcome reward only, step-level GAE. "
        "no_step_opt: step rewards, each step its own episode (A_t = r_t − V(s_t)). ppo_outcome: classic PPO, the "
        "outcome reward at the last action token, token-level GAE.")
    gamma: float = _f(1.0, "Discount γ per step (per token for ppo_outcome).")
    lam: float = _f(0.95, "GAE λ.")
    cliprange: float = _f(0.2, "PPO ratio clip ε.")
    cliprange_value: float = _f(0.2, "Value clip around the round's old values (0: no value clipping).")
    vf_coef: float = _f(0.5, "Weight of the value loss.")
    kl_coef: float = _f(0.02, "β of the KL penalty to the reference policy, subtracted from each step's reward.")
    kl_estimator: Literal["k1", "k3"] = _f(
        "k1", "Per-token KL estimator: k1 = log π − log π_ref (unbiased, can be negative), k3 = exp(−d) + d − 1 "
              "with d = log π − log π_ref (non-negative, lower variance).")
    entropy_coef: float = _f(0.0, "Weight of the entropy bonus on action tokens.")
    whiten_advantages: bool = _f(True, "Whiten advantages over the action steps (tokens for ppo_outcome) of a batch.")
    old_logprobs: Literal["behaviour", "recompute"] = _f(
        "recompute", "π_old of the ratio: 'behaviour' (the log-probs recorded at collection; truncated or imported "
                     "trajectories fall back to recompute) or 'recompute' (the policy at the start of the round).")
    value_init: Literal["zero", "fit_returns"] = _f(
        "fit_returns", "Value head at the start of the round: 'zero', or a ridge regression of the trunk's "
                       "features at each state onto the Monte-Carlo returns (a fitted critic for the first GAE).")
    max_length: int = _f(4096, "Longest rendered trajectory in tokens: the oldest observations are shortened first, "
                               "then whole trailing steps are dropped; an action is never split.")
    lora: bool = _f(False, "Train LoRA adapters (peft) instead of all weights; the reference is the adapters off.")
    lora_r: int = _f(16, "LoRA rank.")
    lora_alpha: int = _f(32, "LoRA alpha.")
    logits_chunk: int = _f(1024, "Action positions per lm_head chunk (bounds the [positions, vocab] logits memory).")

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"gamma and lam must be in [0, 1], got {self.gamma}, {self.lam}")
        if self.cliprange <= 0:
            raise ValueError(f"cliprange must be > 0, got {self.cliprange}")
