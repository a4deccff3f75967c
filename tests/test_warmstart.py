"""Warm start: the action-only loss equals the full loss on action tokens; training lowers it; outputs load."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from pipeline.agent.prompts import ChatRenderer
from pipeline.sft import _action_only_trainer, expert_dataset, train_sft
from tests.support.tiny_model import make_tiny_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rows(world, splits, tokenizer):
    rows, stats = expert_dataset(splits["train"][:4], world, ChatRenderer(tokenizer), error_rate=0.5, seed=1)
    assert stats["paths"] == 4 and stats["action_tokens"] < stats["tokens"]
    return rows


def test_masks_cover_actions_only(rows, tokenizer):
    for r in rows:
        text_in = tokenizer.decode([t for t, m in zip(r["input_ids"], r["assistant_masks"]) if m])
        text_out = tokenizer.decode([t for t, m in zip(r["input_ids"], r["assistant_masks"]) if not m])
        assert text_in.count("Action:") == text_out.count("<|im_start|>assistant")
        assert not re.search(r"Action: (\w+_for_\w+|Finish)", text_out), "an action leaked out of the mask"
        assert "<|im_start|>" not in text_in and '"error"' not in text_in


def test_action_only_loss_equals_the_full_loss(rows, tokenizer):
    model = make_tiny_model(tokenizer)
    ids = torch.tensor([rows[0]["input_ids"]])
    labels = ids.clone()
    labels[0, torch.tensor(rows[0]["assistant_masks"]) == 0] = -100
    full = torch.nn.functional.cross_entropy(model(ids).logits[0, :-1].float(), labels[0, 1:], ignore_index=-100)
    trainer = _action_only_trainer().__new__(_action_only_trainer())
    ours = trainer.compute_loss(model, {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)})
    assert abs(float(full) - float(ours)) < 1e-5


@pytest.mark.slow
def test_sft_lowers_the_loss_and_saves_a_loadable_model(rows, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sft"
    metrics = train_sft(tiny_model_dir, rows * 3, out, epochs=1, learning_rate=3e-3, batch_size=2, seed=0)
    assert metrics["steps"] == 6 and metrics["last_loss"] < metrics["first_loss"]
    assert AutoModelForCausalLM.from_pretrained(out) is not None
    assert not (out / "_run").exists()


@pytest.mark.slow
def test_the_warm_start_on_two_processes_matches_one(tmp_path, tokenizer):
    """`accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2` on the CPU (gloo), as
    `warmstart.launcher` starts the stage: each process takes half of every step's 4 paths and the main one alone
    writes the model, which equals one process's (float tolerance: the gradient all-reduce sums in another
    order). The loss is scaled back by the number of processes, as transformers' own loss is: without that each
    step would be half as large (checked by removing it: the weights differ)."""
    import shutil
    import subprocess
    import sys

    from safetensors.torch import load_file

    from tests.support import ddp_warmstart
    from tests.support.tiny_model import save_tiny_model

    base = save_tiny_model(tmp_path / "base", tokenizer, seed=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the launched processes (OMP_NUM_THREADS=1)
    try:
        ddp_warmstart.main(base, tmp_path / "one")
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    subprocess.run([accelerate, "launch", "--config_file", "configs/accelerate/ddp.yaml", "--num_processes", "2",
                    "--mixed_precision", "no", "-m", "tests.support.ddp_warmstart", str(base), str(tmp_path / "two")],
                   cwd=REPO, env=env, check=True, timeout=300)
    assert not list(tmp_path.glob("two.*")) and not list(tmp_path.glob(".two*")), "a second writer left files"
    w1, w2, start = (load_file(d / "model.safetensors") for d in (tmp_path / "one", tmp_path / "two", base))
    assert set(w1) == set(w2)
    assert max(float((w1[k] - start[k]).abs().max()) for k in w1) > 1e-3, "training did not move the weights"
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6, msg=k)
