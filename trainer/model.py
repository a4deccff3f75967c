"""The policy with a value head on its trunk: V(s) is a linear map of the last hidden state at a state's
last token. Logits are computed only where a loss needs them (action positions), in chunks, so a long
trajectory never materialises [tokens, vocab]."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipeline.layout import LORA_ADAPTER


def _base(policy):
    return policy.get_base_model() if hasattr(policy, "get_base_model") else policy


class PolicyWithValue(nn.Module):
    def __init__(self, policy, value_grad_to_trunk: bool = False):
        super().__init__()
        self.policy = policy
        # False: the value loss trains the head only (on detached trunk features). With a shared trunk the
        # value loss's gradient flows into the policy: measured on the CPU default (24 trajectories, lr 5e-5),
        # outcome-only PPO drifted to approx_kl 0.08 and a per-token KL to the reference of -0.09 with nearly
        # zero advantages, the drift coming from a value loss of up to 45.
        self.value_grad_to_trunk = value_grad_to_trunk
        hidden = _base(policy).config.hidden_size
        self.v_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.v_head.weight)
        nn.init.zeros_(self.v_head.bias)
        self.config = _base(policy).config  # Trainer reads a few fields from it

    supports_gradient_checkpointing = True

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, every_n_layers: int = 1,
                                        offload: bool = False) -> None:
        """The Trainer's hook for `gradient_checkpointing` (transformers >= 5): checkpoint the trunk's layers.
        Non-reentrant, so the recomputation needs no input that requires grad; LoRA's frozen embeddings get
        one all the same (peft's remedy), for a caller that asks for reentrant checkpoints."""
        kwargs = activation_checkpointing_kwargs or {"use_reentrant": False}
        base = _base(self.policy)
        if hasattr(base, "activation_checkpointing_enable"):
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers,
                                                 offload=offload)
        else:  # transformers 4.x
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if base is not self.policy or kwargs.get("use_reentrant"):
            base.enable_input_require_grads()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs) -> None:
        """transformers 4.x's name of the same hook."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        _base(self.policy).gradient_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        base = _base(self.policy)
        name = "is_activation_checkpointing" if hasattr(base, "is_activation_checkpointing") \
            else "is_gradient_checkpointing"  # transformers 4.x
        return bool(getattr(base, name, False))

    @property
    def trunk(self):
        return _base(self.policy).get_decoder()

    @property
    def lm_head(self):
        return _base(self.policy).get_output_embeddings()

    @property
    def _no_split_modules(self):  # FSDP's transformer-based auto wrap reads the decoder layer class from here
        return getattr(_base(self.policy), "_no_split_modules", None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, chunk: int = 1024, with_entropy: bool = False,
                allowed: torch.Tensor | None = None):
        """(hidden [B, L, H], values [B, L]): V at every position (the state after that token); with `rows` and
        `positions` [N] also (log π of the token at each (row, position) [N], its entropy [N] or None; `allowed`
        as in `token_logprobs`). The log-probs are computed inside forward so a distributed wrapper (DDP, FSDP,
        DeepSpeed) sees the lm_head used within its forward, where its parameters are gathered."""
        out = self.trunk(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        h = out.last_hidden_state
        # The value head stays fp32 under bf16 autocast: a head fitted to the returns (ridge, at the round's start)
        # has large weights that cancel, and bf16 rounding put its values off by ~10 (explained variance -4000).
        with torch.autocast(h.device.type, enabled=False):
            feats = h if self.value_grad_to_trunk else h.detach()
            values = self.v_head(feats.to(self.v_head.weight.dtype)).squeeze(-1)
        if rows is None:
            return h, values
        return (h, values, *self.token_logprobs(h, rows, positions, input_ids, chunk, with_entropy, allowed))

    def token_logprobs(self, hidden: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor,
                       input_ids: torch.Tensor, chunk: int = 1024, with_entropy: bool = False,
                       allowed: torch.Tensor | None = None):
        """log π(token at `positions`) from the hidden state one position earlier, [N]; and the entropy [N].

        `allowed` [N, K] (−1 padded; K = 0 or None: none): for a token the name constraint restricted, the ids
        it allowed there; its log-prob and entropy are then those of the distribution renormalised over them,
        log π(a) − log Σ_allowed π, the one the agent sampled from (0 for a forced token, whatever θ)."""
        lps, ents = [], []
        constrained = allowed is not None and allowed.shape[-1] > 0
        for s in range(0, len(rows), chunk):
            r, p = rows[s:s + chunk], positions[s:s + chunk]
            logits = self.lm_head(hidden[r, p - 1]).float()
            logp = torch.log_softmax(logits, dim=-1)
            lp = logp.gather(-1, input_ids[r, p].unsqueeze(-1)).squeeze(-1)
            ent = -(logp.exp() * logp).sum(-1) if with_entropy else None
            if constrained:
                lp, ent = _renormalised(logp, lp, ent, allowed[s:s + chunk].to(logp.device))
            lps.append(lp)
            if with_entropy:
                ents.append(ent)
        lp = torch.cat(lps) if lps else hidden.new_zeros(0)
        ent = torch.cat(ents) if ents else None
        return lp, ent

    def save_policy(self, out_dir: str | Path, tokenizer=None, state_dict: dict | None = None) -> None:
        """The trained policy as a plain checkpoint (LoRA merged), and the value head beside it. `state_dict`:
        this module's full weights as the accelerator gathered them (ZeRO-3 / FSDP leave this process only a
        shard); without it, the weights this process holds."""
        out_dir = Path(out_dir)
        if state_dict is not None:
            if not hasattr(self.policy, "merge_and_unload"):
                # full fine-tuning: the gathered weights are the checkpoint
                # a tied weight once (DeepSpeed's gathered dict holds lm_head.weight as a copy, not the embedding's
                # storage, so save_pretrained would not see the tie): drop the names that alias a parameter
                aliases = ({n for n, _ in self.policy.named_parameters(remove_duplicate=False)}
                           - {n for n, _ in self.policy.named_parameters()})
                sub = {k[len("policy."):]: v for k, v in state_dict.items()
                       if k.startswith("policy.") and k[len("policy."):] not in aliases}
                self.policy.save_pretrained(out_dir, state_dict=sub)
                if tokenizer is not None:
                    tokenizer.save_pretrained(out_dir)
                torch.save({k[len("v_head."):]: v.cpu() for k, v in state_dict.items() if k.startswith("v_head.")},
                           out_dir / "value_head.pt")
                return
            if any(p.numel() == 0 for p in self.parameters()):
                raise NotImplementedError("LoRA under ZeRO-3 / sharded FSDP: merging needs the full weights on one "
                                          "process; use ZeRO-2 or DDP with LoRA (configs/accelerate/)")
        if hasattr(self.policy, "merge_and_unload"):
            # the adapter too, before merging consumes it: a server (vLLM) serves the SFT model plus this adapter,
            # and the next round continues it (docs/architecture.md, "Scaling out")
            self.policy.save_pretrained(out_dir / LORA_ADAPTER)
        policy = self.policy.merge_and_unload() if hasattr(self.policy, "merge_and_unload") else self.policy
        policy.save_pretrained(out_dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)
        torch.save(self.v_head.state_dict(), out_dir / "value_head.pt")


def _set_zero3_master(p, value: torch.Tensor) -> None:
    """This rank's slice of a ZeRO-3 parameter's fp32 master copy set from the full `value`. DeepSpeed's
    `safe_set_full_fp32_param` (stage3.py, `set_full_hp_param`, 0.19) narrows the unpadded value at
    partition size × rank, which runs past its end on the last ranks whenever the parameter's size is not a multiple
    of the world size (the value head's bias: 1 element on 2 ranks). The same steps with the padded tail left as is."""
    opt = p._z3_optimizer
    part, group = opt._get_fp32_opt_state_partition(p, release_swap_buffers=False)
    n = part.numel()
    mine = value.flatten().to(part.dtype)[n * opt._get_param_partition_rank(p):][:n]
    part.data[:mine.numel()].copy_(mine)
    if opt._swappable_optimizer_subgroup(group):
        opt._optimizer_states_and_gradient_swap_out(group)


def with_lora(model, r: int):
    """`model` with LoRA adapters of rank r (alpha 2r) on every linear layer (peft's "all-linear"), the train
    stage's; what trains in fp32 (`trainable_in_fp32`)."""
    from peft import LoraConfig, get_peft_model

    return trainable_in_fp32(get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear",
                                                              task_type="CAUSAL_LM")))


