"""The PPO loss of one batch (`StepPPOTrainer.compute_loss`, docs/architecture.md, "Advantages and the PPO
round", phase 5) on hand-computed numbers, as CleanRL's and TRL's reference values are: a batch whose
log-probs, values and advantages are fixed (a module that returns them stands in for the network, so the loss's
arithmetic is all that is tested), with ratios inside and outside the clip range, both signs of the advantage,
a clipped value target on each side, and padding that must change nothing.

Five action tokens (ε = 0.2), two in the second row plus one padding slot:

    token  ratio  A    −A·r   −A·clip(r)  max (the pessimistic bound)   |r − 1| > ε
    1      1.5    +1   −1.5   −1.2        −1.2  (clipped)               yes
    2      0.5    +1   −0.5   −0.8        −0.5                          yes
    3      1.1    −2   +2.2   +2.2        +2.2                          no
    4      0.7    −1   +0.7   +0.8        +0.8  (clipped)               yes
    5      1.3    −1   +1.3   +1.2        +1.3                          yes
    L_pg = (−1.2 − 0.5 + 2.2 + 0.8 + 1.3) / 5 = 0.52, clipfrac 4/5

Three value states (ε_v = 0.2): (V, V_old, R) = (0.5, 0.4, 1.0): both 0.25; (1.6, 1.0, 2.0): unclipped 0.16,
clipped V_old + 0.2 = 1.2 -> 0.64, the larger 0.64; (0.0, 0.1, −0.5): both 0.25.
L_v = ½·(0.25 + 0.64 + 0.25)/3 = 0.19, and loss = L_pg + 0.5·L_v = 0.615.

approx_kl = mean((r − 1) − log r) = (0.0945349 + 0.1931472 + 0.0046898 + 0.0566749 + 0.0376357)/5 = 0.0773365.
KL to the reference with log(π_ref/π_old) = (0, 0, 0, 0.2, −0.1): a·(log a − log b) − a + b per token =
(0.1081977, 0.1534264, 0.0048412, 0.1317303, 0.0759110), mean 0.0948213; with kl_in loss and β = 0.1 the loss is
0.615 + 0.0094821 = 0.6244821.
"""
from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import REPO

RATIOS = [1.5, 0.5, 1.1, 0.7, 1.3]
ADV = [1.0, 1.0, -2.0, -1.0, -1.0]
LOG_B = [0.0, 0.0, 0.0, 0.2, -0.1]  # log π_ref − log π_old per token
# d loss / d shift by hand (test_the_gradient_pushes_the_right_way says why): the policy part of the unclipped
# tokens 2, 3, 5 and the value part of the unclipped states 1 and 3
PG_GRAD = -(1 * 0.5 + (-2) * 1.1 + (-1) * 1.3) / 5
V_GRAD = 0.5 * ((0.5 - 1.0) + (0.0 + 0.5)) / 3


class FixedOutputs(torch.nn.Module):
    """Returns the batch's log-probs and values as given (with a parameter, so the loss has a gradient)."""

    def __init__(self, logp: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.shift = torch.nn.Parameter(torch.zeros(()))
        self.logp, self.values = logp, values
        self.entropy = torch.tensor([0.5, 1.0, 1.5, 2.0, 2.5])  # per action token, when asked for
        self.seen_mask = None

    def forward(self, ids, att, rows, pos, chunk, want_entropy=False, allowed=None):
        assert len(rows) == len(self.logp)  # one log-prob per action token, in row-major order
        assert allowed is None  # these batches constrain no name (tests/test_name_logprobs.py does)
        self.seen_mask = att
        return None, self.values + self.shift, self.logp + self.shift, (self.entropy if want_entropy else None)


def _batch(pad_advantage: float = 0.0, pad_value: float = 0.0):
    old = [-1.0, -2.0, -0.5, -1.5, -0.7]
    new = [o + math.log(r) for o, r in zip(old, RATIOS)]
    ref = [o + b for o, b in zip(old, LOG_B)]
    # row 0: 3 action tokens at positions 1-3, value states at positions 0 and 2; row 1: 2 action tokens at 2-3
    action_mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 0]])
    values = torch.tensor([[0.5, 7.0, 1.6, 7.0, 7.0], [pad_value, 7.0, 0.0, 7.0, 7.0]])
    inputs = {
        "input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 5, dtype=torch.long),
        "action_mask": action_mask,
        "tok_mask": torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]),
        "old_logprobs": torch.tensor([old[:3], old[3:] + [-9.0]]),
        "ref_logprobs": torch.tensor([ref[:3], ref[3:] + [-9.0]]),
        "advantages": torch.tensor([ADV[:3], ADV[3:] + [pad_advantage]]),
        "value_pos": torch.tensor([[0, 2], [2, 0]]),
        "value_mask": torch.tensor([[1.0, 1.0], [1.0, 0.0]]),
        "old_values": torch.tensor([[0.4, 1.0], [0.1, 0.0]]),
        "returns": torch.tensor([[1.0, 2.0], [-0.5, 0.0]]),
        "rewards": torch.tensor([[0.0, 1.0], [0.5, 0.0]]), "step_mask": torch.tensor([[1.0, 1.0], [1.0, 0.0]]),
        # row 0: token 1 is step 0's action, tokens 2-3 step 1's; row 1 (trajectory 7 of the round): one step
        "traj_index": torch.tensor([0, 7]), "tok_step": torch.tensor([[0, 1, 1], [0, 0, 0]]),
    }
    return FixedOutputs(torch.tensor(new), values), inputs


