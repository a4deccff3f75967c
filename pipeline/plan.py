"""`steptool plan`: what a params file needs per device before anything runs (docs/architecture.md, "Plan").

From the params and the base model's `config.json` (a Llama/Qwen2/Mistral-style decoder), per training stage
(warm start, the PPO round's update and its precompute) and per device, under the engine the launcher names
(configs/accelerate/*.yaml: one process, DDP, ZeRO-2, ZeRO-3, FSDP):

    parameters P    embeddings V·H (+ an untied lm_head V·H) + per layer: q, o H·H, k, v H·(kv_heads·head_dim),
                    MLP 3·H·I, 2 norms H (+ q, k, v biases when the config has them) + the final norm H; the test
                    checks it against the parameter count of the model transformers builds from the same config
    trainable T     all P (+ the value head H + 1), or LoRA r·(in + out) on every linear layer of the trunk
                    (peft's "all-linear": q, k, v, o, gate, up, down) + the value head
    weights         4·T bytes of fp32 weights that train (AdamW's master weights; bf16 is autocast over them),
                    and under LoRA the frozen base's P at 2 bytes in bf16 (4 in fp32):
                    pipeline.devices.training_dtype, the dtype the stages load in
    gradients       4·T bytes        optimizer  8·T bytes (AdamW's two fp32 moments)
    sharding        ZeRO-2: gradients and optimizer / n; ZeRO-3 and FSDP: weights too / n; DDP: none
    activations     tokens = batch × max_length; per layer and token 34·H bytes at 16 bits (Korthikanti et al.
                    2022, "Reducing Activation Recomputation", without the attention-score term: PyTorch's SDPA
                    keeps no score matrix), doubled in fp32; with gradient checkpointing only each layer's input
                    (2·H per token at 16 bits) plus one layer recomputed
    logits          logits_chunk × V × 4 bytes twice (fp32 log-softmax over one chunk of action positions)

plus 10% for the allocator and the CUDA context. The precompute runs without gradients: weights, one layer's
activations at `per_device_eval_batch_size`, and a logits chunk (the weights at the update's bytes for a frozen
weight). Disk: `save_total_limit` checkpoints of what a
checkpoint holds (LoRA: the trainable weights and their optimizer state; full: the weights too) per run, and the
saved model per run (bf16 when a LoRA run's base was held in bf16). These are estimates to choose a configuration by, not guarantees.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.errors import SteptoolError

GB = 1e9
OVERHEAD = 1.10  # the allocator's fragmentation and the CUDA context, roughly
ENGINES = ("single", "ddp", "zero2", "zero3", "fsdp")


@dataclass(frozen=True)
class Shape:
    """What the arithmetic needs of a decoder's config.json."""
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    qkv_bias: bool

    @classmethod
    def from_config(cls, cfg: dict, where: str = "config.json") -> "Shape":
        try:
            heads = int(cfg["num_attention_heads"])
            return cls(hidden=int(cfg["hidden_size"]), intermediate=int(cfg["intermediate_size"]),
                       layers=int(cfg["num_hidden_layers"]), heads=heads,
                       kv_heads=int(cfg.get("num_key_value_heads") or heads), vocab=int(cfg["vocab_size"]),
                       tied=bool(cfg.get("tie_word_embeddings", False)),
                       qkv_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")))
        except (KeyError, TypeError, ValueError) as e:
            raise SteptoolError(f"{where}: not a decoder config this plan reads (needs hidden_size, "
                                f"intermediate_size, num_hidden_layers, num_attention_heads, vocab_size): {e}") from None

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)

    def parameters(self) -> int:
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h + ((h + 2 * kv) if self.qkv_bias else 0)
        return self.vocab * h * (1 if self.tied else 2) + self.layers * layer + h

    def lora_parameters(self, r: int) -> int:
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        per_layer = r * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h))  # q, k, v, o, gate, up, down
        return self.layers * per_layer


