"""One small PPO round of the tiny model on the toy environment, for the multi-process test: the same global
batch (4 trajectories) whatever the number of processes. Run it as

    python -m tests.support.ddp_train OUT                                   (one process)
    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 -m tests.support.ddp_train OUT

OUT gets model/ (the trained policy, written by the main process) and round.json (the precompute's reference
log-probs, how many trajectories each process precomputed, the optimizer steps, the world size, every step's
ratio and clip share gathered from the processes and how many the main process recorded itself, the engine:
DeepSpeed's ZeRO stage and whether the value head's parameters were partitioned). `save_steps` checkpoints the
round into OUT/ckpt; `resume_from` continues one of those checkpoints; `lora` trains rank-4 adapters instead of every
weight (model/ holds the merged policy and its adapter)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from transformers import TrainerCallback

GLOBAL_BATCH = 4


class _Steps(TrainerCallback):
    """The optimizer steps a run took itself (a resumed run: only those after its checkpoint)."""

    def __init__(self):
        self.steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def main(out: Path, save_steps: int = 0, resume_from: Path | None = None, lora: bool = False) -> None:
    from accelerate import PartialState
    from safetensors.torch import save_file

    from pipeline.models import SMOLLM2, load_tokenizer
    from tests.support.tiny_model import make_tiny_model
    from tests.support.toy_env import play
    from trainer.config import StepPPOConfig
    from trainer.model import PolicyWithValue, with_lora
    from trainer.step_ppo import StepPPOTrainer

    world = PartialState(cpu=True).num_processes
    tok = load_tokenizer(SMOLLM2)
    model = make_tiny_model(tok, seed=5)
    examples, _ = play(model, tok, 8, 3, 21, "steptool")  # same length each: per-process means average exactly
    cfg = StepPPOConfig(output_dir=str(out / "ckpt"), report_to=[], use_cpu=True, variant="steptool",
                        num_train_epochs=1, per_device_train_batch_size=GLOBAL_BATCH // world,
                        per_device_eval_batch_size=3, gradient_accumulation_steps=1, learning_rate=1e-3,
                        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, seed=0,
                        data_seed=0, disable_tqdm=True, logging_steps=1,
                        lr_scheduler_type="constant")
    policy = with_lora(model, 4) if lora else model
    trainer = StepPPOTrainer(PolicyWithValue(policy), cfg, examples, pad_id=tok.pad_token_id)
    ran = _Steps()
    trainer.add_callback(ran)
    if trainer.accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
                  out / "start.safetensors")
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    trainer.save_policy(out / "model", tok)
    ratios = trainer.step_ratios()  # collective: every process's steps
    if trainer.accelerator.is_main_process:
        (out / "round.json").write_text(json.dumps({
            "world": world, "steps": trainer.state.global_step, "ran": ran.steps, "shards": trainer.precompute_shards,
            "zero_stage": trainer.accelerator.state.deepspeed_plugin.zero_stage if trainer.is_deepspeed_enabled else None,
            "head_partitioned": hasattr(trainer.model.v_head.weight, "ds_id"),
            "ratios": {str(i): r for i, r in sorted(ratios.items())}, "own_ratios": len(trainer._step_ratios),
            "ref_logprobs": [it.ref_logprobs for it in trainer.train_dataset.items],
            "advantages": [it.advantages for it in trainer.train_dataset.items]}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