@pytest.fixture(scope="module")
def trainer(tokenizer):
    from tests.support.tiny_model import make_tiny_model
    from trainer.config import StepPPOConfig
    from trainer.model import PolicyWithValue
    from trainer.step_ppo import StepPPOTrainer

    cfg = StepPPOConfig(output_dir=str(REPO / ".pytest_cache" / "ppo-loss"), report_to=[], use_cpu=True,
                        cliprange=0.2, cliprange_value=0.2, vf_coef=0.5, kl_coef=0.0, entropy_coef=0.0,
                        save_strategy="no", disable_tqdm=True)
    return StepPPOTrainer(PolicyWithValue(make_tiny_model(tokenizer)), cfg, [], pad_id=0)


def _loss(trainer, model, inputs, **cfg):
    saved = {k: getattr(trainer.ppo, k) for k in cfg}
    for k, v in cfg.items():
        setattr(trainer.ppo, k, v)
    trainer._metrics.clear()
    try:
        loss = trainer.compute_loss(model, inputs)
    finally:
        for k, v in saved.items():
            setattr(trainer.ppo, k, v)
    return loss, {k: v[-1] for k, v in trainer._metrics.items()}


def test_each_steps_ratio_and_clip_share_are_kept_for_the_round_table(trainer):
    """Per step, the mean ratio over its action tokens and the share of them outside 1 ± ε, by hand from the
    table above: row 0 step 0 = token 1 (1.5, clipped), step 1 = tokens 2-3 (0.5 clipped, 1.1 not): mean 0.8,
    share 0.5; row 1's one step = tokens 4-5 (0.7, 1.3, both outside): mean 1.0, share 1. The padding slot of
    row 1 counts nowhere."""
    from trainer.ppo_round import step_ratio_stats

    model, inputs = _batch(pad_advantage=5.0)
    trainer._step_ratios.clear()
    _loss(trainer, model, inputs)
    got = {i: (r, c) for i, (_, r, c) in trainer._step_ratios.items()}
    assert got.keys() == {0, 7}
    assert got[0][0] == pytest.approx([1.5, 0.8]) and got[0][1] == [1.0, 0.5]
    assert got[7][0] == pytest.approx([1.0]) and got[7][1] == [1.0]
    # the function alone: a step with no token in the batch is None, a later epoch's record replaces the first
    ratio = torch.tensor([1.0, 1.5, 0.5, 1.1, 0.9, 2.0])
    out = step_ratio_stats(ratio, torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 1, 0, 2, 2]), [2, 3], 0.2)
    assert out[0][0] == pytest.approx([1.25, 0.5]) and out[0][1] == [0.5, 1.0]
    assert out[1][0][0] == pytest.approx(1.1) and out[1][0][1] is None and out[1][0][2] == pytest.approx(1.45)
    assert out[1][1] == [0.0, None, 0.5]
    model2, inputs2 = _batch()
    model2.logp = model2.logp * 0 + inputs2["old_logprobs"][inputs2["tok_mask"] > 0]  # ratio 1 everywhere
    trainer.state.global_step += 1
    _loss(trainer, model2, inputs2)
    assert trainer._step_ratios[0][1:] == ([1.0, 1.0], [0.0, 0.0])
    assert trainer.step_ratios()[7] == ([1.0], [0.0])


