"""A tiny, randomly initialised Llama with SmolLM2's tokenizer: the policy of unit tests (loads in < 1 s)."""
from __future__ import annotations

from pathlib import Path


def tiny_config(vocab_size: int, **overrides):
    from transformers import LlamaConfig

    kw = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
              tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    kw.update(overrides)
    return LlamaConfig(**kw)


def make_tiny_model(tokenizer, seed: int = 0, **overrides):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(len(tokenizer), **overrides))


def save_tiny_model(out_dir: Path, tokenizer, seed: int = 0) -> Path:
    """Write a tiny checkpoint (safetensors + tokenizer with chat template) that `from_pretrained` loads."""
    model = make_tiny_model(tokenizer, seed)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
