"""Two processes under torchrun for tests/test_devices.py: the main one works for longer than the process
group's timeout (2 s here; NCCL's default is 10 minutes) and then writes a file, while the other waits for it,
with `Processes.wait_for` (polling the file, then a barrier) or with `Processes.wait` (a barrier alone).

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.support.wait_main file|barrier DIR
"""
from __future__ import annotations

import sys
import time
from datetime import timedelta
from pathlib import Path


def main(how: str, folder: Path) -> None:
    import torch.distributed as dist

    from pipeline.devices import Processes

    dist.init_process_group("gloo", timeout=timedelta(seconds=2))  # accelerate's PartialState takes this group
    procs = Processes("cpu")
    done = folder / "inputs.json"
    if procs.main:
        time.sleep(4)  # the round's collection and annotation
        done.write_text("{}")
    if how == "file":
        procs.wait_for(done, poll_s=0.2)
    else:
        procs.wait()
    (folder / f"rank{procs.rank}.ok").write_text("")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