def test_the_loss_equals_the_hand_computed_numbers(trainer):
    model, inputs = _batch()
    loss, m = _loss(trainer, model, inputs)
    assert m["policy_loss"] == pytest.approx(0.52, abs=1e-6)
    assert m["clipfrac"] == pytest.approx(0.8, abs=1e-6)
    assert m["value_loss"] == pytest.approx(0.19, abs=1e-6)
    assert float(loss.detach()) == pytest.approx(0.615, abs=1e-6)
    assert m["approx_kl"] == pytest.approx(0.0773365, abs=1e-6)
    assert m["kl_ref_token"] == pytest.approx(0.0948213, abs=1e-6)  # logged whatever β
    # the KL in the loss (kl_in: loss, β = 0.1); in the reward instead, the batch's loss has no KL term
    assert float(_loss(trainer, model, inputs, kl_coef=0.1)[0].detach()) == pytest.approx(0.6244821, abs=1e-6)
    assert float(_loss(trainer, model, inputs, kl_coef=0.1, kl_in="reward")[0].detach()) == pytest.approx(0.615,
                                                                                                     abs=1e-6)


def test_no_value_clipping_and_padding(trainer):
    model, inputs = _batch()
    # ε_v = 0: the plain squared error, ½·(0.25 + 0.16 + 0.25)/3 = 0.11
    assert _loss(trainer, model, inputs, cliprange_value=0.0)[1]["value_loss"] == pytest.approx(0.11, abs=1e-6)
    # padding (an advantage of 1000 on the padded token slot, a value of 100 read at the padded value state)
    # changes nothing
    model2, padded = _batch(pad_advantage=1000.0, pad_value=100.0)
    assert float(_loss(trainer, model2, padded)[0].detach()) == pytest.approx(0.615, abs=1e-6)


def test_the_gradient_pushes_the_right_way(trainer):
    """d loss / d shift, where `shift` adds to every log-prob and every value: the policy part is
    −mean(A·r) over the unclipped tokens (tokens 2, 3, 5: clipped ones have no gradient), the value part
    0.5·½·2·mean over states of (V − R) where the unclipped error is the larger (states 1 and 3; state 2 takes the
    clipped one, whose gradient is 0): −(1·0.5 + (−2)·1.1 + (−1)·1.3)/5 + 0.5·((0.5 − 1) + (0 + 0.5))/3."""
    model, inputs = _batch()
    loss, _ = _loss(trainer, model, inputs)
    loss.backward()
    assert float(model.shift.grad) == pytest.approx(PG_GRAD + V_GRAD, abs=1e-6)


def test_a_ratio_on_the_clip_bound_is_not_counted_as_clipped(trainer):
    """clamp(r, 1 − ε, 1 + ε) leaves r = 1 + ε as it is, so clipfrac (|r − 1| > ε, CleanRL's) does not count it:
    with ε = 1, ratios (2, 2, 1, 1, 2) — exact in float32: exp(log 2) = 2 — clip nothing; ε = 0.5 clips the three 2s."""
    model, inputs = _batch()
    old = inputs["old_logprobs"][inputs["tok_mask"] > 0]
    model.logp = old + torch.log(torch.tensor([2.0, 2.0, 1.0, 1.0, 2.0]))
    assert torch.equal(torch.exp(model.logp - old), torch.tensor([2.0, 2.0, 1.0, 1.0, 2.0]))
    assert _loss(trainer, model, inputs, cliprange=1.0)[1]["clipfrac"] == 0.0
    assert _loss(trainer, model, inputs, cliprange=0.5)[1]["clipfrac"] == pytest.approx(0.6)


def test_the_dual_clip_bounds_a_negative_advantage_token_by_hand(trainer):
    """c = 1.05: a token with A < 0 loses at most −A·c. Token 3 (A = −2, r = 1.1): min(2.2, 2.1) = 2.1; token 5
    (A = −1, r = 1.3): min(1.3, 1.05) = 1.05; token 4 (0.8) and the positive-advantage tokens keep theirs.
    L_pg = (−1.2 − 0.5 + 2.1 + 0.8 + 1.05)/5 = 0.45. The bounded tokens are constants: the gradient is token 2's
    alone, −(1·0.5)/5, plus the value part. The default c = 3 binds on none of these ratios (0.52 as before)."""
    model, inputs = _batch()
    assert _loss(trainer, model, inputs, dual_clip=1.05)[1]["policy_loss"] == pytest.approx(0.45, abs=1e-6)
    assert _loss(trainer, model, inputs, dual_clip=3.0)[1]["policy_loss"] == pytest.approx(0.52, abs=1e-6)
    assert _loss(trainer, model, inputs, dual_clip=0.0)[1]["policy_loss"] == pytest.approx(0.52, abs=1e-6)
    loss, _ = _loss(trainer, model, inputs, dual_clip=1.05)
    loss.backward()
    assert float(model.shift.grad) == pytest.approx(-(1 * 0.5) / 5 + V_GRAD, abs=1e-6)


