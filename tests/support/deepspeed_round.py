"""The DeepSpeed checks of tests/test_trainer_scale.py in one launch per ZeRO stage, on the CPU (DeepSpeed's CPU
accelerator over gloo):

    DS_ACCELERATOR=cpu accelerate launch --config_file configs/accelerate/zero2.yaml --num_processes 2 \\
        --mixed_precision no -m tests.support.deepspeed_round BASE OUT

    OUT/ppo              one PPO round (tests/support/ddp_train.py: a global batch of 4, 2 optimizer steps)
    OUT/warmstart        the warm start of BASE (tests/support/ddp_warmstart.py)
    OUT/whole, resumed   the round checkpointed every step, and a second run resumed from whole's checkpoint-1
    OUT/lora             (ZeRO-2 only: ZeRO-3 refuses LoRA) the round with LoRA adapters
"""
from __future__ import annotations

import sys
from pathlib import Path


def main(base: Path, out: Path) -> None:
    from accelerate.state import AcceleratorState

    from tests.support import ddp_train, ddp_warmstart

    ddp_train.main(out / "ppo")
    ddp_warmstart.main(base, out / "warmstart")
    ddp_train.main(out / "whole", save_steps=1)
    ddp_train.main(out / "resumed", resume_from=out / "whole" / "ckpt" / "checkpoint-1")
    if AcceleratorState().deepspeed_plugin.zero_stage < 3:
        ddp_train.main(out / "lora", lora=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
