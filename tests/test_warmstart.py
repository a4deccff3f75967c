"""Warm start: the action-only loss equals the full loss on action tokens; training lowers it; outputs load."""
from __future__ import annotations

import re

import pytest
import torch

from pipeline.agent.prompts import ChatRenderer
from pipeline.sft import _action_only_trainer, expert_dataset, train_sft
from tests.support.tiny_model import make_tiny_model


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
    assert abs(float(full.detach()) - float(ours.detach())) < 1e-5


@pytest.mark.slow
def test_sft_lowers_the_loss_and_saves_a_loadable_model(rows, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sft"
    metrics = train_sft(tiny_model_dir, rows * 3, out, epochs=1, learning_rate=3e-3, batch_size=2, seed=0)
    assert metrics["steps"] == 6 and metrics["last_loss"] < metrics["first_loss"]
    assert AutoModelForCausalLM.from_pretrained(out) is not None
    assert not (out / "_run").exists()


def test_warmstart_gradient_checkpointing_reaches_the_model(rows, tiny_model_dir, tmp_path):
    """`warmstart.gradient_checkpointing: true` runs every attention forward again in the backward pass, by
    whichever name the installed transformers reads (5.25 renamed it activation_checkpointing)."""
    calls: list[int] = []

    def count(module, _args):
        if type(module).__name__.endswith("Attention"):
            calls.append(1)

    runs = {}
    for on in (False, True):
        calls.clear()
        handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
        try:
            train_sft(tiny_model_dir, rows[:2], tmp_path / f"sft-{on}", epochs=1, learning_rate=1e-3, batch_size=1,
                      seed=0, gradient_checkpointing=on)
        finally:
            handle.remove()
        runs[on] = len(calls)
    assert runs[False] > 0 and runs[True] == 2 * runs[False], runs