def test_an_exploded_negative_advantage_token_cannot_make_the_loss(trainer):
    """Token 5 (A = −1) with ratio e^12 (a rare token made likely by other updates): unbounded, its −A·r = 162,755
    is the loss; with c = 3 it adds 3: L_pg = (−1.2 − 0.5 + 2.2 + 0.8 + 3)/5 = 0.86."""
    model, inputs = _batch()
    old = inputs["old_logprobs"][inputs["tok_mask"] > 0]
    model.logp = old + torch.log(torch.tensor(RATIOS[:4] + [1.0])) + torch.tensor([0, 0, 0, 0, 12.0])
    assert _loss(trainer, model, inputs, dual_clip=3.0)[1]["policy_loss"] == pytest.approx(0.86, abs=1e-5)
    unbounded = _loss(trainer, model, inputs, dual_clip=0.0)[1]["policy_loss"]
    assert unbounded == pytest.approx((-1.2 - 0.5 + 2.2 + 0.8 + math.exp(12)) / 5, rel=1e-5)


def test_the_kl_term_is_capped_per_token_by_hand(trainer):
    """Per-token KL (0.1081977, 0.1534264, 0.0048412, 0.1317303, 0.0759110) capped at 0.1: (0.1, 0.1, 0.0048412,
    0.1, 0.0759110), mean 0.0761504; with β = 0.1 the loss is 0.615 + 0.0076150 = 0.6226150. The logged KL is
    not capped (0.0948213). Capped tokens are constants: the KL part of the gradient is β/5 times the sum over
    tokens 3 and 5 of a·(log a − log b) (d/d log π_θ of a·log(a/b) − a + b)."""
    model, inputs = _batch()
    loss, m = _loss(trainer, model, inputs, kl_coef=0.1, kl_token_max=0.1)
    assert float(loss.detach()) == pytest.approx(0.6226150, abs=1e-6)
    assert m["kl_ref_token"] == pytest.approx(0.0948213, abs=1e-6)
    loss.backward()
    kl = 0.1 / 5 * (1.1 * (math.log(1.1) - 0.0) + 1.3 * (math.log(1.3) + 0.1))
    assert float(model.shift.grad) == pytest.approx(PG_GRAD + V_GRAD + kl, abs=1e-6)


def test_one_exploded_token_cannot_make_the_kl_term(trainer):
    """The default's spike: token 1 rose e^12-fold (log a = 12, b = 1): its estimate a·log a − a + 1 = 1.79e6 made
    the KL term alone. Capped at 10 it adds 10/5 = 2 to the mean KL: 0.615 + 0.1·(10 + 0.1534264 + 0.0048412 +
    0.1317303 + 0.0759110)/5 = 0.8222218, and the logged per-token KL still shows the spike."""
    model, inputs = _batch()
    old = inputs["old_logprobs"][inputs["tok_mask"] > 0]
    model.logp = old + torch.log(torch.tensor(RATIOS)) + torch.tensor([12.0 - math.log(1.5), 0, 0, 0, 0])
    pg = (-1.2 - 0.5 + 2.2 + 0.8 + 1.3) / 5  # token 1 (A = +1) is clipped at 1.2 either way
    loss, m = _loss(trainer, model, inputs, kl_coef=0.1, kl_token_max=10.0)
    assert float(loss.detach()) == pytest.approx(pg + 0.5 * 0.19 + 0.1 * (10 + 0.1534264 + 0.0048412 + 0.1317303
                                                                         + 0.0759110) / 5, abs=1e-5)
    spike = math.exp(12) * 12 - math.exp(12) + 1
    assert m["kl_ref_token"] == pytest.approx((spike + 0.1534264 + 0.0048412 + 0.1317303 + 0.0759110) / 5, rel=1e-5)


