"""Which device and precision a stage uses."""
from __future__ import annotations

import pytest

import pipeline.devices as devices


def test_explicit_settings_are_kept():
    assert devices.resolve_device("cpu") == "cpu"
    assert devices.resolve_precision("fp32", "cpu") == "fp32"
    assert devices.resolve_precision("bf16", "cpu") == "bf16"


def test_auto_precision_on_a_cpu_follows_amx(monkeypatch):
    monkeypatch.setattr(devices, "_cpu_has_fast_bf16", lambda: True)
    assert devices.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(devices, "_cpu_has_fast_bf16", lambda: False)
    assert devices.resolve_precision("auto", "cpu") == "fp32"


def test_auto_precision_on_a_missing_gpu_is_fp32(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_precision("auto", "cuda") == "fp32"


@pytest.mark.long
def test_the_other_processes_wait_for_the_main_ones_file_past_the_process_groups_timeout(tmp_path):
    """While the main process collects and annotates a round (here 4 s against a process group timeout of 2 s),
    the others poll for its file and then meet it at a barrier: both finish. A barrier alone fails at the
    timeout, which is why the rounds do not use one there (tests/support/wait_main.py)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    runs = {}
    for how in ("file", "barrier"):
        folder = tmp_path / how
        folder.mkdir()
        runs[how] = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                    "2", "-m", "tests.support.wait_main", how, str(folder)], cwd=repo, env=env,
                                   capture_output=True, text=True, timeout=120)
    assert runs["file"].returncode == 0, runs["file"].stderr[-2000:]
    assert {p.name for p in (tmp_path / "file").glob("rank*.ok")} == {"rank0.ok", "rank1.ok"}
    assert runs["barrier"].returncode != 0 and not (tmp_path / "barrier" / "rank1.ok").exists()
