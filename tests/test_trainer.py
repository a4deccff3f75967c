"""The step-grained PPO trainer: GAE by hand, masks, truncation, the reference CSV importer, a learning test
on a toy environment, and a resume after kill -9 that ends with the weights of an uninterrupted run."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.agent.prompts import ChatRenderer
from trainer.data import CUT_OBSERVATION, examples_from_reference_csv, render_truncated
from trainer.gae import step_gae

REPO = Path(__file__).resolve().parents[1]


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_step_gae_by_hand():
    # r = [0.5, 0, 1], V = [0.2, 0.4, 0.1], γ = 0.9, λ = 0.5:
    # δ2 = 1 − 0.1 = 0.9; δ1 = 0 + 0.9·0.1 − 0.4 = −0.31; δ0 = 0.5 + 0.9·0.4 − 0.2 = 0.66
    # A2 = 0.9; A1 = −0.31 + 0.45·0.9 = 0.095; A0 = 0.66 + 0.45·0.095 = 0.70275; R = A + V
    adv, ret = step_gae(t([[0.5, 0, 1]]), t([[0.2, 0.4, 0.1]]), t([[1, 1, 1]]), 0.9, 0.5)
    assert torch.allclose(adv, t([[0.70275, 0.095, 0.9]]))
    assert torch.allclose(ret, t([[0.90275, 0.495, 1.0]]))


def test_step_gae_limits():
    r, v, m = t([[0.5, 0, 1]]), t([[0.2, 0.4, 0.1]]), t([[1, 1, 1]])
    adv, ret = step_gae(r, v, m, 1.0, 1.0)  # γ = λ = 1: A = returns-to-go − V
    assert torch.allclose(adv, t([[1.5 - 0.2, 1.0 - 0.4, 1.0 - 0.1]])) and torch.allclose(ret, t([[1.5, 1.0, 1.0]]))
    adv, _ = step_gae(r, v, m, 0.9, 0.0)  # λ = 0: A = δ
    assert torch.allclose(adv, t([[0.66, -0.31, 0.9]]))
    adv, ret = step_gae(r, v, m, 0.0, 0.7)  # γ = 0: each step alone, A = r − V (no_step_opt)
    assert torch.allclose(adv, r - v) and torch.allclose(ret, r)
    adv, ret = step_gae(t([[0.3]]), t([[0.5]]), t([[1]]), 0.9, 0.95)  # one step
    assert torch.allclose(adv, t([[-0.2]])) and torch.allclose(ret, t([[0.3]]))


@pytest.mark.parametrize("steps", [1, 2, 5, 9])
def test_final_reward_reaches_step_one_with_weight_gamma_lambda_power(steps):
    r = torch.zeros(1, steps, dtype=torch.float64)
    r[0, -1] = 1.0
    adv, _ = step_gae(r, torch.zeros_like(r), torch.ones_like(r), 0.9, 0.8)
    assert adv[0, 0].item() == pytest.approx(0.72 ** (steps - 1))


def test_padding_is_ignored_and_value_after_the_last_step_is_zero():
    r = t([[0.5, 0, 1], [1.0, 0.5, 0]])
    v = t([[0.2, 0.4, 0.1], [0.3, 0.6, 99.0]])  # 99: a value at a padded step must not leak in
    m = t([[1, 1, 1], [1, 1, 0]])
    adv, ret = step_gae(r, v, m, 0.9, 0.5)
    # row 2: δ1 = 0.5 − 0.6 = −0.1 (V after the last real step is 0); δ0 = 1 + 0.9·0.6 − 0.3 = 1.24
    assert torch.allclose(adv[1], t([1.24 + 0.45 * -0.1, -0.1, 0.0]))
    assert ret[1, 2] == 0 and adv[1, 2] == 0
    solo, _ = step_gae(r[:1], v[:1], m[:1], 0.9, 0.5)
    assert torch.allclose(adv[0], solo[0])  # rows do not mix
    # a reward at a padded step changes nothing either (the mask, not a zero reward, ends the recursion)
    noisy, _ = step_gae(t([[0.5, 0, 1], [1.0, 0.5, 5.0]]), v, m, 0.9, 0.5)
    assert torch.allclose(noisy, adv)


def _classic_token_gae(rewards, values, gamma, lam):
    """CleanRL's loop (one environment, `dones` only at the end) over a flat list of action tokens."""
    n = len(rewards)
    adv = [0.0] * n
    lastgaelam = 0.0
    for k in reversed(range(n)):
        nextvalue = values[k + 1] if k + 1 < n else 0.0
        delta = rewards[k] + gamma * nextvalue - values[k]
        adv[k] = lastgaelam = delta + gamma * lam * lastgaelam
    return adv


# ---- rendering, masks, truncation ----------------------------------------------------------------------

def test_action_mask_covers_exactly_the_actions(world, splits, tokenizer):
    from tests.support.annotate_data import play_scripted
    from trainer.ppo_round import RoundItem
    from trainer.step_ppo import collate

    trajs, steps = play_scripted(world, splits["train"][:3], tokenizer)
    renderer = ChatRenderer(tokenizer)
    items = []
    for tr in trajs:
        st = [s for s in steps if s["traj_id"] == tr["traj_id"]]
        actions = [renderer.encode_action(s["action_text"]) for s in st]
        r = renderer.render_from_prefix(st[0]["prompt_text"], actions, [s["observation"] for s in st[:-1]])
        masked = [i for i, m in enumerate(r.action_mask) if m]
        assert tokenizer.decode([r.input_ids[i] for i in masked]) == "".join(s["action_text"] + "<|im_end|>" for s in st)
        # everything else is the prompt and observations: the context text the model read
        unmasked = tokenizer.decode([x for x, m in zip(r.input_ids, r.action_mask) if not m])
        assert st[0]["prompt_text"] in unmasked and all(s["observation"] in unmasked for s in st[:-1])
        n = sum(r.action_mask)
        zeros = [0.0] * len(st)
        items.append(RoundItem(input_ids=r.input_ids, action_mask=r.action_mask, rewards=zeros,
                               value_pos=[a - 1 for a, _ in r.step_bounds], old_values=zeros, returns=zeros,
                               old_logprobs=[0.0] * n, ref_logprobs=[0.0] * n, advantages=[0.0] * n,
                               step_return=zeros, step_baseline=zeros, step_advantage=zeros,
                               token_step=[k for k, (a, b) in enumerate(r.step_bounds) for _ in range(b - a)]))
    batch = collate(items, pad_id=tokenizer.pad_token_id)
    pad = batch["attention_mask"] == 0
    assert pad.any() and not (batch["action_mask"].bool() & pad).any()  # pads are never actions
    assert batch["tok_mask"].sum() == batch["action_mask"].sum()