def test_the_entropy_bonus_by_hand_and_only_when_asked(trainer):
    """entropy_coef 0.1 with per-token entropies (0.5, 1, 1.5, 2, 2.5), mean 1.5: loss = 0.615 − 0.1·1.5 = 0.465,
    and the entropy is logged. At 0 the model is not asked for it (a [tokens, vocab] softmax saved) and nothing is
    logged. The model gets the batch's attention mask."""
    model, inputs = _batch()
    loss, m = _loss(trainer, model, inputs, entropy_coef=0.1)
    assert float(loss.detach()) == pytest.approx(0.465, abs=1e-6) and m["entropy"] == pytest.approx(1.5)
    assert torch.equal(model.seen_mask, inputs["attention_mask"])
    loss, m = _loss(trainer, model, inputs, entropy_coef=0.0)
    assert float(loss.detach()) == pytest.approx(0.615, abs=1e-6) and "entropy" not in m
    assert _loss(trainer, model, inputs, entropy_coef=1.0)[1]["entropy"] == pytest.approx(1.5)


def test_both_clip_sides_by_hand(trainer):
    """The value clip from below: state 3 with V_old = 0.5 (V = 0, R = −0.5): unclipped (0 + 0.5)² = 0.25, clipped
    V_old − 0.2 = 0.3 -> 0.64, the larger 0.64: L_v = ½·(0.25 + 0.64 + 0.64)/3 = 0.255. The dual clip leaves a
    positive advantage alone, below 1 too: token 2 with A = 0.5 (r = 0.5): max(−0.25, −0.4) = −0.25, so
    L_pg = (−1.2 − 0.25 + 2.2 + 0.8 + 1.3)/5 = 0.57 at c = 3."""
    model, inputs = _batch()
    inputs["old_values"][1, 0] = 0.5
    assert _loss(trainer, model, inputs)[1]["value_loss"] == pytest.approx(0.255, abs=1e-6)
    model, inputs = _batch()
    inputs["advantages"][0, 1] = 0.5
    assert _loss(trainer, model, inputs, dual_clip=3.0)[1]["policy_loss"] == pytest.approx(0.57, abs=1e-6)


def test_kl_token_max_zero_means_no_cap(trainer):
    """kl_token_max 0 turns the cap off: the loss is the uncapped 0.615 + 0.1·0.0948213 = 0.6244821 (not
    0.615, which a cap at 0 would give)."""
    model, inputs = _batch()
    loss, _ = _loss(trainer, model, inputs, kl_coef=0.1, kl_token_max=0.0)
    assert float(loss.detach()) == pytest.approx(0.6244821, abs=1e-6)


@pytest.mark.parametrize("where, name", [("logp", "log-probs"), ("old_logprobs", "old log-probs"),
                                         ("ref_logprobs", "reference log-probs"), ("advantages", "advantages"),
                                         ("returns", "returns"), ("values", "values"), ("ratio", "ratio"),
                                         ("policy_loss", "policy loss"), ("value_loss", "value loss"),
                                         ("kl", "KL"), ("sum", "loss")])
def test_a_non_finite_input_is_named_and_stops_the_step(trainer, where, name):
    """One NaN in a tensor: the step stops before the update, and the message names the first non-finite tensor.
    Finite inputs can still overflow float32 (max 3.4e38): an advantage of −3e38 on a token of ratio 1.5 makes the
    policy loss inf, a return of 1e20 squares to 1e40 in the value loss, a reference log-prob 100 above the old one
    makes π_ref/π_old = e^100 and the uncapped KL inf; with 88 above, every part is finite (the KL's mean 3.3e37)
    but β = 100 makes the sum inf: then the message names the loss."""
    from pipeline.errors import SteptoolError

    model, inputs = _batch()
    cfg = {"kl_coef": 0.1}
    old0 = float(inputs["old_logprobs"][0, 0])
    overflow = {"policy_loss": ("advantages", -3e38, {}), "value_loss": ("returns", 1e20, {}),
                "kl": ("ref_logprobs", old0 + 100.0, {"kl_token_max": 0.0}),
                "sum": ("ref_logprobs", old0 + 88.0, {"kl_coef": 100.0, "kl_token_max": 0.0})}
    if where in overflow:  # (tensor, its first entry, the loss settings)
        key, value, settings = overflow[where]
        inputs[key] = inputs[key].clone()
        inputs[key][0, 0] = value
        cfg.update(settings)
    elif where == "logp":
        model.logp = model.logp.clone()
        model.logp[2] = float("nan")
    elif where == "values":
        model.values = model.values.clone()
        model.values[0, 2] = float("nan")
    elif where == "ratio":  # every input finite, exp(100) is not (float32)
        model.logp = model.logp.clone()
        model.logp[0] = inputs["old_logprobs"][0, 0] + 100.0
    else:
        inputs[where] = inputs[where].clone()
        inputs[where][0, 0] = float("nan")
    step = trainer.state.global_step + 1  # the step about to be taken (the module's trainer may have taken some)
    with pytest.raises(SteptoolError, match=rf"^train: optimizer step {step}: NaN or inf in the {name} "
                                            r"\(loss -?(nan|inf)\); stopped before the update, nothing saved from it$"):
        _loss(trainer, model, inputs, **cfg)


