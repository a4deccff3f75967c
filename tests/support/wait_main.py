"""The rounds' wait between processes (pipeline.devices.Processes.wait_for), for tests/test_trainer_scale.py, run
inside tests/support/multiprocess.py's launch (2 processes, gloo): the main process works for 3 s and then writes
a file, while the other waits for it with `wait_for` (polling the file, then a barrier) and records when it got
through. For contrast, a barrier alone in a process group whose timeout (1 s; NCCL's default is 10 minutes) is
shorter than the main process's work fails on the waiting side."""
from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path


def run(folder: Path) -> None:
    import torch.distributed as dist

    from pipeline.devices import Processes

    procs = Processes("cpu")
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "inputs.json"
    short = dist.new_group(backend="gloo", timeout=timedelta(seconds=1))
    t0 = time.time()
    if procs.main:
        time.sleep(3)  # the round's collection and annotation
        done.write_text(json.dumps({"written": time.time()}))
    procs.wait_for(done, poll_s=0.1)
    through = time.time()
    barrier = "passed"
    if procs.main:
        time.sleep(2)  # more work, longer than the short group's timeout
    try:
        dist.barrier(group=short)
    except Exception as e:  # noqa: BLE001 - gloo raises RuntimeError (or DistBackendError) on the timeout
        barrier = f"failed: {type(e).__name__}"
    (folder / f"rank{procs.rank}.json").write_text(json.dumps({"start": t0, "through": through, "barrier": barrier}))
    procs.wait()