def test_truncation_cuts_oldest_observations_first_and_never_the_end(tokenizer):
    renderer = ChatRenderer(tokenizer)
    prefix = renderer.prefix("S", "U")
    actions = [renderer.encode_action(f"Thought: step {i}\nAction: f\nAction Input: {{}}") for i in range(4)]
    obs = ["x " * 200 for _ in range(3)]
    full = renderer.render_from_prefix(prefix, actions, obs)
    rendered, blanked = render_truncated(renderer, prefix, actions, obs, [True] * 4, len(full.input_ids) - 50)
    assert blanked == 1 and len(rendered.step_bounds) == 4
    text = tokenizer.decode(rendered.input_ids)
    assert CUT_OBSERVATION in text and text.count("x x") > 0 and text.index(CUT_OBSERVATION) < text.index("x x")
    all_cut = renderer.render_from_prefix(prefix, actions, [CUT_OBSERVATION] * 3)
    rendered, blanked = render_truncated(renderer, prefix, actions, obs, [True] * 4, len(all_cut.input_ids))
    assert blanked == 3 and len(rendered.step_bounds) == 4  # every action kept, the last (Finish) included
    for (a, b), act in zip(rendered.step_bounds, actions):
        assert rendered.input_ids[a:b] == act  # whole actions only
    # one token less and it no longer fits: dropped whole (None), never cut to its first steps
    assert render_truncated(renderer, prefix, actions, obs, [True] * 4, len(all_cut.input_ids) - 1) is None


def test_reference_ppo_csv_imports(external, tokenizer):
    renderer = ChatRenderer(tokenizer)
    import ast
    import csv

    csv.field_size_limit(1 << 30)
    for path in sorted((external / "steptool/data_train").glob("*_step_grained_for_ppo_example.csv")):
        examples = examples_from_reference_csv(path, renderer)
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        assert len(examples) == len(rows) == 10
        for ex, row in zip(examples, rows):
            responses = ast.literal_eval(row["response"])
            assert ex.rewards == ast.literal_eval(row["reward"])
            assert [tokenizer.decode(ex.input_ids[a:b]) for a, b in ex.step_bounds] == responses
            prompts = ast.literal_eval(row["prompt"])
            assert tokenizer.decode(ex.input_ids) == "".join(p + r for p, r in zip(prompts, responses))


# ---- learning --------------------------------------------------------------------------------------------

def _learn(tokenizer, variant: str, seed: int, rounds: int = 4, flip_sign: bool = False):
    from tests.support.tiny_model import make_tiny_model
    from tests.support.toy_env import play, right_probability
    from trainer import ppo_round, step_ppo
    from trainer.config import StepPPOConfig
    from trainer.model import PolicyWithValue

    torch.manual_seed(seed)
    model = make_tiny_model(tokenizer, seed=seed)
    wrapped = PolicyWithValue(model)
    start = right_probability(model, tokenizer, 6)
    original = ppo_round.step_gae
    if flip_sign:
        ppo_round.step_gae = lambda *a: tuple(-x for x in original(*a))
    try:
        for r in range(rounds):
            examples, _ = play(model, tokenizer, 16, 6, seed * 1000 + r, variant)
            cfg = StepPPOConfig(output_dir=str(REPO / ".pytest_cache" / "ppo-learn"), report_to=[], use_cpu=True,
                                variant=variant, num_train_epochs=2, per_device_train_batch_size=8,
                                gradient_accumulation_steps=1, learning_rate=1e-3,
                                kl_coef=0.0, save_strategy="no", seed=seed, disable_tqdm=True, logging_steps=100,
                                lr_scheduler_type="constant")
            step_ppo.StepPPOTrainer(wrapped, cfg, examples, pad_id=tokenizer.pad_token_id).train()
    finally:
        ppo_round.step_gae = original
    return start, right_probability(model, tokenizer, 6)


@pytest.mark.slow
def test_steptool_learns_the_right_actions_and_beats_outcome_only_ppo(tokenizer):
    """Six turns, one right action each. On the same budget, step rewards with step-level GAE raise the
    right-action probability on every seed and end above outcome-only PPO, whose reward (all six right)
    is rare at the start. A flipped advantage sign, or a loss leaking onto the observations (all " B"),
    would push the probability down."""
    finals = {"steptool": [], "ppo_outcome": []}
    for seed in (0, 1, 2):
        for variant in finals:
            start, end = _learn(tokenizer, variant, seed)
            finals[variant].append(end)
            if variant == "steptool":
                assert end > start + 0.2, (seed, start, end)
    mean = {k: sum(v) / len(v) for k, v in finals.items()}
    assert mean["steptool"] > mean["ppo_outcome"] + 0.1, finals


@pytest.mark.long
def test_the_learning_test_fails_with_a_flipped_advantage_sign(tokenizer):
    start, end = _learn(tokenizer, "steptool", 0, rounds=3, flip_sign=True)
    assert end < start - 0.05


# ---- resume ------------------------------------------------------------------------------------------------

