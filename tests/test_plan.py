"""`steptool plan` (pipeline/plan.py): parameter counts equal what transformers and peft build from the same config,
the memory parts by hand on a toy shape, the engine read from the launcher, and the table for the GPU profile."""
from __future__ import annotations

import json

import pytest

from pipeline.plan import GB, OVERHEAD, Shape, engine, in_gb, precompute_memory, training_memory
from tests.conftest import REPO

QWEN_7B = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
           "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False}
SMOLLM2_135M = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}


@pytest.mark.parametrize("cfg", [QWEN_7B, SMOLLM2_135M], ids=["qwen2.5-7b", "smollm2-135m"])
def test_the_parameter_count_is_the_model_s(cfg):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):  # the real shapes, no memory
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    assert Shape.from_config(cfg).parameters() == sum(p.numel() for p in model.parameters())
    assert Shape.from_config(QWEN_7B).parameters() == 7_615_616_512 and Shape.from_config(SMOLLM2_135M).parameters() \
        == 134_515_008


def test_the_lora_count_is_peft_s():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = {**SMOLLM2_135M, "num_hidden_layers": 2, "vocab_size": 64}
    with torch.device("meta"):
        model = get_peft_model(AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg)),
                               LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert Shape.from_config(cfg).lora_parameters(8) == trainable


def test_memory_by_hand_on_a_toy_shape():
    """H 4, I 8, 2 layers of 2 heads, vocab 10, tied, no biases: P = 10·4 + 2·(2·16 + 2·4·4 + 3·4·8 + 2·4) + 4 =
    380; with the value head (5) T = 385."""
    toy = Shape(hidden=4, intermediate=8, layers=2, heads=2, kv_heads=2, vocab=10, tied=True, qkv_bias=False)
    assert toy.parameters() == 380
    kw = dict(lora=False, lora_r=2, batch=1, max_length=3, bf16=True, logits_chunk=2, value_head=True)
    m = training_memory(toy, checkpointing=False, engine_name="single", processes=1, **kw)
    # weights 4·385, gradients 4·385, AdamW 8·385, activations 2 layers · 3 tokens · 34·4 bytes, logits 2·4·2·10
    assert m == {"weights": 1540, "gradients": 1540, "optimizer": 3080, "activations": 816, "logits": 160,
                 "trainable": 385}
    ckpt = training_memory(toy, checkpointing=True, engine_name="single", processes=1, **kw)
    assert ckpt["activations"] == 2 * 3 * 4 * 2 + 3 * 34 * 4  # each layer's input, then one layer recomputed
    fp32 = training_memory(toy, checkpointing=False, engine_name="single", processes=1, **{**kw, "bf16": False})
    assert fp32["activations"] == 2 * 816
    z2 = training_memory(toy, checkpointing=False, engine_name="zero2", processes=4, **kw)
    assert (z2["weights"], z2["gradients"], z2["optimizer"]) == (1540, 1540 / 4, 3080 / 4)
    z3 = training_memory(toy, checkpointing=False, engine_name="zero3", processes=4, **kw)
    assert (z3["weights"], z3["gradients"], z3["optimizer"]) == (1540 / 4, 1540 / 4, 3080 / 4)
    lora = training_memory(toy, checkpointing=False, engine_name="single", processes=1, **{**kw, "lora": True})
    # LoRA r=2 on q, k, v, o (4+4 each), gate, up (4+8), down (8+4) per layer: 2·(2·(8·4 + 12·3)) = 272, + head 5
    # weights: the frozen base in bf16 (2·380) and what trains in fp32 (4·277)
    assert lora["trainable"] == 277 and lora["gradients"] == 4 * 277 and lora["weights"] == 2 * 380 + 4 * 277
    lora32 = training_memory(toy, checkpointing=False, engine_name="single", processes=1,
                             **{**kw, "lora": True, "bf16": False})
    assert lora32["weights"] == 4 * 380 + 4 * 277
    pre = precompute_memory(toy, batch=2, max_length=3, bf16=True, engine_name="fsdp", processes=2, logits_chunk=2)
    assert pre == {"weights": 4 * 380 / 2, "activations": 2 * 3 * 34 * 4, "logits": 160}
    pre = precompute_memory(toy, batch=2, max_length=3, bf16=True, engine_name="fsdp", processes=2, logits_chunk=2,
                            lora=True)
    assert pre["weights"] == 2 * 380 / 2
    gb = in_gb({"weights": 2 * GB, "activations": GB, "trainable": 5e6})
    assert gb == {"weights": 2.0, "activations": 1.0, "total": round(3 * OVERHEAD, 2), "trainable_m": 5.0}


@pytest.mark.parametrize("launcher, expected", [
    ("python", ("single", 1)),
    ("accelerate launch --config_file configs/accelerate/zero2.yaml --num_processes 8", ("zero2", 8)),
    ("accelerate launch --config_file configs/accelerate/zero3.yaml --num_processes 4", ("zero3", 4)),
    ("accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2", ("fsdp", 2)),
    ("accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2", ("ddp", 2)),
])
def test_the_engine_is_read_from_the_launcher_and_its_config(launcher, expected):
    assert engine(launcher, REPO) == expected


def test_plan_of_the_gpu_profile_for_a_7b_and_what_does_not_fit(tmp_path, capsys):
    from steptool.cli import main

    config = tmp_path / "config.json"
    config.write_text(json.dumps(QWEN_7B))
    assert main(["plan", "--profile", str(REPO / "profiles/gpu.yaml"), "--model-config", str(config), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"]["parameters_b"] == 7.616 and result["engine"] == "single"
    assert all(s["fits"] for s in result["stages"].values()) and result["advice"] == []
    # LoRA r 16 in bf16: the base at 2 bytes, the adapters and the value head at 4
    trainable = result["stages"]["train (update)"]["trainable_m"] * 1e6
    assert result["stages"]["train (update)"]["weights"] == pytest.approx((2 * 7_615_616_512 + 4 * trainable) / GB,
                                                                          abs=0.01)
    assert result["stages"]["train (precompute)"]["weights"] == round(2 * 7_615_616_512 / GB, 2)
    assert result["disk"]["saved_dtype"] == "bf16"
    # the same model fully fine-tuned on one 80 GB device does not fit: the optimizer is named first
    raw = (REPO / "profiles/gpu.yaml").read_text().replace("  lora: true\n  gradient_checkpointing: true     #",
                                                            "  lora: false\n  gradient_checkpointing: true     #")
    full = tmp_path / "full.yaml"
    full.write_text(raw)
    assert main(["plan", "--profile", str(full), "--model-config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "train (update)" in out and "mostly optimizer" in out and "LoRA (lora: true) or ZeRO-2/3" in out
