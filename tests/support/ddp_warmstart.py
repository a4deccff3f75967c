"""The warm start (pipeline/sft.py's train_sft) of a tiny model on synthetic paths, for the multi-process test: the
same global batch (4 paths a step) whatever the number of processes. Run it as

    python -m tests.support.ddp_warmstart BASE OUT                                      (one process)
    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 -m tests.support.ddp_warmstart BASE OUT

BASE is a saved tiny model (tests/support/tiny_model.save_tiny_model); OUT gets the warm-started model (written by
the main process only)."""
from __future__ import annotations

import sys
from pathlib import Path

BATCH = 4


def rows() -> list[dict]:
    """8 paths of 40-61 random tokens, the second half of each the assistant's."""
    import torch

    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(8):
        n = 40 + 3 * i
        out.append({"input_ids": torch.randint(5, 1000, (n,), generator=g).tolist(),
                    "assistant_masks": [0] * (n // 2) + [1] * (n - n // 2)})
    return out


def main(base: Path, out: Path) -> dict:
    from pipeline.sft import train_sft

    return train_sft(base, rows(), out, epochs=1, learning_rate=1e-3, batch_size=BATCH, seed=0, device="cpu")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