TRAIN_SCRIPT = """
import sys, time
import torch
import pipeline
from transformers import TrainerCallback
from pipeline.models import SMOLLM2, load_tokenizer
from tests.support.tiny_model import make_tiny_model
from tests.support.toy_env import play
from trainer.config import StepPPOConfig
from trainer.model import PolicyWithValue
from trainer.step_ppo import StepPPOTrainer

out, delay, resume = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
tok = load_tokenizer(SMOLLM2)
torch.manual_seed(0)
model = make_tiny_model(tok, seed=0)
examples, _ = play(model, tok, 8, 3, 7, "steptool")
wrapped = PolicyWithValue(model)

class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        time.sleep(delay)

cfg = StepPPOConfig(output_dir=out, report_to=[], use_cpu=True, num_train_epochs=2, per_device_train_batch_size=2,
                    gradient_accumulation_steps=1, learning_rate=1e-3, save_strategy="steps", save_steps=2, seed=0, disable_tqdm=True,
                    logging_steps=100, dataloader_num_workers=0)
trainer = StepPPOTrainer(wrapped, cfg, examples, pad_id=tok.pad_token_id, callbacks=[Slow()])
trainer.train(resume_from_checkpoint=resume or None)
torch.save({k: v.detach().clone() for k, v in wrapped.state_dict().items()}, out + "/final.pt")
"""


def _train(tmp_path, out, delay, resume):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, str(script), str(out), str(delay), "1" if resume else "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _train_here(tmp_path, out):
    """TRAIN_SCRIPT's resumed run in this process, as its subprocess would run it."""
    import runpy

    argv = sys.argv
    sys.argv = [str(tmp_path / "train.py"), str(out), "0.0", "1"]
    try:
        runpy.run_path(str(tmp_path / "train.py"), run_name="__main__")
    finally:
        sys.argv = argv


