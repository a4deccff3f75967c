"""`StepPPOTrainer`: step-grained PPO as a `transformers.Trainer`, so checkpoints resume with optimizer,
scheduler and RNG state (docs/architecture.md, "Training").

One PPO round = the trajectories given, read top to bottom as in CleanRL's ppo.py:

    1-4. `prepare_round` (trainer/ppo_round.py), once, when the engine has prepared the model (on its device,
         under DDP, FSDP or DeepSpeed), before a resumed checkpoint is loaded:
         reference/old log-probs, the baseline and the value head's start → KL-shaped rewards → advantages
         (step or token level) → one scaling over the whole round;
    5.   update epochs (`num_train_epochs` passes over the round, Trainer's loop), each batch:
             ratio = exp(log π_θ − log π_old) on action tokens, each token with its fixed advantage A
             L_pg  = mean max(−A·ratio, −A·clip(ratio, 1 ± ε)), at most −A·c where A < 0 (dual clip, c = dual_clip)
             L_v   = ½ mean max((V − R)², (V_old + clip(V − V_old, ± ε_v) − R)²) at the value states
             L_kl  = mean over action tokens of min(KL(π_θ‖π_ref), kl_token_max) (kl_in: loss; importance-weighted
                     on tokens from π_old)
             loss  = L_pg + c_v·L_v + β·L_kl − c_H·entropy

Per step, the round table keeps the mean ratio and clip share of the last update epoch that trained it.

Logged: policy/value loss, approx_kl (KL(π_old‖π_θ), k3 on tokens from π_old), clipfrac, explained_variance
(of the value head), mean step reward, KL(π_θ‖π_ref) (per trajectory and per token, importance-weighted
on tokens from π_old, never negative), entropy, tokens/s; the round's statistics (advantages before the
scaling, KL penalty, each baseline's explained variance) are in `round_stats`.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import Trainer

from pipeline.errors import SteptoolError

from trainer.baselines import explained_variance
from trainer.config import StepPPOConfig
from trainer.data import Example
from trainer.model import PolicyWithValue
from trainer.ppo_round import (RoundItem, allowed_ids, kl_to_ref, logprobs_now, pad, prepare_round,
                               step_ratio_stats)


class _Rollouts(Dataset):
    """The round's trajectories for the Trainer's loop. Each comes as {"input_ids", "item"}: transformers'
    length-grouped sampler (`train_sampling_strategy: group_by_length`) reads lengths only from dicts with
    input_ids, and reads them when the loop starts, before the round's items exist (they are filled in once the
    engine has prepared the model: StepPPOTrainer._prepare_for_training)."""

    def __init__(self, examples: list[Example]):
        self.examples = examples
        self.items: list[RoundItem | None] = [None] * len(examples)

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return {"input_ids": self.examples[i].input_ids, "item": self.items[i], "index": i}


def collate(items: list[RoundItem], pad_id: int = 0, indices: list[int] | None = None) -> dict:
    """Right-padded batch. Per token: [B, L]; per action token: [B, N]; per value state: [B, U]; per step: [B, S];
    `traj_index` [B]: each row's trajectory in the round (`indices`, or the row's place in the batch); `allowed`
    [T, K]: the name constraint's sets of the batch's T action tokens, row after row (`ppo_round.allowed_ids`)."""
    return {
        "traj_index": torch.tensor(list(range(len(items))) if indices is None else indices, dtype=torch.long),
        "tok_step": pad([it.token_step for it in items], 0, torch.long),
        "input_ids": pad([it.input_ids for it in items], pad_id, torch.long),
        "attention_mask": pad([[1] * len(it.input_ids) for it in items], 0, torch.long),
        "action_mask": pad([it.action_mask for it in items], 0, torch.long),
        "tok_mask": pad([[1] * len(it.old_logprobs) for it in items], 0, torch.float32),
        "old_logprobs": pad([it.old_logprobs for it in items], 0.0, torch.float32),
        "ref_logprobs": pad([it.ref_logprobs for it in items], 0.0, torch.float32),
        "advantages": pad([it.advantages for it in items], 0.0, torch.float32),
        "value_pos": pad([it.value_pos for it in items], 0, torch.long),
        "value_mask": pad([[1] * len(it.value_pos) for it in items], 0, torch.float32),
        "old_values": pad([it.old_values for it in items], 0.0, torch.float32),
        "returns": pad([it.returns for it in items], 0.0, torch.float32),
        "rewards": pad([it.rewards for it in items], 0.0, torch.float32),
        "step_mask": pad([[1] * len(it.rewards) for it in items], 0, torch.float32),
        "allowed": allowed_ids([it.allowed for it in items], [len(it.old_logprobs) for it in items]),
    }


class StepPPOTrainer(Trainer):
    def __init__(self, model: PolicyWithValue, args: StepPPOConfig, examples: list[Example], pad_id: int = 0,
                 ref_model: PolicyWithValue | None = None, **kwargs):
        """`ref_model`: the KL's reference when it is not the policy at the start of the round (the SFT policy in
        rounds 2+); used once, in the round's precompute, then released."""
        args.remove_unused_columns = False
        self.ppo = args
        self.examples = examples
        self.ref_model = ref_model
        self.round_stats: dict = {}
        self.precompute_shards: list[int] = []  # how many trajectories each rank precomputed
        self._round_ready = False
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._ev_pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._t_last = time.perf_counter()
        self._tokens = 0
        # trajectory index -> (optimizer step, mean ratio per step, clip share per step) of the last update that saw
        # it; each process keeps its own, saved in every checkpoint (`_save_rng_state`), gathered by `step_ratios`
        self._step_ratios: dict[int, tuple[int, list, list]] = {}
        super().__init__(model=model, args=args, train_dataset=_Rollouts(examples),
                         data_collator=lambda b: collate([x["item"] for x in b], pad_id, [x["index"] for x in b]),
                         **kwargs)

    def train(self, *args, **kwargs):
        self._round_ready = False
        return super().train(*args, **kwargs)

    # ---- phases 1-4, once the engine holds the model ------------------------------------------------------
    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        """transformers' preparation (optimizer, `accelerator.prepare`: DDP, FSDP or DeepSpeed) without the
        checkpoint; then the round's phases 1-4 on the prepared model, with the weights of the start of the
        round, so a resumed run sees the same round as an uninterrupted one; then the checkpoint, loaded as
        transformers' `_prepare_for_training` loads it (trainer.py, after `accelerator.prepare`)."""
        model, train_dataloader = super()._prepare_for_training(max_steps, train_dataloader, None)
        self._start_round(model)
        if resume_from_checkpoint is not None:
            if self.is_deepspeed_enabled:
                from transformers.integrations.deepspeed import deepspeed_load_checkpoint

                lora = hasattr(self.accelerator.unwrap_model(self.model).policy, "peft_config")
                deepspeed_load_checkpoint(self.model_wrapped, resume_from_checkpoint, load_module_strict=not lora)
            else:
                self._load_from_checkpoint(resume_from_checkpoint, self.model_wrapped if self.is_fsdp_enabled else None)
            self._load_optimizer_and_scheduler(resume_from_checkpoint)
            self._load_scaler(resume_from_checkpoint)
        return model, train_dataloader

    def _start_round(self, engine) -> None:
        acc = self.accelerator
        ref = self.ref_model.to(self.args.device) if self.ref_model is not None else None
        items, stats = prepare_round(acc.unwrap_model(engine), self.examples, self.ppo, acc.process_index,
                                     acc.num_processes, progress=acc.is_local_main_process, ref_model=ref,
                                     engine=engine)
        self.precompute_shards = stats.pop("shards")
        self.round_stats = stats
        self.ref_model = None  # its log-probs are in the items: the memory goes back
        self.train_dataset.items[:] = items
        self._round_ready = True

    # ---- phase 5: the loss of one batch ------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        a = self.ppo
        ids, att = inputs["input_ids"], inputs["attention_mask"]
        rows, pos = torch.nonzero(inputs["action_mask"], as_tuple=True)
        _, values, logp, entropy = model(ids, att, rows, pos, a.logits_chunk, a.entropy_coef > 0,
                                         inputs.get("allowed"))  # no sets: nothing was constrained
        tok = inputs["tok_mask"] > 0
        adv, old_lp = inputs["advantages"][tok], inputs["old_logprobs"][tok]

        log_ratio = logp - old_lp
        ratio = torch.exp(log_ratio)
        pg_tok = torch.max(-adv * ratio, -adv * ratio.clamp(1.0 - a.cliprange, 1.0 + a.cliprange))
        if a.dual_clip > 0:  # dual clip: with A < 0 a token loses at most −A·c (its ratio may have exploded)
            pg_tok = torch.where(adv < 0, torch.min(pg_tok, -adv * a.dual_clip), pg_tok)
        pg = pg_tok.mean()

        valid = inputs["value_mask"] > 0
        new_v = values.gather(1, inputs["value_pos"])
        ret, old_v = inputs["returns"], inputs["old_values"]
        v_err = (new_v - ret) ** 2
        if a.cliprange_value > 0:
            v_clip = old_v + (new_v - old_v).clamp(-a.cliprange_value, a.cliprange_value)
            v_err = torch.max(v_err, (v_clip - ret) ** 2)
        vf = 0.5 * v_err[valid].mean()
        loss = pg + a.vf_coef * vf
        # KL(π_θ‖π_ref) per action token on the collected tokens (kl_to_ref: k3 while π_θ = π_old); as a loss term
        # (kl_in: loss) it acts in the first round, where the reward's π_old-vs-π_ref penalty is zero
        kl_tok = kl_to_ref(logp, inputs["ref_logprobs"][tok], old_lp)
        # capped per token (kl_token_max, verl's clamp): the estimate grows as a·log a, and one rare token whose
        # probability rose e^12-fold would otherwise make the whole clipped update (docs/architecture.md)
        kl_capped = kl_tok.clamp(max=a.kl_token_max) if a.kl_token_max > 0 else kl_tok
        kl_loss = kl_capped.mean()  # a batch holds action tokens (without, pg is NaN and the step stops below)
        if a.kl_in == "loss" and a.kl_coef > 0:
            loss = loss + a.kl_coef * kl_loss
        if entropy is not None:
            loss = loss - a.entropy_coef * entropy.mean()
        if not torch.isfinite(loss):  # one bad step makes every weight NaN: stop before the optimizer takes it
            named = {"log-probs": logp, "old log-probs": old_lp, "reference log-probs": inputs["ref_logprobs"][tok],
                     "advantages": adv, "ratio": ratio, "values": new_v, "returns": ret, "policy loss": pg,
                     "value loss": vf, "KL": kl_tok}
            first = next((k for k, t in named.items() if not torch.isfinite(t).all()), "loss")
            raise SteptoolError(f"train: optimizer step {self.state.global_step + 1}: NaN or inf in the {first} "
                                f"(loss {float(loss.detach()):.4g}); stopped before the update, nothing saved from it")

        with torch.no_grad():
            m = self._metrics
            m["policy_loss"].append(float(pg))
            m["value_loss"].append(float(vf))
            m["approx_kl"].append(float(((ratio - 1) - log_ratio).mean()))
            m["clipfrac"].append(float(((ratio - 1).abs() > a.cliprange).float().mean()))
            # explained variance over everything since the last log (CleanRL: over the batch), not per micro-batch:
            # two trajectories' returns can be nearly equal and make a tiny denominator (values of -4000)
            self._ev_pairs.append((ret[valid].float().cpu(), new_v[valid].detach().float().cpu()))
            step_rewards = inputs["rewards"][inputs["step_mask"] > 0]
            m["reward_mean"].append(float(step_rewards.mean()))
            m["advantage_mean"].append(float(adv.mean()))
            # KL(π_θ‖π_ref) on tokens sampled from π_old (trainer/ppo_round.py, kl_to_ref): kl_ref per trajectory
            # (summed over its ~100-300 action tokens, the penalty's scale), kl_ref_token per token
            kl_tok = kl_tok.detach()
            m["kl_ref"].append(float(kl_tok.sum()) / ids.shape[0])
            m["kl_ref_token"].append(float(kl_tok.mean()))
            if entropy is not None:
                m["entropy"].append(float(entropy.mean()))
            self._tokens += int(att.sum())
            self._record_step_ratios(inputs, ratio, tok)
        return loss

    def _record_step_ratios(self, inputs: dict, ratio: torch.Tensor, tok: torch.Tensor) -> None:
        """Each row's per-step mean ratio and clip share in this batch, kept per trajectory (a later epoch
        replaces an earlier one): what the round table shows beside each step's advantage."""
        rows = torch.nonzero(tok, as_tuple=True)[0]
        index = inputs["traj_index"].tolist()
        n_steps = [int(n) for n in inputs["step_mask"].sum(1).tolist()]
        stats = step_ratio_stats(ratio, rows, inputs["tok_step"][tok], n_steps, self.ppo.cliprange)
        for i, (r, c) in zip(index, stats):
            self._step_ratios[i] = (self.state.global_step, r, c)

    def step_ratios(self) -> dict[int, tuple[list, list]]:
        """Trajectory index -> (mean ratio, clip share) per step as its last update saw them, from every process
        (collective: every process calls it)."""
        from accelerate.utils import gather_object

        mine = list(self._step_ratios.items())
        return merge_step_ratios(gather_object([mine]) if self.accelerator.num_processes > 1 else [mine])

    def logprobs_after(self) -> list[list[float]]:
        """Per trajectory of the round, every action token's log π under the policy as trained (collective: every
        process calls it): the round table's `logp_new`, beside π_old's `logp_old`, so the table shows where the
        update moved the likelihood of the round's own actions (docs/architecture.md, "Advantages and the PPO
        round")."""
        acc = self.accelerator
        return logprobs_now(self.model_wrapped, self.examples, self.ppo, acc.process_index, acc.num_processes,
                            progress=acc.is_local_main_process)

    def _save_rng_state(self, output_dir: str) -> None:
        # transformers calls it on every process before trainer_state.json, the file that makes a checkpoint whole
        # (trainer/rounds.py, complete_checkpoints): a whole checkpoint holds every process's step ratios
        import json
        import os

        super()._save_rng_state(output_dir)
        with open(os.path.join(output_dir, f"step_ratios_{self.accelerator.process_index}.json"), "w") as f:
            json.dump([[i, *rec] for i, rec in self._step_ratios.items()], f)

    def _load_rng_state(self, checkpoint) -> None:
        import json
        import os

        super()._load_rng_state(checkpoint)
        path = os.path.join(checkpoint or "", f"step_ratios_{self.accelerator.process_index}.json")
        if checkpoint and os.path.isfile(path):
            with open(path) as f:
                self._step_ratios = {int(r[0]): (int(r[1]), r[2], r[3]) for r in json.load(f)}

    def log(self, logs: dict, *args, **kwargs) -> None:
        if self._ev_pairs:
            r = torch.cat([p[0] for p in self._ev_pairs]).tolist()
            v = torch.cat([p[1] for p in self._ev_pairs]).tolist()
            self._metrics["explained_variance"].append(explained_variance([r], [v]))  # the value head's, on R
            self._ev_pairs = []
        if self._metrics:
            for k, v in self._metrics.items():
                vals = [x for x in v if not math.isnan(x)]
                logs[k] = round(float(np.mean(vals)), 6) if vals else float("nan")
            now = time.perf_counter()
            logs["tokens_per_s"] = round(self._tokens / max(now - self._t_last, 1e-9), 1)
            self._metrics = defaultdict(list)
            self._tokens, self._t_last = 0, now
        super().log(logs, *args, **kwargs)

    # ---- saving: through the accelerator, so ZeRO-3 / FSDP shards are gathered ----------------------------
    def save_policy(self, out_dir, tokenizer=None) -> None:
        """The trained policy as a plain checkpoint folder (PolicyWithValue.save_policy), written atomically by
        the main process from the accelerator's full state dict. Every rank must call it (the gather is
        collective)."""
        from pipeline.fsutil import atomic_path

        state = self.accelerator.get_state_dict(self.model_wrapped)
        bad = next((k for k, t in (state or {}).items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
        if bad is not None:  # checked on every rank, so all of them stop (none waits in the barrier below)
            raise SteptoolError(f"train: the trained weight {bad} holds NaN or inf: not saved to {out_dir}")
        if self.accelerator.is_main_process:
            with atomic_path(out_dir) as tmp:
                tmp.mkdir()
                self.accelerator.unwrap_model(self.model).save_policy(tmp, tokenizer, state_dict=state)
        self.accelerator.wait_for_everyone()

    # tied embeddings share storage, which plain safetensors.save_file refuses: keep one name per storage
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        import os

        from safetensors.torch import save_file

        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        if state_dict is None:  # DDP or one process (ZeRO-3 / FSDP: the Trainer passes the gathered dict)
            state_dict = model.state_dict()
        params = dict(model.named_parameters())
        frozen = {n for n, p in params.items() if not p.requires_grad}
        if frozen:
            # LoRA: the frozen base is the run's starting checkpoint, loaded again on resume; a checkpoint holds
            # only what trains (the adapters and the value head), not ~100x as much. A frozen tensor under a second
            # name (a tied embedding's lm_head) goes too: same storage.
            ptrs = {params[n].data_ptr() for n in frozen}
            state_dict = {k: v for k, v in state_dict.items() if k not in frozen and v.data_ptr() not in ptrs}
        save_file(unique_storage(state_dict), os.path.join(output_dir, "model.safetensors"))
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
        import os

        from safetensors.torch import load_model

        if not self._round_ready:
            return  # transformers loads a plain model's checkpoint before the round starts: after it (above)

        load_model(self.accelerator.unwrap_model(model or self.model),
                   os.path.join(resume_from_checkpoint, "model.safetensors"), strict=False)


def merge_step_ratios(parts: list[list[tuple[int, tuple[int, list, list]]]]) -> dict[int, tuple[list, list]]:
    """Trajectory index -> (mean ratio, clip share) per step from every process's records `parts` (each a list of
    (index, (optimizer step, ratios, clip shares))): where two processes saw the same trajectory (one per epoch
    under a sampler that reshuffles across processes), the record of the later optimizer step wins."""
    merged: dict[int, tuple[int, list, list]] = {}
    for part in parts:
        for i, rec in part:
            if i not in merged or rec[0] >= merged[i][0]:
                merged[i] = tuple(rec)
    return {i: (r, c) for i, (_, r, c) in merged.items()}


def unique_storage(state_dict: dict) -> dict:
    """The state dict with one name per shared storage (tied embeddings: the first name wins; loading with
    strict=False restores the tie), contiguous CPU tensors as safetensors wants them."""
    out, seen = {}, set()
    for k, v in state_dict.items():
        key = (v.device, v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if v.numel() and key in seen:
            continue
        seen.add(key)
        out[k] = v.detach().contiguous().cpu()
    return out