def engine(launcher: str, root: Path) -> tuple[str, int]:
    """(one of ENGINES, processes) of a train.launcher line ('python', or 'accelerate launch --config_file F
    [--num_processes N] ...')."""
    if launcher == "python" or launcher.startswith("python "):
        return "single", 1
    args = shlex.split(launcher)
    opts = {a: b for a, b in zip(args, args[1:]) if a.startswith("--")}
    cfg: dict = {}
    if "--config_file" in opts:
        path = root / opts["--config_file"]
        if not path.is_file():
            raise SteptoolError(f"train.launcher: {path}: no such accelerate config file")
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    n = int(opts.get("--num_processes", cfg.get("num_processes", 1)))
    kind = str(cfg.get("distributed_type", "MULTI_GPU" if n > 1 else "NO")).upper()
    if kind == "DEEPSPEED":
        stage = int((cfg.get("deepspeed_config") or {}).get("zero_stage", 2))
        return ("zero3" if stage >= 3 else "zero2"), n
    if kind == "FSDP":
        return "fsdp", n
    return ("ddp" if n > 1 else "single"), n


def training_memory(shape: Shape, *, lora: bool, lora_r: int, batch: int, max_length: int, checkpointing: bool,
                    bf16: bool, engine_name: str, processes: int, logits_chunk: int, value_head: bool) -> dict:
    """Bytes per device of one training step, by part (the module docstring's formulas), and the trainable
    parameter count."""
    p = shape.parameters()
    head = shape.hidden + 1 if value_head else 0
    t = (shape.lora_parameters(lora_r) if lora else p) + head
    shard = {"single": (1, 1, 1), "ddp": (1, 1, 1), "zero2": (1, processes, processes),
             "zero3": (processes, processes, processes), "fsdp": (processes, processes, processes)}[engine_name]
    tokens = batch * max_length
    per_token_layer = 34 * shape.hidden * (1 if bf16 else 2)
    weights = (frozen_bytes(lora, bf16) * p + 4 * t) if lora else 4 * t
    if checkpointing:
        acts = shape.layers * tokens * shape.hidden * (2 if bf16 else 4) + tokens * per_token_layer
    else:
        acts = shape.layers * tokens * per_token_layer
    return {"weights": weights / shard[0], "gradients": 4 * t / shard[1], "optimizer": 8 * t / shard[2],
            "activations": acts, "logits": 2 * 4 * logits_chunk * shape.vocab, "trainable": t}


def frozen_bytes(lora: bool, bf16: bool) -> int:
    """Bytes a weight that does not train takes (a LoRA run's base: bf16 under bf16), or any weight of a full
    fine-tune (fp32 master weights)."""
    return 2 if lora and bf16 else 4


def precompute_memory(shape: Shape, *, batch: int, max_length: int, bf16: bool, engine_name: str, processes: int,
                      logits_chunk: int, lora: bool = False) -> dict:
    """Bytes per device of the round's precompute (no gradients): weights, one layer's activations, a logits
    chunk."""
    shard = processes if engine_name in ("zero3", "fsdp") else 1
    return {"weights": frozen_bytes(lora, bf16) * shape.parameters() / shard,
            "activations": batch * max_length * 34 * shape.hidden * (1 if bf16 else 2),
            "logits": 2 * 4 * logits_chunk * shape.vocab}


def in_gb(parts: dict) -> dict:
    """A stage's bytes as GB (2 decimals) with their total (+ OVERHEAD); the trainable count in millions."""
    out = {k: round(v / GB, 2) for k, v in parts.items() if k != "trainable"}
    out["total"] = round(sum(v for k, v in parts.items() if k != "trainable") * OVERHEAD / GB, 2)
    if "trainable" in parts:
        out["trainable_m"] = round(parts["trainable"] / 1e6, 2)
    return out


def find_config(source: str, root: Path) -> Path | None:
    """The base model's config.json: data/models/base/ if the run made it, a local folder, or the local HF cache
    (never downloaded)."""
    from pipeline import layout

    for candidate in (root / layout.BASE_MODEL / "config.json", Path(source) / "config.json"):
        if candidate.is_file():
            return candidate
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json")
        return Path(cached) if isinstance(cached, str) else None
    except Exception:  # noqa: BLE001 - not a repo id, no cache: the caller asks for --model-config
        return None