def test_an_infinite_kl_with_no_weight_leaves_the_loss_alone(trainer):
    """β = 0: the KL is only logged, so an infinite one (π_ref/π_old = e^100, no cap) adds nothing to the loss (not
    0·inf = NaN): the hand-computed 0.615."""
    model, inputs = _batch()
    inputs["ref_logprobs"] = inputs["ref_logprobs"].clone()
    inputs["ref_logprobs"][0, 0] = inputs["old_logprobs"][0, 0] + 100.0
    loss, m = _loss(trainer, model, inputs, kl_coef=0.0, kl_token_max=0.0)
    assert float(loss.detach()) == pytest.approx(0.615, abs=1e-6) and math.isinf(m["kl_ref"])


def test_save_policy_writes_the_weights_it_holds(trainer, tokenizer, tmp_path):
    """The trained policy as a plain checkpoint folder with its tokenizer and value head: loaded back, every weight
    is the one the trainer holds; the folder is written whole (atomic) at the path given; NaN weights are refused
    and write nothing."""
    from transformers import AutoModelForCausalLM

    from pipeline.errors import SteptoolError

    out = tmp_path / "policy"
    trainer.save_policy(out, tokenizer)
    held = trainer.model.policy.state_dict()
    loaded = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert held.keys() == loaded.keys() and all(torch.equal(held[k], loaded[k]) for k in held)
    head = torch.load(out / "value_head.pt")
    assert all(torch.equal(head[k], v) for k, v in trainer.model.v_head.state_dict().items())
    assert (out / "tokenizer_config.json").exists() and [p.name for p in tmp_path.iterdir()] == ["policy"]
    weight = trainer.model.v_head.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[0, 0] = float("nan")
        with pytest.raises(SteptoolError, match=r"the trained weight v_head.weight holds NaN or inf: not saved"):
            trainer.save_policy(tmp_path / "nan", tokenizer)
        assert not (tmp_path / "nan").exists()
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def test_the_logged_diagnostics_by_hand(trainer):
    """Per batch: reward_mean over the real steps ((0 + 1 + 0.5)/3 = 0.5), advantage_mean over the real action
    tokens ((1 + 1 − 2 − 1 − 1)/5 = −0.4), kl_ref per trajectory (the per-token KLs sum to 0.4741066, over 2
    rows: 0.2370533), kl_ref_token 0.0948213; the tokens seen (10 per batch, for tokens/s) and the (return,
    value) pairs of the real value states for the explained variance."""
    model, inputs = _batch()
    trainer._ev_pairs.clear()
    tokens = trainer._tokens
    _, m = _loss(trainer, model, inputs)
    assert m["reward_mean"] == pytest.approx(0.5, abs=1e-6)
    assert m["advantage_mean"] == pytest.approx(-0.4, abs=1e-6)
    assert m["kl_ref"] == pytest.approx(0.2370533, abs=1e-6)
    assert m["kl_ref_token"] == pytest.approx(0.0948213, abs=1e-6)
    assert trainer._tokens - tokens == 10
    (ret, val), = trainer._ev_pairs
    assert ret.tolist() == pytest.approx([1.0, 2.0, -0.5]) and val.tolist() == pytest.approx([0.5, 1.6, 0.0])


