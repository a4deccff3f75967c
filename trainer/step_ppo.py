"""`StepPPOTrainer`: step-grained PPO as a `transformers.Trainer`, so `accelerate launch` scales it and
checkpoints resume with optimizer, scheduler and RNG state.

One PPO round = the trajectories given. Before training, one pass of the initial policy computes, per
trajectory, the reference log-probs (the policy before training; with LoRA, adapters off, which at the
start is the same thing), the old log-probs (`recompute`, or the recorded `behaviour` ones) and the old
values V(s_t) (a value head fitted to the Monte-Carlo returns, or zero). Then every batch, as in CleanRL's
ppo.py read top to bottom:

    KL_t    = Σ_{tokens of action t} (log π_θ − log π_ref)            (detached; k1 or k3)
    r'_t    = r_t − β·KL_t
    A, R    = step_gae(r', V_old, γ, λ)                              (no_step_opt: γ = 0; ppo_outcome: per token)
    A       = whiten(A) over the batch's steps
    ratio   = exp(log π_θ − log π_old) on action tokens; every token of action t gets A_t
    L_pg    = mean max(−A·ratio, −A·clip(ratio, 1 ± ε))
    L_v     = ½ mean max((V − R)², (V_old + clip(V − V_old, ± ε_v) − R)²) at the step states
    loss    = L_pg + c_v·L_v − c_H·entropy

Logged: policy/value loss, approx_kl, clipfrac, explained_variance, mean reward/advantage, KL to the
reference, entropy, action tokens/s.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import Trainer

from trainer.config import StepPPOConfig
from trainer.data import Example
from trainer.gae import step_gae, whiten
from trainer.model import PolicyWithValue

TOKEN_LEVEL = "ppo_outcome"


class _Rollouts(Dataset):
    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _pad(seqs: list[list], value, dtype) -> torch.Tensor:
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), max(width, 1)), value, dtype=dtype)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, : len(s)] = torch.tensor(s, dtype=dtype)
    return out


def collate(items: list[dict], pad_id: int = 0) -> dict:
    """Right-padded batch. Per-token arrays: [B, L]; per-step: [B, S]; per-action-token: [B, N]."""
    return {
        "input_ids": _pad([it["input_ids"] for it in items], pad_id, torch.long),
        "attention_mask": _pad([[1] * len(it["input_ids"]) for it in items], 0, torch.long),
        "action_mask": _pad([it["action_mask"] for it in items], 0, torch.long),
        "token_step": _pad([it["token_step"] for it in items], -1, torch.long),
        "state_pos": _pad([it["state_pos"] for it in items], 0, torch.long),
        "step_mask": _pad([[1] * len(it["rewards"]) for it in items], 0, torch.float32),
        "rewards": _pad([it["rewards"] for it in items], 0.0, torch.float32),
        "tok_mask": _pad([[1] * len(it["old_logprobs"]) for it in items], 0, torch.float32),
        "tok_rewards": _pad([it["tok_rewards"] for it in items], 0.0, torch.float32),
        "old_logprobs": _pad([it["old_logprobs"] for it in items], 0.0, torch.float32),
        "ref_logprobs": _pad([it["ref_logprobs"] for it in items], 0.0, torch.float32),
        "old_values": _pad([it["old_values"] for it in items], 0.0, torch.float32),
    }


def _mc_returns(rewards: list[float], gamma: float) -> list[float]:
    out, acc = [], 0.0
    for r in reversed(rewards):
        acc = r + gamma * acc
        out.append(acc)
    return out[::-1]


class StepPPOTrainer(Trainer):
    def __init__(self, model: PolicyWithValue, args: StepPPOConfig, examples: list[Example], pad_id: int = 0,
                 **kwargs):
        args.remove_unused_columns = False
        self.ppo = args
        self.token_level = args.variant == TOKEN_LEVEL
        self.gamma_eff = 0.0 if args.variant == "no_step_opt" else args.gamma
        items = self.precompute(model, examples, args)
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._ev_pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._t_last = time.perf_counter()
        self._tokens = 0
        super().__init__(model=model, args=args, train_dataset=_Rollouts(items),
                         data_collator=lambda b: collate(b, pad_id), **kwargs)

    # ---- the round's fixed quantities -------------------------------------------------------------
    @torch.no_grad()
    def precompute(self, model: PolicyWithValue, examples: list[Example], args: StepPPOConfig) -> list[dict]:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        items, feats, targets = [], [], []
        # the same autocast as the loss's forward (Trainer's bf16), so the first ratio is 1 up to rounding
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(args.bf16))
        for ex in examples:
            ids = torch.tensor([ex.input_ids], device=device)
            mask = torch.tensor(ex.action_mask, device=device)
            pos = torch.nonzero(mask).flatten()
            rows = torch.zeros_like(pos)
            with autocast:
                h, _ = model(ids, torch.ones_like(ids))
                ref_lp, _ = model.token_logprobs(h, rows, pos, ids, args.logits_chunk)
            ref = ref_lp.float().cpu().tolist()
            old = ref
            if args.old_logprobs == "behaviour" and ex.behaviour_logprobs is not None \
                    and len(ex.behaviour_logprobs) == len(ref) and not any(math.isnan(x) for x in ex.behaviour_logprobs):
                old = list(ex.behaviour_logprobs)
            # each step's reward sits on its action's last token (token-level view)
            tok_rewards = [0.0] * len(pos)
            k = 0
            for (a, b), r in zip(ex.step_bounds, ex.rewards):
                k += b - a
                tok_rewards[k - 1] += r
            if self.token_level:
                state_pos = (pos - 1).cpu().tolist()
                ret = _mc_returns(tok_rewards, args.gamma)
            else:
                state_pos = [a - 1 for a, _ in ex.step_bounds]
                ret = _mc_returns(ex.rewards, self.gamma_eff)
            feats.append(h[0, state_pos].float().cpu())
            targets.extend(ret)
            items.append({"input_ids": ex.input_ids, "action_mask": ex.action_mask, "token_step": ex.token_step,
                          "state_pos": [a - 1 for a, _ in ex.step_bounds], "rewards": ex.rewards,
                          "tok_rewards": tok_rewards, "old_logprobs": old, "ref_logprobs": ref,
                          "_value_states": state_pos})
        if feats and args.value_init == "fit_returns":
            self._fit_value_head(model, torch.cat(feats), torch.tensor(targets))
        for it, f in zip(items, feats):
            it["old_values"] = model.v_head(f.to(model.v_head.weight.device, model.v_head.weight.dtype)).squeeze(-1).float().cpu().tolist()
            del it["_value_states"]
        model.train(was_training)
        return items

    @staticmethod
    def _fit_value_head(model: PolicyWithValue, x: torch.Tensor, y: torch.Tensor, ridge: float = 1.0) -> None:
        """Least squares of the returns on the trunk's features (with a bias), ridge-regularised."""
        x = x.double()
        mean = x.mean(0)
        xc = x - mean
        w = torch.linalg.solve(xc.T @ xc + ridge * torch.eye(x.shape[1], dtype=x.dtype), xc.T @ (y.double() - y.double().mean()))
        b = y.double().mean() - mean @ w
        with torch.no_grad():
            model.v_head.weight.copy_(w.to(model.v_head.weight.dtype).view(1, -1))
            model.v_head.bias.fill_(float(b))

    # ---- the loss ------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        a = self.ppo
        ids, att = inputs["input_ids"], inputs["attention_mask"]
        h, values = model(ids, att)
        unwrapped = self.accelerator.unwrap_model(model)
        rows, pos = torch.nonzero(inputs["action_mask"], as_tuple=True)
        logp, entropy = unwrapped.token_logprobs(h, rows, pos, ids, a.logits_chunk, a.entropy_coef > 0)
        tok_mask = inputs["tok_mask"] > 0
        old_lp, ref_lp = inputs["old_logprobs"][tok_mask], inputs["ref_logprobs"][tok_mask]
        d = logp.detach() - ref_lp
        kl_tok = d if a.kl_estimator == "k1" else torch.exp(-d) + d - 1.0

        if self.token_level:
            mask = inputs["tok_mask"]
            kl_pad = torch.zeros_like(mask)
            kl_pad[tok_mask] = kl_tok
            rewards = inputs["tok_rewards"] - a.kl_coef * kl_pad
            old_v = inputs["old_values"]
            adv, ret = step_gae(rewards, old_v, mask, a.gamma, a.lam)  # the padded rows hold action tokens only
            v_pad = torch.zeros_like(mask)
            v_pad[tok_mask] = values[rows, pos - 1]
            new_v = v_pad
            adv_w = whiten(adv, mask) if a.whiten_advantages else adv
            adv_tok = adv_w[tok_mask]
            step_rewards = inputs["rewards"][inputs["step_mask"] > 0]
        else:
            mask = inputs["step_mask"]
            steps = inputs["token_step"][rows, pos]
            kl_step = torch.zeros_like(mask).index_put((rows, steps), kl_tok, accumulate=True)
            rewards = inputs["rewards"] - a.kl_coef * kl_step
            old_v = inputs["old_values"]
            adv, ret = step_gae(rewards, old_v, mask, self.gamma_eff, a.lam)
            new_v = values.gather(1, inputs["state_pos"]) * mask
            adv_w = whiten(adv, mask) if a.whiten_advantages else adv
            adv_tok = adv_w[rows, steps]
            step_rewards = inputs["rewards"][mask > 0]

        log_ratio = logp - old_lp
        ratio = torch.exp(log_ratio)
        pg = torch.max(-adv_tok * ratio, -adv_tok * ratio.clamp(1.0 - a.cliprange, 1.0 + a.cliprange)).mean()
        valid = mask > 0
        v_err = (new_v - ret) ** 2
        if a.cliprange_value > 0:
            v_clip = old_v + (new_v - old_v).clamp(-a.cliprange_value, a.cliprange_value)
            v_err = torch.max(v_err, (v_clip - ret) ** 2)
        vf = 0.5 * v_err[valid].mean()
        loss = pg + a.vf_coef * vf
        if entropy is not None:
            loss = loss - a.entropy_coef * entropy.mean()

        with torch.no_grad():
            m = self._metrics
            m["policy_loss"].append(float(pg))
            m["value_loss"].append(float(vf))
            m["approx_kl"].append(float(((ratio - 1) - log_ratio).mean()))
            m["clipfrac"].append(float(((ratio - 1).abs() > a.cliprange).float().mean()))
            # explained variance over everything since the last log (CleanRL: over the batch), not per micro-batch:
            # two trajectories' returns can be nearly equal and make a tiny denominator (values of -4000)
            self._ev_pairs.append((ret[valid].detach().float().cpu(), new_v[valid].detach().float().cpu()))
            m["reward_mean"].append(float(step_rewards.mean()) if len(step_rewards) else 0.0)
            m["advantage_mean"].append(float(adv[valid].mean()))
            # kl_ref is per trajectory (summed over its ~100-300 action tokens, the penalty's scale);
            # kl_ref_token is the same per token, comparable across trajectory lengths
            m["kl_ref"].append(float(kl_tok.sum() / max(1, int(inputs["step_mask"].shape[0]))))
            m["kl_ref_token"].append(float(kl_tok.mean()) if kl_tok.numel() else 0.0)
            if entropy is not None:
                m["entropy"].append(float(entropy.mean()))
            self._tokens += int(att.sum())
        return loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        if self._ev_pairs:
            r = torch.cat([p[0] for p in self._ev_pairs])
            v = torch.cat([p[1] for p in self._ev_pairs])
            var = r.var(unbiased=False)
            self._metrics["explained_variance"].append(float(1 - (r - v).var(unbiased=False) / var) if var > 1e-8
                                                       else float("nan"))
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

    # ---- checkpoints: tied embeddings share storage, which plain safetensors.save_file refuses --------
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        import os

        from safetensors.torch import save_model

        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        save_model(self.accelerator.unwrap_model(self.model), os.path.join(output_dir, "model.safetensors"))
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
        import os

        from safetensors.torch import load_model

        load_model(self.accelerator.unwrap_model(model or self.model),
                   os.path.join(resume_from_checkpoint, "model.safetensors"), strict=False)