@pytest.mark.slow
def test_resume_after_kill_ends_with_the_uninterrupted_weights(tmp_path):
    clean = tmp_path / "clean"
    uninterrupted = _train(tmp_path, clean, 0.0, False)  # runs beside the killed one: the same wait, half the wall
    killed = tmp_path / "killed"
    p = _train(tmp_path, killed, 0.4, False)
    deadline = time.time() + 240
    while time.time() < deadline and not (killed / "checkpoint-4" / "trainer_state.json").exists():
        assert p.poll() is None, p.stderr.read().decode()[-3000:]
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (killed / "final.pt").exists()  # it really died before the end (8 steps)
    _train_here(tmp_path, killed)  # the rerun, in this process (the kill needed a process of its own)
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stderr.read().decode()[-3000:]
    a, b = torch.load(clean / "final.pt"), torch.load(killed / "final.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.long
def test_bf16_autocast_starts_the_round_at_ratio_one(tokenizer):
    """Under bf16 autocast the round's old log-probs are computed with the same autocast as the loss, so the
    first optimizer step sees ratio ~1 (approx_kl ~0) and no clipping, as in fp32."""
    from tests.support.tiny_model import make_tiny_model
    from tests.support.toy_env import play
    from trainer import step_ppo
    from trainer.config import StepPPOConfig
    from trainer.model import PolicyWithValue

    model = make_tiny_model(tokenizer, seed=3)
    examples, _ = play(model, tokenizer, 8, 3, 11, "steptool")
    cfg = StepPPOConfig(output_dir=str(REPO / ".pytest_cache" / "ppo-bf16"), report_to=[], use_cpu=True, bf16=True,
                        variant="steptool", num_train_epochs=1, per_device_train_batch_size=4,
                        gradient_accumulation_steps=1, learning_rate=1e-4,
                        save_strategy="no", seed=0, disable_tqdm=True, logging_steps=1, lr_scheduler_type="constant")
    trainer = step_ppo.StepPPOTrainer(PolicyWithValue(model), cfg, examples, pad_id=tokenizer.pad_token_id)
    trainer.train()
    first = next(h for h in trainer.state.log_history if "approx_kl" in h)
    assert abs(first["approx_kl"]) < 1e-3 and first["clipfrac"] == 0.0
    assert trainer.state.global_step == 2


# ---- the round's phases 1-4, by hand -------------------------------------------------------------------------

def _round_examples(tokenizer):
    from trainer.data import Example

    # two trajectories: 2 steps of 2 and 3 action tokens, and 1 step of 2 tokens (prompt tokens around them)
    a = Example("a", list(range(10, 20)), [0, 0, 1, 1, 0, 0, 1, 1, 1, 0], [(2, 4), (6, 9)], [0.5, 1.0])
    b = Example("b", list(range(10, 16)), [0, 0, 0, 1, 1, 0], [(3, 5)], [0.25])
    return [a, b]


def _round_cfg(variant, **kw):
    from trainer.config import StepPPOConfig

    kw = dict(dict(kl_coef=0.0, baseline="zero", whiten_advantages=False, gamma=0.9, lam=0.5,
                   output_dir=str(REPO / ".pytest_cache" / "ppo-round")), **kw)
    return StepPPOConfig(report_to=[], use_cpu=True, variant=variant, **kw)


def test_round_advantages_by_hand_for_each_variant(tokenizer):
    """Phase 3 with V = 0 and no KL: A_t = Σ_k (γλ)^k r_{t+k} at step level (γλ = 0.45), A_t = r_t without
    credit across steps, and at token level the rewards sit on each action's last token and decay per token."""
    from tests.support.tiny_model import make_tiny_model
    from trainer.model import PolicyWithValue
    from trainer.ppo_round import prepare_round

    model = PolicyWithValue(make_tiny_model(tokenizer))
    ex = _round_examples(tokenizer)
    items, _ = prepare_round(model, ex, _round_cfg("steptool"))
    assert items[0].advantages == pytest.approx([0.5 + 0.45 * 1.0] * 2 + [1.0] * 3)
    # the value head's target is the Monte-Carlo return (γ = 0.9), whatever λ
    assert items[0].returns == pytest.approx([0.5 + 0.9 * 1.0, 1.0])
    assert items[1].advantages == pytest.approx([0.25] * 2)
    items, _ = prepare_round(model, ex, _round_cfg("no_step_opt"))
    assert items[0].advantages == pytest.approx([0.5] * 2 + [1.0] * 3)
    items, _ = prepare_round(model, ex, _round_cfg("no_step_reward"))  # the rewards come from the table as given
    assert items[0].advantages == pytest.approx([0.95] * 2 + [1.0] * 3)
    # token level: λ is token_lam (1 by default), not the steps' lam = 0.5
    items, _ = prepare_round(model, ex, _round_cfg("ppo_outcome"))
    # action tokens of a: rewards [0, 0.5, 0, 0, 1.0]; A_k = Σ_j 0.9^j r_{k+j}, the discounted return
    expected = _classic_token_gae([0, 0.5, 0, 0, 1.0], [0.0] * 5, 0.9, 1.0)
    assert items[0].advantages == pytest.approx(expected) and len(items[0].returns) == 5
    assert expected[0] == pytest.approx(0.9 * 0.5 + 0.9 ** 4 * 1.0)
    items, _ = prepare_round(model, ex, _round_cfg("ppo_outcome", token_lam=0.5))
    expected = _classic_token_gae([0, 0.5, 0, 0, 1.0], [0.0] * 5, 0.9, 0.5)  # A_k = Σ_j 0.45^j r_{k+j}
    assert items[0].advantages == pytest.approx(expected)
    assert expected[0] == pytest.approx(0.45 * 0.5 + 0.45 ** 4 * 1.0)
    items, _ = prepare_round(model, ex, _round_cfg("steptool", token_lam=0.1))  # steps read lam only
    assert items[0].advantages == pytest.approx([0.5 + 0.45 * 1.0] * 2 + [1.0] * 3)


def test_token_level_advantages_over_rloo_are_g_minus_b_per_token(tokenizer):
    """ppo_outcome with the rloo baseline (constant within a step): token_lam = 1 gives every action token its
    G_t − b_t; λ < 1 per token shrinks an earlier action's credit though its G − b is as large
    (docs/architecture.md, "ppo_outcome: λ per token")."""
    from tests.support.tiny_model import make_tiny_model
    from trainer.model import PolicyWithValue
    from trainer.ppo_round import prepare_round

    model = PolicyWithValue(make_tiny_model(tokenizer))
    a, b = _round_examples(tokenizer)
    a.group = b.group = "task"  # two samples of one task
    # return-to-go per action token (γ = 1): a [1.5, 1.5, 1, 1, 1], b [0.25, 0.25]; rloo: a's step 0 gets
    # b's G at its step 0 (0.25), a's step 1 none (b has one step: 0), b's step 0 gets a's 1.5
    cfg = dict(baseline="rloo", gamma=1.0)
    items, _ = prepare_round(model, [a, b], _round_cfg("ppo_outcome", **cfg))
    assert items[0].advantages == pytest.approx([1.25, 1.25, 1.0, 1.0, 1.0])
    assert items[1].advantages == pytest.approx([-1.25, -1.25])
    assert items[0].step_baseline == pytest.approx([0.25, 0.0])  # the round table's columns
    assert items[0].step_advantage == pytest.approx([1.25, 1.0])
    # λ = 0.5 per token: δ = [0, 0.5 - 0.25, 0, 0, 1]; A_k = δ_k + 0.5·A_{k+1}
    items, _ = prepare_round(model, [a, b], _round_cfg("ppo_outcome", token_lam=0.5, **cfg))
    assert items[0].advantages == pytest.approx([0.1875, 0.375, 0.25, 0.5, 1.0])


def test_round_scales_once_over_all_steps_and_shapes_rewards_with_the_kl(tokenizer):
    from tests.support.tiny_model import make_tiny_model
    from trainer.model import PolicyWithValue
    from trainer.ppo_round import prepare_round

    model = PolicyWithValue(make_tiny_model(tokenizer))
    ex = _round_examples(tokenizer)
    items, stats = prepare_round(model, ex, _round_cfg("steptool", whiten_advantages=True))
    steps = [0.95, 1.0, 0.25]  # the three steps' raw advantages, scaled together (not per batch)
    mean = sum(steps) / 3
    std = (sum((x - mean) ** 2 for x in steps) / 2) ** 0.5
    w = [x / std for x in steps]  # divided by the round's std, the mean not subtracted
    assert items[0].advantages == pytest.approx([w[0]] * 2 + [w[1]] * 3, rel=1e-5)
    assert items[1].advantages == pytest.approx([w[2]] * 2, rel=1e-5)
    assert stats["round_advantage_mean"] == pytest.approx(mean)
    # phase 2: behaviour log-probs 0.1 above the reference on every token -> k1 = 0.1 per token, so a
    # 2-token step loses β·0.2 and a 3-token step β·0.3
    from trainer.ppo_round import precompute

    ref, _ = precompute(model, ex, _round_cfg("steptool"))
    for e, it in zip(ex, ref):
        e.behaviour_logprobs = [x + 0.1 for x in it.ref_logprobs]
    items, _ = prepare_round(model, ex, _round_cfg("steptool", old_logprobs="behaviour", kl_coef=0.5, lam=1.0,
                                                   gamma=1.0, kl_in="reward"))
    assert items[0].returns == pytest.approx([0.5 - 0.1 + 1.0 - 0.15, 1.0 - 0.15])
    assert items[1].returns == pytest.approx([0.25 - 0.1])
    # with the KL in the loss (the default) the rewards are not shaped: the returns are the rewards'
    items, _ = prepare_round(model, ex, _round_cfg("steptool", old_logprobs="behaviour", kl_coef=0.5, lam=1.0,
                                                   gamma=1.0))
    assert items[0].returns == pytest.approx([0.5 + 1.0, 1.0]) and items[1].returns == pytest.approx([0.25])
    assert items[0].step_return == pytest.approx([1.5, 1.0])  # the round table's `return`


@pytest.mark.long
def test_the_default_kl_acts_in_the_first_round(tokenizer):
    """With kl_in: reward and recompute, the first round's penalty KL(π_old‖π_ref) is 0 (π_old = π_ref), so β did
    nothing: the weights equal β = 0's to the last bit. With kl_in: loss (the default) β·KL(π_θ‖π_ref) acts from
    the second optimizer step on (its gradient is 0 at π_θ = π_ref): the weights differ, and the policy ends
    closer to the reference."""
    from tests.support.tiny_model import make_tiny_model
    from tests.support.toy_env import play
    from trainer import step_ppo
    from trainer.config import StepPPOConfig
    from trainer.model import PolicyWithValue

    examples, _ = play(make_tiny_model(tokenizer, seed=5), tokenizer, 8, 3, 21, "steptool")

    def train(**kw):
        model = make_tiny_model(tokenizer, seed=5)
        cfg = StepPPOConfig(output_dir=str(REPO / ".pytest_cache" / "ppo-kl"), report_to=[], use_cpu=True,
                            variant="steptool", num_train_epochs=2, per_device_train_batch_size=2,
                            gradient_accumulation_steps=1, learning_rate=3e-3, save_strategy="no", seed=0,
                            disable_tqdm=True, logging_steps=1, lr_scheduler_type="constant", **kw)
        trainer = step_ppo.StepPPOTrainer(PolicyWithValue(model), cfg, examples, pad_id=tokenizer.pad_token_id)
        trainer.train()
        kl = [h["kl_ref_token"] for h in trainer.state.log_history if "kl_ref_token" in h]
        return {k: v.detach().clone() for k, v in model.state_dict().items()}, kl

    free, kl_free = train(kl_coef=0.0)
    as_reward, _ = train(kl_coef=5.0, kl_in="reward")
    as_loss, kl_loss = train(kl_coef=5.0)
    assert all(torch.equal(free[k], as_reward[k]) for k in free)
    moved = max(float((free[k] - as_loss[k]).abs().max()) for k in free)
    assert moved > 1e-4, moved
    assert kl_loss[0] == pytest.approx(kl_free[0], abs=1e-9)  # the first step: same weights, same KL
    assert kl_free[-1] > 0 and kl_loss[-1] < kl_free[-1]


def test_the_reference_is_the_sft_policy_in_later_rounds(tokenizer):
    """From the second round on the round starts from the previous round's policy, but the KL's reference stays
    the SFT policy: precompute with `ref_model` takes the reference log-probs from it and π_old from the policy."""
    from tests.support.tiny_model import make_tiny_model
    from trainer.model import PolicyWithValue
    from trainer.ppo_round import precompute, prepare_round

    sft, later = PolicyWithValue(make_tiny_model(tokenizer, seed=1)), PolicyWithValue(make_tiny_model(tokenizer, seed=2))
    ex = _round_examples(tokenizer)
    own_sft, _ = precompute(sft, ex, _round_cfg("steptool"))
    own_later, _ = precompute(later, ex, _round_cfg("steptool"))
    items, _ = precompute(later, ex, _round_cfg("steptool"), ref_model=sft)
    for it, s, l in zip(items, own_sft, own_later):
        assert it.ref_logprobs == pytest.approx(s.ref_logprobs, abs=1e-6)
        assert it.old_logprobs == pytest.approx(l.old_logprobs, abs=1e-6)
        assert it.ref_logprobs != pytest.approx(it.old_logprobs, abs=1e-3)
    # the reward-side penalty KL(π_old‖π_ref) is no longer zero with recompute
    _, stats = prepare_round(later, ex, _round_cfg("steptool", kl_in="reward", kl_coef=0.1), ref_model=sft)
    assert abs(stats["round_kl_penalty_mean"]) > 1e-3


def test_the_trainer_hands_its_reference_to_the_round_and_releases_it(tokenizer, tmp_path):
    """StepPPOTrainer(ref_model=sft): the round it starts takes the reference log-probs from sft (not from the policy
    it trains), and the reference is released once they are in the items."""
    from transformers import TrainerCallback

    from tests.support.tiny_model import make_tiny_model
    from trainer.model import PolicyWithValue
    from trainer.ppo_round import precompute
    from trainer.step_ppo import StepPPOTrainer

    sft = PolicyWithValue(make_tiny_model(tokenizer, seed=1))
    ex = _round_examples(tokenizer)
    own_sft, _ = precompute(sft, ex, _round_cfg("steptool"))
    cfg = _round_cfg("steptool", output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2,
                     save_strategy="no", disable_tqdm=True, learning_rate=1e-3)

    class Seen(TrainerCallback):
        steps = 0

        def on_step_end(self, args, state, control, **kwargs):
            Seen.steps += 1

    trainer = StepPPOTrainer(PolicyWithValue(make_tiny_model(tokenizer, seed=2)), cfg, ex,
                             pad_id=tokenizer.pad_token_id, ref_model=sft, callbacks=[Seen()])
    trainer.train()
    assert Seen.steps == 1   # the Trainer's own arguments (callbacks here) reach it
    assert trainer.ref_model is None
    # what the round reports: one process precomputed both trajectories, of two tasks
    assert trainer.precompute_shards == [2] and trainer.round_stats["round_tasks"] == 2
    assert "shards" not in trainer.round_stats
    for it, s in zip(trainer.train_dataset.items, own_sft):
        assert it.ref_logprobs == pytest.approx(s.ref_logprobs, abs=1e-6)
        assert it.ref_logprobs != pytest.approx(it.old_logprobs, abs=1e-3)


def test_step_ratios_of_every_process_merge_with_the_later_step_winning():
    """Records (index, (optimizer step, ratios, clip shares)) from two processes: trajectory 1 seen by both, at step 3
    on the first and step 5 on the second -> the second's; trajectory 2 at step 4 then 2 -> the first's; 0 and 3
    each on one process only."""
    from trainer.step_ppo import merge_step_ratios

    first = [(0, (1, [1.0], [0.0])), (1, (3, [1.1], [0.5])), (2, (4, [0.9, 1.0], [0.0, 0.0]))]
    second = [(1, (5, [1.3], [1.0])), (2, (2, [0.7, 0.8], [1.0, 0.0])), (3, (5, [1.0], [0.0]))]
    assert merge_step_ratios([first, second]) == {0: ([1.0], [0.0]), 1: ([1.3], [1.0]),
                                                  2: ([0.9, 1.0], [0.0, 0.0]), 3: ([1.0], [0.0])}
    assert merge_step_ratios([second, first]) == merge_step_ratios([first, second])
    assert merge_step_ratios([[]]) == {}


# ---- finite or refuse ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("inf"), -float("inf")])
def test_infinite_behaviour_logprobs_are_refused_naming_the_trajectory(tokenizer, bad):
    """With old_logprobs: behaviour, ±inf in tokens.parquet made every weight NaN and the stage exit 0 (NaN was
    already read as 'not recorded': recompute)."""
    from pipeline.errors import SteptoolError
    from tests.support.tiny_model import make_tiny_model
    from trainer.model import PolicyWithValue
    from trainer.ppo_round import prepare_round

    model = PolicyWithValue(make_tiny_model(tokenizer))
    a, b = _round_examples(tokenizer)
    a.behaviour_logprobs = [-1.0, -2.0, bad, -1.5, -0.5]
    b.behaviour_logprobs = [float("nan"), -1.0]  # not recorded: recomputed, as before
    with pytest.raises(SteptoolError, match=r"trajectory a: behaviour log-prob -?inf at action token 2 .*not finite"):
        prepare_round(model, [a, b], _round_cfg("steptool", old_logprobs="behaviour"))
    a.behaviour_logprobs = [-1.0, -2.0, -3.0, -1.5, -0.5]
    items, _ = prepare_round(model, [a, b], _round_cfg("steptool", old_logprobs="behaviour"))
    assert items[0].old_logprobs == a.behaviour_logprobs and all(math.isfinite(x) for x in items[1].old_logprobs)


def test_a_non_finite_loss_stops_before_the_update_and_nan_weights_are_never_saved(tokenizer, tmp_path):
    from pipeline.errors import SteptoolError
    from tests.support.tiny_model import make_tiny_model
    from trainer import step_ppo
    from trainer.model import PolicyWithValue

    model = PolicyWithValue(make_tiny_model(tokenizer))
    trainer = step_ppo.StepPPOTrainer(model, _round_cfg("steptool"), _round_examples(tokenizer),
                                      pad_id=tokenizer.pad_token_id)
    items, _ = step_ppo.prepare_round(model, trainer.examples, trainer.ppo)
    batch = step_ppo.collate(items, tokenizer.pad_token_id)
    batch["advantages"][0, 1] = float("nan")
    with pytest.raises(SteptoolError, match=r"optimizer step 1: NaN or inf in the advantages"):
        trainer.compute_loss(model, batch)
    batch = step_ppo.collate(items, tokenizer.pad_token_id)
    assert torch.isfinite(trainer.compute_loss(model, batch))  # the same batch, finite: a loss
    with torch.no_grad():
        model.v_head.bias.fill_(float("inf"))
    with pytest.raises(SteptoolError, match=r"the trained weight .*v_head.bias holds NaN or inf: not saved"):
        trainer.save_policy(tmp_path / "model", tokenizer)
    assert not (tmp_path / "model").exists()


def _count_losses(trainer) -> list:
    """The batches `trainer` computes a loss on from now on (a deterministic run resumed and a run started over end
    with the same weights; the number of batches tells them apart)."""
    calls, own = [], trainer.compute_loss

    def counted(*args, **kwargs):
        calls.append(1)
        return own(*args, **kwargs)

    trainer.compute_loss = counted
    return calls


def test_an_in_process_resume_ends_with_the_same_weights_and_logs_each_step(tokenizer, tmp_path):
    """The trainer's own loop in one process, small enough for the fast tests (and so for `make mutation`): 4
    trajectories, batches of 2, one epoch = 2 optimizer steps, a checkpoint every step. A second trainer resumed from
    checkpoint-1 (safetensors with the tied embedding stored once, optimizer, scheduler, RNG) ends with the
    uninterrupted run's weights to the last bit, and every step's log carries the PPO diagnostics with finite
    values (the slow test kills a real process instead)."""
    import math

    from tests.support.tiny_model import make_tiny_model
    from tests.support.toy_env import play
    from trainer import step_ppo
    from trainer.config import StepPPOConfig
    from trainer.model import PolicyWithValue

    examples, _ = play(make_tiny_model(tokenizer, seed=2), tokenizer, 4, 2, 13, "steptool")

    def trainer_for(out):
        cfg = StepPPOConfig(output_dir=str(out), report_to=[], use_cpu=True, variant="steptool", num_train_epochs=1,
                            per_device_train_batch_size=2, gradient_accumulation_steps=1, learning_rate=3e-3,
                            save_strategy="steps", save_steps=1, seed=0, disable_tqdm=True, logging_steps=1,
                            lr_scheduler_type="constant")
        return step_ppo.StepPPOTrainer(PolicyWithValue(make_tiny_model(tokenizer, seed=2)), cfg, examples,
                                       pad_id=tokenizer.pad_token_id)

    whole = trainer_for(tmp_path / "whole")
    whole.train()
    assert whole.state.global_step == 2
    logs = [h for h in whole.state.log_history if "policy_loss" in h]
    assert [h["step"] for h in logs] == [1, 2]
    for h in logs:
        for key in ("policy_loss", "value_loss", "approx_kl", "clipfrac", "explained_variance", "reward_mean",
                    "advantage_mean", "kl_ref", "kl_ref_token", "tokens_per_s"):
            assert math.isfinite(h[key]), (key, h)
    assert logs[0]["approx_kl"] == pytest.approx(0.0, abs=1e-6) and logs[0]["clipfrac"] == 0.0  # ratio 1 at first
    ckpt = tmp_path / "whole" / "checkpoint-1"
    assert (ckpt / "model.safetensors").exists() and (ckpt / "trainer_state.json").exists()
    resumed = trainer_for(tmp_path / "resumed")
    losses = _count_losses(resumed)
    resumed.train(str(ckpt))   # positional, as transformers' Trainer.train takes it
    assert resumed.state.global_step == 2 and len(losses) == 1   # only the second batch: it resumed
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # every trajectory's per-step ratio, the first batch's from the checkpoint (ratio 1 before any update)
    ratios = whole.step_ratios()
    assert sorted(ratios) == [0, 1, 2, 3] and resumed.step_ratios() == ratios
    first = [i for i, rec in whole._step_ratios.items() if rec[0] == 0]
    assert len(first) == 2 and all(r == pytest.approx([1.0] * len(r)) for i in first for r in [ratios[i][0]])


def test_a_lora_checkpoint_holds_the_adapters_and_value_head_only_and_resumes_exactly(tokenizer, tmp_path):
    """Under LoRA a checkpoint holds what trains (the adapters, the value head), not the frozen base (which the
    run loads again from its starting checkpoint): far smaller, and a resume from it ends with the uninterrupted
    run's weights to the last bit. `save_total_limit` keeps the newest."""
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open

    from tests.support.tiny_model import make_tiny_model
    from tests.support.toy_env import play
    from trainer import step_ppo
    from trainer.config import StepPPOConfig
    from trainer.model import PolicyWithValue

    examples, _ = play(make_tiny_model(tokenizer, seed=2), tokenizer, 4, 2, 13, "steptool")

    def trainer_for(out):
        cfg = StepPPOConfig(output_dir=str(out), report_to=[], use_cpu=True, variant="steptool", num_train_epochs=1,
                            per_device_train_batch_size=1, gradient_accumulation_steps=1, learning_rate=3e-3,
                            save_strategy="steps", save_steps=1, save_total_limit=2, seed=0, disable_tqdm=True,
                            logging_steps=1, lr_scheduler_type="constant")
        lora = get_peft_model(make_tiny_model(tokenizer, seed=2),
                              LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
        return step_ppo.StepPPOTrainer(PolicyWithValue(lora), cfg, examples, pad_id=tokenizer.pad_token_id)

    whole = trainer_for(tmp_path / "whole")
    whole.train()
    assert whole.state.global_step == 4
    kept = sorted(p.name for p in (tmp_path / "whole").glob("checkpoint-*"))
    assert kept == ["checkpoint-3", "checkpoint-4"]  # save_total_limit 2
    ckpt = tmp_path / "whole" / "checkpoint-3"
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    trainable = {n for n, p in whole.model.named_parameters() if p.requires_grad}
    assert keys and set(keys) == trainable and all("lora_" in k or k.startswith("v_head.") for k in keys), keys
    full = sum(t.numel() for t in whole.model.state_dict().values())
    assert sum(p.numel() for n, p in whole.model.named_parameters() if n in keys) * 10 < full
    resumed = trainer_for(tmp_path / "resumed")
    losses = _count_losses(resumed)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert len(losses) == 1   # only the fourth batch: it resumed (the whole run's weights alone would not tell)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert resumed.state.global_step == 4 and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_step_gae_names_every_shape_when_they_differ():
    r = torch.zeros(1, 3)
    for values, mask in ((torch.zeros(1, 2), torch.ones(1, 3)), (torch.zeros(1, 3), torch.ones(1, 2))):
        with pytest.raises(ValueError) as e:
            step_gae(r, values, mask, 0.9, 0.5)
        assert str(e.value) == (f"shapes differ: rewards (1, 3), values {tuple(values.shape)}, "
                                f"mask {tuple(mask.shape)}")


def test_the_rounds_length_grouped_sampler_reads_each_trajectorys_tokens(tokenizer):
    """The round trains with `train_sampling_strategy: group_by_length` (trainer/rounds.py): transformers' sampler
    reads each trajectory's length from the dataset's `input_ids` before the round's items exist, and the batches it
    draws hold trajectories of similar length (the longest first, as LengthGroupedSampler orders its first batch)."""
    from tests.support.tiny_model import make_tiny_model
    from tests.support.toy_env import play
    from trainer import step_ppo
    from trainer.config import StepPPOConfig
    from trainer.model import PolicyWithValue

    model = make_tiny_model(tokenizer, seed=2)
    examples = [e for steps in (2, 4, 3) for e in play(model, tokenizer, 2, steps, 17, "steptool")[0]]
    lengths = [len(e.input_ids) for e in examples]
    assert len(set(lengths)) == 3
    cfg = StepPPOConfig(output_dir=str(REPO / ".pytest_cache" / "ppo-grouped"), report_to=[], use_cpu=True,
                        per_device_train_batch_size=2, save_strategy="no", disable_tqdm=True, seed=0,
                        train_sampling_strategy="group_by_length")
    trainer = step_ppo.StepPPOTrainer(PolicyWithValue(make_tiny_model(tokenizer, seed=2)), cfg, examples,
                                      pad_id=tokenizer.pad_token_id)
    sampler = trainer._get_train_sampler()
    assert list(sampler.lengths) == lengths
    order = list(sampler)
    assert sorted(order) == list(range(len(examples))) and lengths[order[0]] == max(lengths)
    assert [trainer.train_dataset[i]["index"] for i in order] == order


def test_collate_pads_every_field_with_zeros_by_hand():
    """Two trajectories of unequal length: every per-token, per-action-token, per-value-state and per-step field
    right-padded with 0 (the pad id for input ids), the masks 1 on real entries, ids and positions long, the rest
    float32; `traj_index` the rows' places, or the round indices given."""
    from trainer.ppo_round import RoundItem
    from trainer.step_ppo import collate

    a = RoundItem(input_ids=[5, 6, 7], action_mask=[0, 1, 1], rewards=[0.5], value_pos=[0], old_logprobs=[-1.0, -2.0],
                  ref_logprobs=[-1.5, -2.5], old_values=[0.25], advantages=[0.75, 0.75], returns=[1.5],
                  step_return=[1.5], step_baseline=[0.0], step_advantage=[0.75], token_step=[0, 0])
    b = RoundItem(input_ids=[8, 9, 10, 11, 12], action_mask=[0, 1, 0, 1, 1], rewards=[-0.5, 1.0], value_pos=[0, 2],
                  old_logprobs=[-0.5, -0.25, -3.0], ref_logprobs=[-0.75, -0.5, -3.5], old_values=[0.5, -0.5],
                  advantages=[-1.0, 2.0, 2.0], returns=[0.5, 1.0], step_return=[0.5, 1.0], step_baseline=[0.0, 0.0],
                  step_advantage=[-1.0, 2.0], token_step=[0, 1, 1], allowed={1: [11, 40, 41]})
    expected = {
        "traj_index": [0, 1], "input_ids": [[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]],
        "attention_mask": [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], "action_mask": [[0, 1, 1, 0, 0], [0, 1, 0, 1, 1]],
        "tok_step": [[0, 0, 0], [0, 1, 1]], "tok_mask": [[1, 1, 0], [1, 1, 1]],
        "old_logprobs": [[-1.0, -2.0, 0.0], [-0.5, -0.25, -3.0]], "ref_logprobs": [[-1.5, -2.5, 0.0], [-0.75, -0.5, -3.5]],
        "advantages": [[0.75, 0.75, 0.0], [-1.0, 2.0, 2.0]], "value_pos": [[0, 0], [0, 2]],
        "value_mask": [[1, 0], [1, 1]], "old_values": [[0.25, 0.0], [0.5, -0.5]], "returns": [[1.5, 0.0], [0.5, 1.0]],
        "rewards": [[0.5, 0.0], [-0.5, 1.0]], "step_mask": [[1, 0], [1, 1]],
        # one row per action token of the batch (2 + 3), −1 padded: b's second action token was name-constrained
        "allowed": [[-1, -1, -1]] * 3 + [[11, 40, 41], [-1, -1, -1]]}
    batch = collate([a, b])
    assert batch.keys() == expected.keys()
    for k, v in expected.items():
        want = torch.long if k in ("traj_index", "input_ids", "attention_mask", "action_mask", "tok_step",
                                   "value_pos", "allowed") else torch.float32
        assert batch[k].dtype == want and batch[k].tolist() == v, k
    assert collate([a, b], pad_id=2, indices=[4, 9])["input_ids"][0].tolist() == [5, 6, 7, 2, 2]
    assert collate([a, b], indices=[4, 9])["traj_index"].tolist() == [4, 9]


def test_the_round_tables_logp_columns_are_the_policy_before_and_after_its_updates(tokenizer):
    """logp_old sums π_old over each step's action tokens; logp_new sums the trained policy's own log-probs (a
    fresh precompute on the trained weights gives them to rounding), and a round with positive advantages on
    every step raised them."""
    from tests.support.tiny_model import make_tiny_model
    from tests.support.toy_env import play
    from trainer import step_ppo
    from trainer.config import StepPPOConfig
    from trainer.model import PolicyWithValue
    from trainer.ppo_round import action_token_steps, precompute, round_table, step_sums

    torch.manual_seed(0)
    model = make_tiny_model(tokenizer, seed=0)
    wrapped = PolicyWithValue(model)
    examples, _ = play(model, tokenizer, 4, 3, 11, "steptool")
    for ex in examples:
        ex.rewards = [1.0] * len(ex.rewards)  # every step earns: each is pushed up (the baseline is 0 in a 1-sample task)
    cfg = StepPPOConfig(output_dir=str(REPO / ".pytest_cache" / "ppo-logp"), report_to=[], use_cpu=True,
                        variant="steptool", num_train_epochs=1, per_device_train_batch_size=4, baseline="zero",
                        gradient_accumulation_steps=1, learning_rate=1e-3, kl_coef=0.0, save_strategy="no", seed=0,
                        disable_tqdm=True, logging_steps=100, lr_scheduler_type="constant")
    trainer = step_ppo.StepPPOTrainer(wrapped, cfg, examples, pad_id=tokenizer.pad_token_id)
    trainer.train()
    after = trainer.logprobs_after()
    fresh, _ = precompute(wrapped, examples, cfg)
    for a, p in zip(after, fresh):
        assert a == pytest.approx(p.old_logprobs, abs=1e-5)
    items = trainer.train_dataset.items
    rows = round_table(examples, items, "steptool", logprobs_after=after)
    for ex, it, new in zip(examples, items, after):
        mine = [r for r in rows if r["traj_id"] == ex.traj_id]
        steps = action_token_steps(ex)
        for r in mine:
            k = r["step_idx"]
            assert r["logp_old"] == pytest.approx(sum(x for x, s in zip(it.old_logprobs, steps) if s == k))
            assert r["logp_new"] == pytest.approx(sum(x for x, s in zip(new, steps) if s == k))
    assert all(r["advantage"] > 0 for r in rows)
    assert sum(r["logp_new"] - r["logp_old"] for r in rows) > 0
    assert all(r["logp_new"] is None for r in round_table(examples, items, "steptool"))
    assert step_sums([-1.0, -2.0, -0.5], [0, 0, 2], 3) == [-3.0, 0.0, -0.5]
    with pytest.raises(ValueError, match="2 values for 3 action tokens"):
        step_sums([-1.0, -2.0], [0, 0, 1], 2)