def test_log_averages_the_window_and_starts_a_new_one(trainer, monkeypatch):
    """`log` reports each diagnostic's mean over the batches since the last log, rounded to 6 digits, leaving NaNs
    out (and NaN when nothing else is left); the explained variance of the value head on every (return, value)
    pair of the window, returns first: R = (1, 2, −0.5), V = (0.5, 1.6, 0): Var(R) = 1.0555556, Var(R − V) =
    0.2022222, so 1 − 0.2022222/1.0555556 = 0.8084211 (with the roles swapped, 1 − 0.2022222/0.4466667 = 0.5472637);
    tokens/s over the time since the last log, to 0.1 (100 tokens in 3 s: 33.3); then the window starts again empty."""
    import trainer.step_ppo as step_ppo

    clock = iter([13.0, 16.0, 16.5])
    monkeypatch.setattr(step_ppo.time, "perf_counter", lambda: next(clock))
    trainer._metrics.clear()
    trainer._metrics["policy_loss"] += [0.1, float("nan"), 0.4]
    trainer._metrics["value_loss"] += [1 / 3]
    trainer._metrics["entropy"] += [float("nan")]
    trainer._ev_pairs[:] = [(torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.6])), (torch.tensor([-0.5]),
                                                                                   torch.tensor([0.0]))]
    trainer._tokens, trainer._t_last = 100, 10.0
    trainer.log({"loss": 0.25})
    logged = trainer.state.log_history[-1]
    assert logged["loss"] == 0.25 and logged["policy_loss"] == 0.25 and logged["value_loss"] == 0.333333
    assert math.isnan(logged["entropy"])
    assert logged["explained_variance"] == pytest.approx(0.8084211, abs=1e-6)
    assert logged["tokens_per_s"] == 33.3
    assert trainer._tokens == 0 and trainer._t_last == 13.0 and not trainer._ev_pairs and not trainer._metrics
    # the next window: its own tokens over its own 3 s, its own means only
    trainer._tokens += 31
    trainer._metrics["policy_loss"].append(0.7)
    trainer.log({})
    logged = trainer.state.log_history[-1]
    assert logged["tokens_per_s"] == 10.3 and logged["policy_loss"] == 0.7 and "explained_variance" not in logged
    # a window shorter than a second: 20 tokens in 0.5 s are 40 tokens/s
    trainer._tokens += 20
    trainer._metrics["policy_loss"].append(0.5)
    trainer.log({})
    assert trainer.state.log_history[-1]["tokens_per_s"] == 40.0


def test_a_checkpoint_restores_the_rng_and_the_step_ratios(trainer, tmp_path):
    """`_save_rng_state` / `_load_rng_state`: the random state and this process's step ratios come back as they
    were saved; a checkpoint written before step ratios existed (no step_ratios_0.json) loads the random state
    and leaves the ratios as they are."""
    trainer._step_ratios = {3: (2, [1.0, 1.1], [0.0, 0.5])}
    torch.manual_seed(7)
    trainer._save_rng_state(str(tmp_path))
    expected = torch.rand(3)
    trainer._step_ratios = {}
    torch.manual_seed(8)
    trainer._load_rng_state(str(tmp_path))
    assert torch.equal(torch.rand(3), expected)
    assert trainer._step_ratios == {3: (2, [1.0, 1.1], [0.0, 0.5])}
    (tmp_path / "step_ratios_0.json").unlink()
    trainer._step_ratios = {1: (0, [1.0], [0.0])}
    torch.manual_seed(8)
    trainer._load_rng_state(str(tmp_path))
    assert torch.equal(torch.rand(3), expected) and trainer._step_ratios == {1: (0, [1.0], [0.0])}


def test_a_checkpoint_save_writes_the_weights_and_the_arguments_into_an_existing_folder(trainer, tmp_path):
    """`_save` (the Trainer's checkpoint writer) into a folder that exists already (transformers creates the
    checkpoint folder before saving into it): one model.safetensors with one name per tied storage, every weight the
    trainer holds, and training_args.bin with the run's PPO arguments."""
    from safetensors.torch import load_file

    trainer._save(str(tmp_path))
    saved = load_file(tmp_path / "model.safetensors")
    held = trainer.model.state_dict()
    assert saved.keys() <= held.keys() and all(torch.equal(saved[k], held[k]) for k in saved)
    assert {k for k in held if k not in saved} <= {"policy.lm_head.weight"}  # tied to the embedding
    args = torch.load(tmp_path / "training_args.bin", weights_only=False)
    assert (args.cliprange, args.cliprange_value, args.vf_coef) == (0.2, 0.2, 0.5)
