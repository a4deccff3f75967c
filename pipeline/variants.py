"""The training variants of the paper's ablation, as data: one entry per variant with the properties that
the reward table, the trainer, the params check, the CLI and `dvc.yaml`'s foreach (through `params.yaml`'s
`variants`) read. Nothing else compares variant names. Adding a fifth variant is one `register` call here
(plus its test); see docs/architecture.md, "Variants".
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    name: str
    step_rewards: bool
    """True: intermediate steps earn the configured shaping's step reward (rewards.shaping: paper, progress or
    min_form, pipeline/rewards.py); False: only the last step's IsSolved counts."""
    credit_across_steps: bool
    """True: a step's advantage includes later steps' rewards (γ as configured); False: γ = 0, each step alone."""
    token_level: bool
    """True: classic PPO, GAE over action tokens with the reward on each action's last token; False: GAE over
    steps, every token of action t gets A_t."""
    help: str

    def discount(self, gamma: float) -> float:
        """The γ this variant's credit uses: the configured one across steps, 0 when each step stands alone."""
        return gamma if self.credit_across_steps else 0.0


REGISTRY: dict[str, Variant] = {}


def register(variant: Variant) -> Variant:
    if variant.name in REGISTRY:
        raise ValueError(f"variant {variant.name!r} is registered twice")
    REGISTRY[variant.name] = variant
    return variant


register(Variant("steptool", step_rewards=True, credit_across_steps=True, token_level=False,
                 help="step rewards, step-level GAE (the paper's method)"))
register(Variant("no_step_reward", step_rewards=False, credit_across_steps=True, token_level=False,
                 help="outcome reward only, step-level GAE"))
register(Variant("no_step_opt", step_rewards=True, credit_across_steps=False, token_level=False,
                 help="step rewards, no credit across steps (A_t = r_t - V(s_t))"))
register(Variant("ppo_outcome", step_rewards=False, credit_across_steps=True, token_level=True,
                 help="classic PPO: outcome reward at the last action token, token-level GAE"))

def names() -> tuple[str, ...]:
    """Every registered variant, in the order registered (read when asked: one registered later counts)."""
    return tuple(REGISTRY)


DEFAULT = names()[0]  # the paper's method
OUTCOME_BASELINE = "ppo_outcome"  # what the report compares every other variant with, besides SFT


def get(name: str) -> Variant:
    """The registered variant `name`; ValueError naming the known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r} (one of {', '.join(REGISTRY)})") from None


def describe() -> str:
    """One line per variant, for helps and the report."""
    return "; ".join(f"{v.name}: {v.help}" for v in REGISTRY.values())
