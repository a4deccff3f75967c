"""Where the forward passes of a model run: a pre-hook that records, for each call, the device types of the
model's parameters and of every tensor input, and whether the model was in training mode. Used by the
trainer's device test on the CPU and by bench/gpu.py on CUDA."""
from __future__ import annotations

import torch


def record_forward_devices(model: torch.nn.Module) -> list[dict]:
    """Register the hook on `model`; returns the list it appends to ({params, inputs, training})."""
    seen: list[dict] = []

    def hook(module, args, kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        seen.append({"params": {p.device.type for p in module.parameters()},
                     "inputs": {t.device.type for t in tensors}, "training": module.training})

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen
