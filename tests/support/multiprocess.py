"""The multi-process checks of tests/test_trainer_scale.py in one launch (each launch costs two interpreter
start-ups): under `accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2` on the CPU
(gloo), one after the other,

    OUT/warmstart   the warm start of BASE (tests/support/ddp_warmstart.py: 4 paths a step, half on each process)
    OUT/ppo         one PPO round of the tiny model (tests/support/ddp_train.py: a global batch of 4)
    OUT/fsdp.json   the round's precompute with the policy sharded by FSDP2 (tests/support/fsdp_precompute.py)
    OUT/wait        the wait between rounds (tests/support/wait_main.py)

    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 -m tests.support.multiprocess BASE OUT
"""
from __future__ import annotations

import sys
from pathlib import Path


def main(base: Path, out: Path) -> None:
    from tests.support import ddp_train, ddp_warmstart, fsdp_precompute, wait_main

    ddp_warmstart.main(base, out / "warmstart")
    ddp_train.main(out / "ppo")
    fsdp_precompute.run(out / "fsdp.json")
    wait_main.run(out / "wait")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
