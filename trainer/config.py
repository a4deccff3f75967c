"""`StepPPOConfig`: `transformers.TrainingArguments` (learning rate, batch sizes, epochs = PPO epochs over the
round's trajectories, seed, checkpointing, logging) plus the `train` section of params.yaml.

The PPO knobs are defined once, in `pipeline.config.TrainConfig` (defaults and helps); its keys shared with
TrainingArguments carry the same names, so the stage builds this config from the section as is:
`StepPPOConfig(**to_dict(params.train), gamma=params.rewards.gamma, variant=..., output_dir=...)`: the
discount is the `rewards` section's, the one γ of the rewards' returns and of the advantages.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from pipeline import variants
from pipeline.config import TrainConfig


@dataclass
class StepPPOConfig(TrainConfig, TrainingArguments):
    variant: str = field(default=variants.DEFAULT, metadata={"help": "Training variant (pipeline/variants.py): "
                                                               + variants.describe() + "."})
    gamma: float = field(default=1.0, metadata={"help": "The discount γ: params.yaml's rewards.gamma, the one γ of the "
                                                        "rewards' returns and of the trainer's advantages."})

    def __post_init__(self):
        if "activation_checkpointing" in self.__dataclass_fields__ and self.activation_checkpointing is None:
            # transformers >= 5 renamed the field; the params keep the name users know (and 4.x reads)
            self.activation_checkpointing = self.gradient_checkpointing
        super().__post_init__()
        variants.get(self.variant)
        self.check("train")
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"rewards.gamma must be in [0, 1], got {self.gamma}")