def plan(params, root: Path, model_config: Path, gpu_memory_gb: float) -> dict:
    """Every stage's estimate per device, and what does not fit in `gpu_memory_gb` with what to change."""
    shape = Shape.from_config(json.loads(model_config.read_text(encoding="utf-8")), str(model_config))
    t, w = params.train, params.warmstart
    eng, n = engine(t.launcher, root)
    bf16 = t.precision != "fp32"
    stages = {name: in_gb(parts) for name, parts in {
        # one path per forward pass (batch_size is gradient accumulation), full-sequence logits
        "warmstart": training_memory(shape, lora=w.lora, lora_r=w.lora_r, batch=1, max_length=w.max_length,
                                     checkpointing=w.gradient_checkpointing, bf16=w.precision != "fp32",
                                     engine_name="single", processes=1, logits_chunk=w.max_length, value_head=False),
        "train (update)": training_memory(shape, lora=t.lora, lora_r=t.lora_r, batch=t.per_device_train_batch_size,
                                          max_length=t.max_length, checkpointing=t.gradient_checkpointing, bf16=bf16,
                                          engine_name=eng, processes=n, logits_chunk=t.logits_chunk, value_head=True),
        "train (precompute)": precompute_memory(shape, batch=t.per_device_eval_batch_size, max_length=t.max_length,
                                                bf16=bf16, engine_name=eng, processes=n,
                                                logits_chunk=t.logits_chunk, lora=t.lora),
    }.items()}
    advice = []
    for name, m in stages.items():
        m["fits"] = m["total"] <= gpu_memory_gb
        if m["fits"]:
            continue
        biggest = max(("weights", "gradients", "optimizer", "activations"), key=lambda k: m.get(k, 0))
        hint = {"activations": ("warmstart.gradient_checkpointing: true or a smaller max_length" if name == "warmstart"
                                else "train.gradient_checkpointing: true or a smaller per-device batch / max_length"),
                "optimizer": "LoRA (lora: true) or ZeRO-2/3 across more GPUs (train.launcher)",
                "gradients": "LoRA (lora: true) or ZeRO-2/3 across more GPUs (train.launcher)",
                "weights": "ZeRO-3 or FSDP across more GPUs (train.launcher)"}[biggest]
        advice.append(f"{name}: {m['total']} GB per device > {gpu_memory_gb:g} GB, mostly {biggest} "
                      f"({m[biggest]} GB): {hint}")
    p = shape.parameters()
    runs = len(params.variants) * len(params.train.seeds)
    trainable = stages["train (update)"]["trainable_m"] * 1e6
    ckpt = (4 * (trainable if t.lora else p + shape.hidden + 1) + 8 * trainable) / GB  # weights it holds + AdamW
    disk = {"checkpoints_per_run_gb": round(ckpt * t.save_total_limit, 2),
            "saved_models_gb": round(runs * frozen_bytes(t.lora, bf16) * p / GB, 2), "runs": runs,
            "saved_dtype": "bf16" if frozen_bytes(t.lora, bf16) == 2 else "fp32"}
    return {"model": {"parameters_b": round(p / 1e9, 3), **shape.__dict__}, "engine": eng, "processes": n,
            "gpu_memory_gb": gpu_memory_gb, "stages": stages, "disk": disk, "advice": advice}


def render(result: dict) -> str:
    m = result["model"]
    lines = [f"model: {m['parameters_b']} B parameters (hidden {m['hidden']}, {m['layers']} layers, vocab {m['vocab']}); "
             f"engine {result['engine']} on {result['processes']} device(s) of {result['gpu_memory_gb']:g} GB",
             "", f"{'stage':<20}{'weights':>9}{'grads':>9}{'optim':>9}{'activ':>9}{'logits':>9}{'total':>9}  fits",
             "-" * 80]
    for name, s in result["stages"].items():
        lines.append(f"{name:<20}" + "".join(f"{s.get(k, 0):>9}" for k in ("weights", "gradients", "optimizer",
                                                                         "activations", "logits", "total"))
                     + f"  {'yes' if s['fits'] else 'NO'}")
    d = result["disk"]
    lines += ["", f"GB per device (+10% for the allocator); disk: {d['checkpoints_per_run_gb']} GB of checkpoints per "
                  f"run while it trains, {d['saved_models_gb']} GB for the {d['runs']} trained models ({d['saved_dtype']})"]
    lines += ["", *result["advice"]] if result["advice"] else ["", "every stage fits"]
    return "\n".join(lines)
