"""Warm start: expert paths rendered exactly as the agent will see them, and TRL's SFTTrainer on them
with the loss on action tokens only (what the policy writes; never the prompt or an observation).

The paper's base models are already tool-tuned; our small default model is not, so this gives it the
ReAct format and the search -> id -> details habit. The same model is the paper's SFT baseline.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path

from pipeline.agent.expert import expert_path
from pipeline.devices import Processes, training_dtype
from pipeline.errors import SteptoolError
from pipeline.agent.prompts import ChatRenderer, system_prompt, user_message
from pipeline.envs import ToolWorldEnv
from pipeline.fsutil import atomic_path
from pipeline.task import Task
from pipeline.toolworld.world import ToolWorld

log = logging.getLogger("steptool.warmstart")


def expert_dataset(tasks: list[Task], world: ToolWorld, renderer: ChatRenderer, *, paths_per_task: int = 1, error_rate: float = 0.3, max_length: int = 2048, seed: int = 0,
                   max_observation_length: int = 1024, tool_descriptions: dict | None = None) -> tuple[list[dict], dict]:
    """Rows {input_ids, assistant_masks} for SFTTrainer, and stats (paths, mistakes, dropped, tokens)."""
    rng = random.Random(f"warmstart:{seed}")
    env = ToolWorldEnv(world, max_observation_length)
    rows, stats = [], {"paths": 0, "mistakes": 0, "dropped_too_long": 0, "tokens": 0, "action_tokens": 0}
    for task in tasks:
        for _ in range(paths_per_task):
            path = expert_path(task, env, world, rng, error_rate, fmt=renderer.fmt)
            system = system_prompt(task.api_list, renderer.fmt, tool_descriptions)
            r = renderer.render(system, user_message(task.query), [renderer.encode_action(a) for a in path.actions],
                                path.observations)
            if len(r.input_ids) > max_length:
                stats["dropped_too_long"] += 1
                continue
            rows.append({"input_ids": r.input_ids, "assistant_masks": r.action_mask})
            stats["paths"] += 1
            stats["mistakes"] += path.mistakes
            stats["tokens"] += len(r.input_ids)
            stats["action_tokens"] += sum(r.action_mask)
    return rows, stats


def link_or_copy_model(src: str | Path, dst: str | Path) -> None:
    """`dst` becomes the checkpoint at `src` (hard links where the filesystem allows), atomically."""
    src = Path(src)
    with atomic_path(dst) as tmp:
        tmp.mkdir()
        for f in src.iterdir():
            if f.is_file():
                try:
                    os.link(f, tmp / f.name)
                except OSError:
                    shutil.copy2(f, tmp / f.name)


@contextlib.contextmanager
def _scratch():
    """A process other than the main one trains in a folder of its own, removed after; only the main one writes
    the model."""
    with tempfile.TemporaryDirectory(prefix="steptool-warmstart-") as d:
        yield Path(d)


def _action_only_trainer():
    """SFTTrainer whose loss computes logits at action positions only.

    The vocabulary (49k for SmolLM2) makes full logits the largest tensor of a long path, and
    three quarters of a path is prompt and observations, which carry no loss. Asking the model
    for the logits of the positions that predict an action token (`logits_to_keep` as indices)
    gives the same loss at a fraction of the memory and time.
    """
    import torch
    from trl import SFTTrainer

    class ActionOnlySFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs["labels"]
            if labels.shape[0] != 1:
                raise ValueError("ActionOnlySFTTrainer trains one path per forward (use gradient accumulation)")
            idx = (labels[0, 1:] != -100).nonzero().squeeze(-1)
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                        logits_to_keep=idx, use_cache=False)
            logits = out.logits[0].float()
            total = torch.nn.functional.cross_entropy(logits, labels[0, idx + 1], reduction="sum")
            denom = num_items_in_batch if num_items_in_batch is not None else idx.numel()
            loss = total / denom
            if num_items_in_batch is not None and self.args.average_tokens_across_devices \
                    and self.accelerator.num_processes > 1:
                # the count is every process's tokens and DDP averages the gradients over the processes: what
                # transformers' own compute_loss multiplies back (trainer.py), or each step would be 1/N as large
                loss = loss * self.accelerator.num_processes
            return (loss, out) if return_outputs else loss

    return ActionOnlySFTTrainer


def train_sft(base_dir: str | Path, rows: list[dict], out_dir: str | Path, *, epochs: float, learning_rate: float,
              batch_size: int, seed: int, lora: bool = False, lora_r: int = 16, device: str = "auto",
              max_length: int = 2048, bf16: bool = False, report_to: list[str] | None = None,
              root: Path = Path("."), gradient_checkpointing: bool = False) -> dict:
    """Fine-tune the checkpoint at `base_dir` on `rows`; save the result (LoRA merged) to `out_dir`.
    `bf16`: autocast over fp32 master weights (the saved weights stay fp32); under LoRA the frozen base loads in
    bf16 (pipeline.devices.training_dtype), and the merged model is saved as its base was held.

    Under a multi-process launcher (`warmstart.launcher`: accelerate launch) every process trains on its share
    of each step's `batch_size` paths (so `batch_size` must divide among them) and the main one writes the model
    (gathered from every process under ZeRO-3 / FSDP)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    use_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    procs = Processes("cpu" if use_cpu else "cuda")
    if batch_size % procs.world:
        raise SteptoolError(f"warmstart.batch_size {batch_size} does not divide among {procs.world} processes")
    tok = AutoTokenizer.from_pretrained(base_dir)
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, task_type="CAUSAL_LM",
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"])
    from pipeline.tracking import reporting

    tracking, callbacks = reporting(report_to or ["none"], root, "warmstart", main=procs.main)
    # transformers 5.25 renamed gradient_checkpointing to activation_checkpointing (the old name warns, and goes in
    # 6); trainer/config.py maps the same rename for the PPO arguments
    ckpt = "activation_checkpointing" if "activation_checkpointing" in SFTConfig.__dataclass_fields__ \
        else "gradient_checkpointing"
    with atomic_path(out_dir) if procs.main else _scratch() as tmp:
        args = SFTConfig(
            output_dir=str(tmp / "_run"), num_train_epochs=epochs, learning_rate=learning_rate,
            per_device_train_batch_size=1, gradient_accumulation_steps=batch_size // procs.world,
            lr_scheduler_type="linear", warmup_steps=0.05,
            logging_steps=1, save_strategy="no", seed=seed, data_seed=seed, max_length=max_length,
            use_cpu=use_cpu, dataloader_num_workers=0, disable_tqdm=False, bf16=bf16, fp16=False,
            **{ckpt: gradient_checkpointing, f"{ckpt}_kwargs": {"use_reentrant": False}}, **tracking,
        )
        # after the arguments: under ZeRO-3 they make transformers load the model partitioned (zero.Init)
        model = AutoModelForCausalLM.from_pretrained(
            base_dir, dtype=training_dtype("bf16" if bf16 else "fp32", "cpu" if use_cpu else "cuda", trains=not lora))
        trainer = _action_only_trainer()(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             peft_config=peft_config, callbacks=callbacks)
        result = trainer.train()
        trained = trainer.model
        sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled and any(
            hasattr(p, "ds_id") for p in trained.parameters())
        if lora and sharded:
            raise SteptoolError("warmstart: LoRA under ZeRO-3 / FSDP: merging needs the full weights on one "
                                "process; use ZeRO-2 or DDP with LoRA (configs/accelerate/)")
        # the full weights from every process's shard (a collective: every process asks)
        state = trainer.accelerator.get_state_dict(trainer.model_wrapped) if sharded else None
        if lora:
            trained = trained.merge_and_unload()
        if procs.main:
            shutil.rmtree(tmp / "_run", ignore_errors=True)
            if state is None:
                trained.save_pretrained(tmp, safe_serialization=True)
            else:
                trained.save_pretrained(tmp, safe_serialization=True, state_dict=state)
            tok.save_pretrained(tmp)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    procs.wait()
    return {"train_loss": round(result.training_loss, 4), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "steps": trainer.state.global_step,
            "seconds": round(result.metrics.get("train_runtime", 0.0), 1)}
