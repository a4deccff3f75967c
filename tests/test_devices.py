"""Which device and precision a stage uses."""
from __future__ import annotations

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

