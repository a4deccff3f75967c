"""Phases 1-4 of one PPO round, before any update (docs/architecture.md, "Advantages"):

    1. precompute   per trajectory, with the policy at the start of the round: reference and old log-probs of
                    every action token, the value head (zero or fitted to the Monte-Carlo returns) and the old
                    values V(s) at the value states;
    2. kl_shaped    with train.kl_in: reward, r'_t = r_t − β·KL_t, KL_t the penalty of π_old against π_ref summed
                    over action t's tokens (with kl_in: loss, the default, the KL is a loss term instead);
    3. advantages   GAE over steps (every token of action t gets A_t) or over action tokens (token-level
                    variants) against a baseline that never saw its own targets (trainer/baselines.py),
                    with γ = 0 for variants without credit across steps; the value head's target R is the
                    Monte-Carlo return of the shaped rewards;
    4. scale        A / std(A), once, over every step (or action token) of the round.

Phase 5, the update epochs, is `StepPPOTrainer` (trainer/step_ppo.py): its loss sees only the fixed
per-token advantages, returns and old values computed here, as in CleanRL's ppo.py.

"Value states" are where V is read: the position before each action's first token (step level) or before
each action token (token level). Both levels share one code path over a per-trajectory "unit" axis: steps or
action tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from pipeline import variants
from pipeline.errors import SteptoolError
from pipeline.rewards import discounted_returns
from trainer import baselines
from trainer.data import Example
from trainer.gae import step_gae
from trainer.model import PolicyWithValue, set_value_head


@dataclass
class Precomputed:
    """Phase 1's view of one trajectory, with the policy at the start of the round (L tokens, N action tokens,
    S steps, U units: the steps, or the N action tokens of a token-level variant)."""
    input_ids: list[int]        # [L] prompt, actions and observations
    action_mask: list[int]      # [L] 1 on the policy's own tokens
    rewards: list[float]        # [S] step rewards (the advantages table's)
    unit_rewards: list[float]   # [U] each step's reward, at token level on its action's last token
    token_unit: list[int]       # [N] the unit of each action token
    value_pos: list[int]        # [U] where V is read (the position before the unit)
    old_logprobs: list[float]   # [N] log π_old
    ref_logprobs: list[float]   # [N] log π_ref
    old_values: list[float]     # [U] the value head after its ridge fit (the value loss's clipping anchor)
    baseline: list[float]       # [U] b(s), the advantages' baseline (trainer/baselines.py)


@dataclass(frozen=True)
class RoundItem:
    """One trajectory as the update epochs train on it (phase 5), fixed for the round; shapes as in
    `Precomputed`. `collate` pads a batch of them, `round_table` writes their per-step part."""
    input_ids: list[int]        # [L]
    action_mask: list[int]      # [L]
    rewards: list[float]        # [S] step rewards (logged as reward_mean)
    value_pos: list[int]        # [U]
    old_logprobs: list[float]   # [N]
    ref_logprobs: list[float]   # [N]
    old_values: list[float]     # [U]
    advantages: list[float]     # [N] each action token's fixed advantage (its unit's, scaled once)
    returns: list[float]        # [U] the value head's target: Monte-Carlo return of the (KL-shaped) rewards
    step_return: list[float]    # [S] the round table's return (the advantages table's)
    step_baseline: list[float]  # [S] the baseline at each step
    step_advantage: list[float]  # [S] the advantage of each step (at token level, the mean over its tokens)
    token_step: list[int]       # [N] the step of each action token (the round table's per-step ratio and clip share)
    allowed: dict[int, list[int]] = field(default_factory=dict)  # action token -> ids the name constraint allowed


def pad(seqs: list[list], value, dtype) -> torch.Tensor:
    """Right-padded [len(seqs), max(len)] tensor (width at least 1)."""
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), max(width, 1)), value, dtype=dtype)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, : len(s)] = torch.tensor(s, dtype=dtype)
    return out


def allowed_ids(per_row: list[dict[int, list[int]]], counts: list[int]) -> torch.Tensor:
    """[T, K]: the ids the name constraint allowed at each action token of a batch (T = sum(counts), row by row as
    `torch.nonzero(action_mask)` orders them), −1 padded; K = 0 when no token was constrained
    (`PolicyWithValue.token_logprobs`)."""
    k = max((len(ids) for d in per_row for ids in d.values()), default=0)
    out = torch.full((sum(counts), k), -1, dtype=torch.long)
    start = 0
    for d, n in zip(per_row, counts):
        for j, ids in d.items():
            out[start + j, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        start += n
    return out


def action_token_steps(ex: Example) -> list[int]:
    """The step index of each action token, [N]."""
    return [k for k, (a, b) in enumerate(ex.step_bounds) for _ in range(b - a)]


def value_positions(ex: Example, token_level: bool) -> list[int]:
    """Where V is read, [U]: the position before each action token (token level) or before each action."""
    if token_level:
        return [p - 1 for p, m in enumerate(ex.action_mask) if m]
    return [a - 1 for a, _ in ex.step_bounds]


def unit_rewards(ex: Example, token_level: bool) -> list[float]:
    """Rewards per unit: per step, or per action token with each step's reward on its action's last token."""
    if not token_level:
        return list(ex.rewards)
    out = []
    for (a, b), r in zip(ex.step_bounds, ex.rewards):
        out += [0.0] * (b - a - 1) + [r]
    return out


def mc_returns(rewards: list[list[float]], gamma: float) -> list[list[float]]:
    """Per trajectory, G_t = Σ_{k≥t} γ^{k−t} r_k: `pipeline.rewards.discounted_returns`, the one implementation
    (the advantages table's returns are the same numbers)."""
    flat = discounted_returns([x for r in rewards for x in r], [len(r) for r in rewards], gamma).tolist()
    out, at = [], 0
    for r in rewards:
        out.append(flat[at:at + len(r)])
        at += len(r)
    return out


# ---- phase 1 -------------------------------------------------------------------------------------------------

def _shard_forward(model, examples: list[Example], cfg, rank: int, world: int, progress: bool,
                   ref_model: PolicyWithValue | None = None, desc: str = "precompute (ref/old log-probs, values)"
                   ) -> dict[int, tuple[list[float], list[float], torch.Tensor]]:
    """This rank's share of the precompute forward passes: {index: (the model's log-probs [N], the reference's
    log-probs [N] (`ref_model`'s, or the model's own without one), trunk features at the value states [U, H] fp32
    on the CPU)} for examples rank, rank + world, ... `model`: the policy as the training engine prepared it
    (DDP, FSDP or DeepSpeed wrapper, or the module itself). Batches of `cfg.per_device_eval_batch_size`
    trajectories of similar length (sorted, so little padding), right-padded: a causal model's hidden states at
    real positions do not depend on the padding after them.

    Every rank runs the same number of forward passes, the largest share's: under ZeRO-3 and FSDP each pass
    gathers the parameters with every rank, so a rank that stopped early would leave the others waiting. A rank
    with fewer trajectories runs stand-in batches (its first trajectory) whose results it drops."""
    from tqdm.auto import tqdm

    v = variants.get(cfg.variant)
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(cfg.bf16))
    mine = sorted(range(rank, len(examples), world), key=lambda i: len(examples[i].input_ids))
    size = max(1, int(cfg.per_device_eval_batch_size))
    batches = [mine[s:s + size] for s in range(0, len(mine), size)]
    largest = -(-len(examples) // world)  # rank 0's share
    stand_in = [mine[0] if mine else 0]
    batches += [None] * (-(-largest // size) - len(batches))
    out: dict[int, tuple[list[float], list[float], torch.Tensor]] = {}
    bar = tqdm(total=len(mine), desc=desc, unit="traj",
               disable=not progress, leave=False)
    for batch in batches:
        exs = [examples[i] for i in (batch or stand_in)]
        ids = pad([e.input_ids for e in exs], 0, torch.long).to(device)
        att = pad([[1] * len(e.input_ids) for e in exs], 0, torch.long).to(device)
        act = pad([e.action_mask for e in exs], 0, torch.long).to(device)
        rows, pos = torch.nonzero(act, as_tuple=True)
        allowed = allowed_ids([e.allowed for e in exs], [sum(e.action_mask) for e in exs]).to(device)
        with autocast:
            h, _, lp, _ = model(ids, att, rows, pos, cfg.logits_chunk, allowed=allowed)
            ref_lp = lp if ref_model is None else ref_model(ids, att, rows, pos, cfg.logits_chunk, allowed=allowed)[2]
        if batch is None:
            continue
        lp, ref_lp, rows_cpu = lp.float().cpu(), ref_lp.float().cpu(), rows.cpu()
        for r, (i, e) in enumerate(zip(batch, exs)):
            mine_r = rows_cpu == r
            out[i] = (lp[mine_r].tolist(), ref_lp[mine_r].tolist(), h[r, value_positions(e, v.token_level)].float().cpu())
        bar.update(len(batch))
    bar.close()
    _reshard(model)
    return out


def _reshard(model) -> None:
    """FSDP2 keeps the root module's parameters gathered after a forward pass (for the backward it expects):
    shard them again, so the value head's fit is written into the parameters the optimizer updates, not into
    a gathered copy that the next reshard frees (transformers' Trainer reshards after `evaluate` likewise)."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def _sum_over_ranks(device):
    """A `reduce` for baselines.ridge_fit: the tensor summed over every rank (on `device`: NCCL reduces GPU
    tensors only), back on the CPU."""
    import torch.distributed as dist

    def reduce(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device).contiguous()
        dist.all_reduce(t)
        return t.cpu()

    return reduce


def _gather(part: dict, world: int) -> tuple[dict, list[int]]:
    """Every rank's shard, on every rank (the baselines and the scaling need the whole round), and how many
    trajectories each rank computed."""
    if world <= 1:
        return part, [len(part)]
    import torch.distributed as dist

    parts: list = [None] * world
    dist.all_gather_object(parts, part)
    return {k: v for p in parts for k, v in p.items()}, [len(p) for p in parts]


@torch.no_grad()
def precompute(model: PolicyWithValue, examples: list[Example], cfg, rank: int = 0, world: int = 1,
               progress: bool = False, ref_model: PolicyWithValue | None = None,
               engine=None) -> tuple[list[Precomputed], dict]:
    """Per trajectory (a `Precomputed`), with the model as it is now (the start of the round; `cfg` a
    StepPPOConfig):

        ref_logprobs [N]  log π_ref of each action token: `ref_model`'s (the SFT policy, from the second round
                          on), or the model's own at the start of the round (the first round: the SFT policy)
        old_logprobs [N]  π_old: the model's own log-probs (recompute), or the behaviour log-probs recorded at
                          collection when usable (same length, none NaN)
        value_pos    [U]  the value states (U = steps, or N action tokens for a token-level variant)
        old_values   [U]  the value head there, after it is fitted (ridge) to the round's Monte-Carlo returns
                          (the value loss's clipping anchor, never the advantages' baseline)
        baseline     [U]  b(s) for the advantages, from `cfg.baseline` (trainer/baselines.py)

    and the round's baseline diagnostics: the explained variance of each baseline choice on the round's
    Monte-Carlo returns (leave-out for rloo and crossfit, in-sample for fit_returns).
    Runs under the same autocast as the loss's forward, so the first ratio is 1 up to rounding; batched,
    on the model's device; with `world` > 1 (distributed training) each rank runs every world-th trajectory
    and the log-probs are gathered, so every rank continues with the same round (the statistics' `shards`: how
    many each rank ran). The trunk features [U, H] stay on the rank that computed them: the ridge fits take
    their sums over the ranks (`baselines.ridge_fit`'s `reduce`) and each rank predicts its own trajectories'
    values, so only per-unit numbers are gathered, never a [units, H] tensor. `engine`: the model as the training engine prepared it (DDP, FSDP, DeepSpeed), which runs
    the forward passes; `model` is the module inside it, whose value head gets the fit."""
    v = variants.get(cfg.variant)
    gamma = v.discount(cfg.gamma)
    engine = model if engine is None else engine
    was_training = engine.training
    engine.eval()
    if ref_model is not None:
        ref_model.eval()
    local = _shard_forward(engine, examples, cfg, rank, world, progress, ref_model)
    fwd, shards = _gather({i: (lp, ref) for i, (lp, ref, _) in local.items()}, world)
    feats = [local[i][2] if i in local else None for i in range(len(examples))]  # this rank's trajectories
    items, unit_step = [], []
    targets = mc_returns([unit_rewards(ex, v.token_level) for ex in examples], gamma)
    for i, ex in enumerate(examples):
        cur, ref = fwd[i]
        old = cur
        if cfg.old_logprobs == "behaviour" and ex.behaviour_logprobs is not None \
                and len(ex.behaviour_logprobs) == len(ref) and not any(math.isnan(x) for x in ex.behaviour_logprobs):
            # NaN marks a log-prob the backend did not give (recompute instead); ±inf is none a model gives
            # (log_softmax is finite), so the recorded tokens are corrupt, and would make every weight NaN
            bad = next((k for k, x in enumerate(ex.behaviour_logprobs) if not math.isfinite(x)), None)
            if bad is not None:
                raise SteptoolError(f"trajectory {ex.traj_id}: behaviour log-prob {ex.behaviour_logprobs[bad]} at "
                                    f"action token {bad} (tokens.parquet, field logprobs): not finite; nothing trained")
            old = list(ex.behaviour_logprobs)
        n_act = len(ref)
        value_pos = value_positions(ex, v.token_level)
        unit_step.append(action_token_steps(ex) if v.token_level else list(range(len(ex.step_bounds))))
        items.append(Precomputed(
            input_ids=ex.input_ids, action_mask=ex.action_mask, rewards=list(ex.rewards),
            unit_rewards=unit_rewards(ex, v.token_level),
            token_unit=list(range(n_act)) if v.token_level else action_token_steps(ex), value_pos=value_pos,
            old_logprobs=old, ref_logprobs=ref, old_values=[], baseline=[]))
    engine.train(was_training)
    if not items:
        return items, {"shards": shards}
    groups = [ex.group for ex in examples]
    hidden = model.v_head.in_features
    reduce = _sum_over_ranks(next(model.parameters()).device) if world > 1 else None
    here = [i for i, f in enumerate(feats) if f is not None]
    x = torch.cat([feats[i] for i in here]) if here else torch.zeros(0, hidden)
    w, b = baselines.ridge_fit(x, torch.tensor([g for i in here for g in targets[i]]), reduce=reduce)
    head_w, head_b = set_value_head(model.v_head, w, b)
    # the head's own computation (nn.Linear is F.linear) on the fitted weights as the head stores them
    own = {i: torch.nn.functional.linear(feats[i].to(head_w.dtype), head_w, head_b).squeeze(-1).double().tolist()
           for i in here}
    cross = baselines.crossfit(feats, targets, groups, reduce=reduce, hidden=hidden)
    predicted, _ = _gather({i: (own[i], cross[i]) for i in here}, world)
    in_sample = [predicted[i][0] for i in range(len(examples))]
    candidates = {"rloo": baselines.rloo(targets, unit_step, groups),
                  "crossfit": [predicted[i][1] for i in range(len(examples))],
                  "fit_returns": in_sample, "zero": [[0.0] * len(t) for t in targets]}
    for it, old_v, base in zip(items, in_sample, candidates[cfg.baseline]):
        it.old_values, it.baseline = old_v, base
    stats = {f"round_baseline_ev_{k}": baselines.explained_variance(targets, c) for k, c in candidates.items()
             if k != "zero"}
    stats["round_tasks"] = len(set(groups))
    stats["shards"] = shards
    return items, stats


# ---- phase 2 -------------------------------------------------------------------------------------------------

def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL penalty of the sampled tokens, any shape: k1 = d, k3 = exp(−d) + d − 1, d = log π − log π_ref."""
    d = logp - ref_logp
    if estimator == "k1":
        return d
    if estimator == "k3":
        return torch.exp(-d) + d - 1.0
    raise ValueError(f"kl_estimator must be k1 or k3, got {estimator!r}")


def kl_to_ref(logp: torch.Tensor, ref_logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(π_θ‖π_ref) at the sampled contexts, from tokens sampled from π_old, any shape.

    With a = π_θ/π_old and b = π_ref/π_old at the sampled token: k = a·log(a/b) − a + b. Unbiased, as
    E_old[a·log(a/b)] = E_θ[log π_θ/π_ref] and E_old[a] = E_old[b] = 1; never negative, as k = b·f(a/b) with
    f(r) = r·log r − r + 1 ≥ 0. With π_old = π_ref (the first round, recomputed) it is the k2-like r·log r − r + 1.
    (Averaging log π_θ − log π_ref over tokens from π_ref instead estimates −KL(π_ref‖π_θ): negative.)"""
    log_a = logp - old_logp
    log_b = ref_logp - old_logp
    a = torch.exp(log_a)
    return a * (log_a - log_b) - a + torch.exp(log_b)


def kl_shaped(rewards: torch.Tensor, kl_tok: torch.Tensor, token_unit: torch.Tensor, tok_mask: torch.Tensor,
              kl_coef: float) -> torch.Tensor:
    """r' = r − β·KL per unit.

    Args:
        rewards: [B, U] rewards per unit (0 on padding).
        kl_tok: [B, N] per-action-token KL (any value on padding).
        token_unit: [B, N] the unit of each action token (its step, or itself at token level).
        tok_mask: [B, N] 1 on real action tokens.
    Returns:
        [B, U]: each unit's reward minus β times the KL summed over its tokens."""
    kl = torch.zeros_like(rewards)
    kl.scatter_add_(1, token_unit.clamp(min=0), kl_tok * tok_mask.to(kl_tok.dtype))
    return rewards - kl_coef * kl


# ---- phases 3 and 4 --------------------------------------------------------------------------------------------

def advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, variant: str, gamma: float,
               lam: float, token_lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over units [B, U] (steps, or action tokens of a token-level variant: observations are the
    environment's transition, so the next value of an action token is the next action token's). A variant
    without credit across steps uses γ = 0: A_t = r_t − V(s_t). λ is `lam` per step, `token_lam` per action
    token (docs/architecture.md, "ppo_outcome: λ per token"). Returns (A, R = A + V), 0 on padding."""
    v = variants.get(variant)
    return step_gae(rewards, values, mask, v.discount(gamma), token_lam if v.token_level else lam)


def prepare_round(model: PolicyWithValue, examples: list[Example], cfg, rank: int = 0, world: int = 1,
                  progress: bool = False, ref_model: PolicyWithValue | None = None,
                  engine=None) -> tuple[list[RoundItem], dict]:
    """Phases 1-4. Returns the `RoundItem`s the update epochs train on and the round's statistics (advantages
    before the scaling; `shards`, how many trajectories each rank precomputed). `rank`/`world`/`engine`: this
    process's share of the precompute under distributed training and the prepared model (`precompute`)."""
    pre, stats = precompute(model, examples, cfg, rank, world, progress, ref_model, engine)  # 1
    if not pre:
        return [], {"shards": stats["shards"]}
    token_level = variants.get(cfg.variant).token_level
    tok_mask = pad([[1] * len(p.old_logprobs) for p in pre], 0, torch.float64)
    token_unit = pad([p.token_unit for p in pre], 0, torch.long)
    unit_mask = pad([[1] * len(p.unit_rewards) for p in pre], 0, torch.float64)
    kl_tok = kl_per_token(pad([p.old_logprobs for p in pre], 0.0, torch.float64),
                          pad([p.ref_logprobs for p in pre], 0.0, torch.float64), cfg.kl_estimator)
    # 2: the penalty in the reward only with kl_in: reward (with `recompute`, zero in a first round: π_old = π_ref);
    # kl_in: loss puts β·KL(π_θ‖π_ref) in the loss instead (StepPPOTrainer.compute_loss)
    rewards = kl_shaped(pad([p.unit_rewards for p in pre], 0.0, torch.float64), kl_tok, token_unit,
                        tok_mask, cfg.kl_coef if cfg.kl_in == "reward" else 0.0)
    base = pad([p.baseline for p in pre], 0.0, torch.float64)
    adv, _ = advantages(rewards, base, unit_mask, cfg.variant, cfg.gamma, cfg.lam, cfg.token_lam)  # 3
    gamma = variants.get(cfg.variant).discount(cfg.gamma)
    ret = mc_returns([rewards[i, :len(p.unit_rewards)].tolist() for i, p in enumerate(pre)], gamma)
    step_ret = mc_returns([list(ex.rewards) for ex in examples], gamma)  # the advantages table's `return`
    valid = unit_mask > 0
    std = float(adv[valid].std()) if int(valid.sum()) > 1 else 0.0
    stats.update({"round_advantage_mean": float(adv[valid].mean()), "round_advantage_std": std,
                  "round_kl_penalty_mean": float((kl_tok * tok_mask).sum() / len(pre)),
                  "round_units": int(valid.sum())})
    if cfg.whiten_advantages and std > 1e-8:
        # 4: scale only. The baseline already centres A; subtracting the round's mean as well would add a
        # second baseline and give steps that earned nothing a nonzero advantage.
        adv = adv / std
    adv_tok = adv.gather(1, token_unit)
    items = []
    for i, p in enumerate(pre):
        n, u = len(p.old_logprobs), len(p.unit_rewards)
        step_baseline, step_advantage = _per_step(examples[i], p, adv[i, :u].tolist(), token_level)
        items.append(RoundItem(input_ids=p.input_ids, action_mask=p.action_mask, rewards=p.rewards,
                               value_pos=p.value_pos, old_logprobs=p.old_logprobs, ref_logprobs=p.ref_logprobs,
                               old_values=p.old_values, advantages=adv_tok[i, :n].tolist(), returns=ret[i],
                               step_return=step_ret[i], step_baseline=step_baseline, step_advantage=step_advantage,
                               token_step=action_token_steps(examples[i]), allowed=examples[i].allowed))
    return items, stats


def _per_step(ex: Example, item: Precomputed, unit_adv: list[float], token_level: bool
              ) -> tuple[list[float], list[float]]:
    """(baseline, advantage) per step, for the round table: at token level the baseline at the step's first
    action token and the mean advantage over its tokens."""
    if not token_level:
        return list(item.baseline), unit_adv
    steps = action_token_steps(ex)
    n = len(ex.step_bounds)
    total, count = step_sums(unit_adv, steps, n), step_sums([1.0] * len(steps), steps, n)
    first: dict[int, int] = {}
    for j, k in enumerate(steps):
        first.setdefault(k, j)
    base = [item.baseline[first[k]] if k in first else 0.0 for k in range(n)]
    adv = [total[k] / count[k] if count[k] else 0.0 for k in range(n)]
    return base, adv


def round_table(examples: list[Example], items: list[RoundItem], variant: str,
                step_ratios: dict[int, tuple[list, list]] | None = None,
                logprobs_after: list[list[float]] | None = None) -> list[dict]:
    """Rows of schema ROUND_STEPS: per step, the reward, return, baseline and advantage this round trained with,
    from `step_ratios` (trajectory index -> (mean ratio, clip share) per step, `StepPPOTrainer.step_ratios`)
    the PPO ratio and clip share its last update epoch saw (null where none was recorded), and the step's
    action log-likelihood Σ log π over its tokens under π_old (`logp_old`) and, from `logprobs_after` (per
    trajectory, every action token's log π after the round: `StepPPOTrainer.logprobs_after`), after it
    (`logp_new`; null without)."""
    step_ratios = step_ratios or {}
    rows = []
    for i, (ex, it) in enumerate(zip(examples, items)):
        ratio, clipped = step_ratios.get(i, ([], []))
        old = step_sums(it.old_logprobs, it.token_step, len(ex.step_bounds))
        new = step_sums(logprobs_after[i], it.token_step, len(ex.step_bounds)) if logprobs_after else None
        for k, (r, g, b, a) in enumerate(zip(ex.rewards, it.step_return, it.step_baseline, it.step_advantage)):
            rows.append({"traj_id": ex.traj_id, "task_id": ex.group, "step_idx": k, "reward": float(r),
                         "return": float(g), "baseline": float(b), "advantage": float(a), "variant": variant,
                         "ratio": ratio[k] if k < len(ratio) else None,
                         "clipped": clipped[k] if k < len(clipped) else None,
                         "logp_old": old[k], "logp_new": new[k] if new is not None else None})
    return rows


def step_sums(per_token: list[float], token_step: list[int], n_steps: int) -> list[float]:
    """Per step, the sum of a per-action-token value over the step's tokens, [n_steps] (0 for a step without any).
    `token_step` [N]: the step of each action token (`action_token_steps`)."""
    if len(per_token) != len(token_step):
        raise ValueError(f"{len(per_token)} values for {len(token_step)} action tokens")
    out = [0.0] * n_steps
    for x, k in zip(per_token, token_step):
        out[k] += float(x)
    return out


@torch.no_grad()
def logprobs_now(model, examples: list[Example], cfg, rank: int = 0, world: int = 1,
                 progress: bool = False) -> list[list[float]]:
    """Per trajectory, every action token's log π under the model as it is now, [N] each (after a round: the
    round table's `logp_new`): the precompute's forward pass (same batches, autocast and name sets), without
    the reference and the value fit. `model`: as the training engine prepared it; every rank calls it
    (distributed: each runs its share and the results are gathered)."""
    was_training = model.training
    model.eval()
    local = _shard_forward(model, examples, cfg, rank, world, progress, desc="log-probs after the round")
    model.train(was_training)
    got, _ = _gather({i: lp for i, (lp, _, _) in local.items()}, world)
    return [got[i] for i in range(len(examples))]


def step_ratio_stats(ratio: torch.Tensor, rows: torch.Tensor, steps: torch.Tensor, n_steps: list[int],
                     cliprange: float) -> list[tuple[list, list]]:
    """Per batch row, (mean ratio, clip share) of each of its `n_steps[row]` steps, over the step's action tokens:
    the ratio π_θ/π_old and the share of tokens with |ratio − 1| > cliprange (the logged clipfrac's test, per
    step); None for a step with no token in the batch.

    ratio, rows, steps: [T] one entry per action token of the batch (row and step index of each)."""
    width = max(n_steps, default=0)
    if not width:
        return [([], []) for _ in n_steps]
    key = rows.long() * width + steps.long()
    size = len(n_steps) * width
    r = ratio.detach().double()
    count = torch.bincount(key, minlength=size).tolist()
    total = torch.bincount(key, weights=r, minlength=size).tolist()
    out_of_range = torch.bincount(key, weights=((r - 1).abs() > cliprange).double(), minlength=size).tolist()
    out = []
    for b, n in enumerate(n_steps):
        cells = range(b * width, b * width + n)
        out.append(([total[c] / count[c] if count[c] else None for c in cells],
                    [out_of_range[c] / count[c] if count[c] else None for c in cells]))
    return out