def trainable_in_fp32(model):
    """Every trainable parameter in fp32 (AdamW's master weights over a bf16 base), whatever peft's version keeps."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


@torch.no_grad()
def set_value_head(head: nn.Linear, w: torch.Tensor, b: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Write the round's ridge fit (weights `w` [H], bias `b`) into the value head wherever the training engine
    keeps it, after `accelerator.prepare` (docs/architecture.md, "Scaling out"):

        a plain tensor (one process, DDP, ZeRO-1/2's module copy)  copied in place;
        an FSDP2 DTensor (each rank holds a shard)                  the full value distributed as the parameter is;
        a ZeRO-3 parameter (partitioned, `ds_id`)                   gathered, written, partitioned again;
    and under DeepSpeed also its fp32 master copy in the optimizer (`deepspeed.utils.safe_set_full_fp32_param`,
    DeepSpeed's documented way to modify partitioned states, ZeRO stages 1-3), which the first optimizer step
    would otherwise write back over the fit. Every rank calls it with the same values.

    Returns the weight [1, H] and bias [1] as the head stores them (its dtype, on the CPU)."""
    full = {"weight": w.detach().double().view(1, -1), "bias": torch.tensor([float(b)], dtype=torch.float64)}
    for name, p in (("weight", head.weight), ("bias", head.bias)):
        value = full[name]
        if hasattr(p, "ds_id"):  # DeepSpeed ZeRO-3
            import deepspeed

            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                p.copy_(value.to(p.device, p.dtype))
        elif type(p).__name__ == "DTensor" or type(p.data).__name__ == "DTensor":
            from torch.distributed.tensor import distribute_tensor

            p.copy_(distribute_tensor(value.to(p.device, p.dtype), p.device_mesh, p.placements))
        else:
            p.copy_(value.to(p.device, p.dtype))
        if hasattr(p, "ds_id"):  # DeepSpeed keeps fp32 master weights apart
            _set_zero3_master(p, value.float())
        elif hasattr(p, "_hp_mapping"):
            from deepspeed.utils import safe_set_full_fp32_param

            safe_set_full_fp32_param(p, value.float())
    dtype = head.weight.dtype
    return full["weight"].to(dtype), full["bias"].to(dtype)


def _renormalised(logp: torch.Tensor, lp: torch.Tensor, ent: torch.Tensor | None, allowed: torch.Tensor):
    """`lp` [n] and `ent` [n] (or None) of the rows of `logp` [n, V] that have allowed ids (`allowed` [n, K], −1
    padded) replaced by those of the distribution renormalised over them; the other rows are left as they are.
    Only the constrained rows go through the logsumexp (an all-padding row's −inf would make NaN gradients)."""
    on = allowed >= 0
    idx = on.any(-1).nonzero().squeeze(-1)
    if idx.numel() == 0:
        return lp, ent
    on = on[idx]
    sub = logp[idx].gather(-1, allowed[idx].clamp(min=0)).masked_fill(~on, float("-inf"))  # [c, K]
    norm = torch.logsumexp(sub, dim=-1)  # log Σ_allowed π, [c]
    lp = lp - torch.zeros_like(lp).index_copy(0, idx, norm)
    if ent is not None:
        log_c = sub - norm.unsqueeze(-1)  # −inf off the set, where its probability is exp(−inf) = 0
        ent = ent.index_copy(0, idx, -(log_c.exp() * log_c.masked_fill(~on, 0.0)).sum(-1))
    return lp, ent
