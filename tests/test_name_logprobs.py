"""Constrained function names in the loss (`train.name_logprobs: constrained`): the allowed sets the trainer
recomputes are the sampler's, and the log-probs, entropies and gradients of the renormalised distribution are
checked by hand."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.agent.name_constraint import NameConstraint, function_name_slot
from pipeline.agent.policy import NameSlot

CHOICES = (" search_for_x\n", " details_for_x\n", " Finish\n")


def test_renormalised_logprob_entropy_and_gradient_by_hand():
    """π = (.1, .2, .3, .4). Row 0 chose token 1 among {1, 2}: log(.2/.5), entropy of (.4, .6), gradient
    onehot(1) − (0, .4, .6, 0). Row 1 was forced to token 3: log-prob 0, entropy 0, no gradient. Row 2 was free:
    log .3, the full entropy, gradient onehot(2) − π."""
    from trainer.model import _renormalised

    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    logits = p.log().repeat(3, 1).requires_grad_(True)
    logp = torch.log_softmax(logits, -1)
    lp = logp.gather(-1, torch.tensor([[1], [3], [2]])).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    allowed = torch.tensor([[1, 2], [3, -1], [-1, -1]])
    lp_c, ent_c = _renormalised(logp, lp, ent, allowed)
    full = -sum(x * math.log(x) for x in (0.1, 0.2, 0.3, 0.4))  # 1.279854
    assert lp_c.tolist() == pytest.approx([math.log(0.4), 0.0, math.log(0.3)], abs=1e-12)
    assert ent_c.tolist() == pytest.approx([-(0.4 * math.log(0.4) + 0.6 * math.log(0.6)), 0.0, full], abs=1e-12)
    lp_c.sum().backward()
    expected = torch.tensor([[0, 0.6, -0.6, 0], [0, 0, 0, 0], [-0.1, -0.2, 0.7, -0.4]], dtype=torch.float64)
    assert torch.allclose(logits.grad, expected, atol=1e-12) and torch.equal(logits.grad[1], torch.zeros(4).double())


def test_model_logprobs_with_allowed_sets_match_the_masked_softmax(tokenizer):
    """Through the model, in chunks of any size: constrained rows get the log-softmax of the logits masked to their
    set, the others the plain one; an empty [N, 0] set tensor changes nothing."""
    from tests.support.tiny_model import make_tiny_model
    from trainer.model import PolicyWithValue

    torch.manual_seed(0)
    model = PolicyWithValue(make_tiny_model(tokenizer)).eval()
    ids = torch.randint(100, 2000, (2, 9))
    att = torch.ones_like(ids)
    rows, pos = torch.tensor([0, 0, 0, 1, 1]), torch.tensor([3, 4, 5, 6, 8])
    chosen = ids[rows, pos]
    allowed = torch.full((5, 3), -1)
    allowed[1, :3] = torch.tensor([int(chosen[1]), 7, 8])
    allowed[3, 0] = int(chosen[3])  # forced
    with torch.no_grad():
        h, _ = model(ids, att)
        logits = model.lm_head(h[rows, pos - 1]).float()
        plain, plain_ent = model.token_logprobs(h, rows, pos, ids, with_entropy=True)
        for chunk in (1, 2, 1024):
            lp, ent = model.token_logprobs(h, rows, pos, ids, chunk, True, allowed)
            for n in range(5):
                keep = allowed[n][allowed[n] >= 0]
                if len(keep):
                    masked = torch.full_like(logits[n], float("-inf"))
                    masked[keep] = logits[n][keep]
                    ref = torch.log_softmax(masked, -1)
                    assert float(lp[n]) == pytest.approx(float(ref[chosen[n]]), abs=1e-5)
                    assert float(ent[n]) == pytest.approx(float(-(ref[keep].exp() * ref[keep]).sum()), abs=1e-5)
                else:
                    assert float(lp[n]) == pytest.approx(float(plain[n]), abs=1e-5)  # (chunking rounds)
                    assert float(ent[n]) == pytest.approx(float(plain_ent[n]), abs=1e-4)
            assert float(lp[3]) == 0.0 and float(ent[3]) == 0.0
        lp0, _ = model.token_logprobs(h, rows, pos, ids, 2, False, torch.full((5, 0), -1))
        assert torch.equal(lp0, plain)


def test_the_trainer_recomputes_the_sets_the_sampler_used(tokenizer):
    """A random model samples names under a slot; the sets NameConstraint.per_action_token recomputes from the
    generated ids are, token by token, the ones the sampler masked with, and each sampled token lies in its set."""
    from pipeline.agent.backends import HFPolicy, SamplingConfig
    from tests.support.tiny_model import make_tiny_model

    policy = HFPolicy(make_tiny_model(tokenizer), tokenizer, SamplingConfig(max_new_tokens=10, temperature=1.0),
                      batch_size=3)
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    own = policy.allowed_tokens

    def recording(generated, slot):
        out = own(generated, slot)
        if out is not None:
            seen.append((tuple(generated), tuple(out)))
        return out

    policy.allowed_tokens = recording
    slot = NameSlot("", CHOICES)
    prompt = tokenizer("Action:", add_special_tokens=False)["input_ids"]
    gens = policy.generate([prompt] * 6, list(range(6)), slots=[slot] * 6)
    names = NameConstraint(tokenizer)
    sampler = dict(seen)
    checked = 0
    for g in gens:
        ours = names.per_action_token(g.token_ids, slot)
        assert ours, g.text  # the name comes first: its tokens are constrained
        for k, ids in ours.items():
            assert tuple(ids) == sampler[tuple(g.token_ids[:k])] and g.token_ids[k] in ids
            checked += 1
        # after the name the text is free: no set past the last constrained token
        assert max(ours) == len(ours) - 1 and any(g.text.startswith(c) for c in CHOICES)
    assert checked >= 6 and any(len(ids) == 1 for g in gens for ids in names.per_action_token(g.token_ids, slot).values())


def test_a_react_action_is_constrained_from_the_trigger_to_the_end_of_the_name(tokenizer):
    """"Thought: ...\\nAction: search_for_x\\nAction Input: {...}": the thought and the arguments are free; the
    tokens from the trigger to the newline after the name are constrained, and each lies in its set."""
    names = NameConstraint(tokenizer)
    slot = function_name_slot("compact", ["search_for_x", "details_for_x"])
    assert slot == NameSlot("\nAction:", (" Finish\n", " details_for_x\n", " search_for_x\n"))
    text = 'Thought: look it up\nAction: search_for_x\nAction Input: {"q": "a"}'
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    sets = names.per_action_token(ids, slot)
    starts = [len(tokenizer.decode(ids[:k])) for k in range(len(ids) + 1)]
    name_from = text.index("\nAction:") + len("\nAction:")
    name_to = text.index("\nAction Input")  # the newline that closes the name
    for k in range(len(ids)):
        inside = name_from <= starts[k] <= name_to
        assert (k in sets) == inside, (k, tokenizer.decode(ids[k:k + 1]))
        if inside:
            assert ids[k] in sets[k]


def _example(tokenizer, group, actions):
    from pipeline.agent.prompts import ChatRenderer
    from trainer.data import Example

    r = ChatRenderer(tokenizer, "compact").render("You call functions.", "Find x.",
                                                 [tokenizer(a, add_special_tokens=False)["input_ids"] for a in actions],
                                                 ["{}"] * (len(actions) - 1), [True] * len(actions))
    return Example(f"traj-{group}", r.input_ids, r.action_mask, r.step_bounds, [0.0] * len(actions), group=group)


def test_attach_name_constraints_indexes_action_tokens_across_steps_and_refuses_foreign_actions(tokenizer):
    from pipeline.errors import SchemaError
    from trainer.data import attach_name_constraints

    names = NameConstraint(tokenizer)
    slots = {"t1": function_name_slot("compact", ["search_for_x"])}
    first, second = "Thought: a\nAction: search_for_x\nAction Input: {}", "Thought: b\nAction: Finish\nAction Input: {}"
    ex = _example(tokenizer, "t1", [first, second])
    stats = attach_name_constraints([ex], slots, names)
    (a0, b0), (a1, b1) = ex.step_bounds
    own0 = names.per_action_token(ex.input_ids[a0:b0], slots["t1"])
    own1 = names.per_action_token(ex.input_ids[a1:b1], slots["t1"])
    assert own0 and own1
    assert ex.allowed == {**own0, **{(b0 - a0) + k: v for k, v in own1.items()}}
    assert stats == {"name_tokens_constrained": len(own0) + len(own1),
                     "name_tokens_forced": sum(len(v) == 1 for v in ex.allowed.values())}
    with pytest.raises(SchemaError, match=r"trajectory traj-t1, step 1: action token \d+ .*not one the function-name "
                                          r"constraint allows.*name_logprobs: model"):
        attach_name_constraints([_example(tokenizer, "t1", [first, "Thought: b\nAction: zzz\nAction Input: {}"])],
                                slots, names)
    with pytest.raises(SchemaError, match=r"trajectory traj-t2: task 't2' is not among the train tasks"):
        attach_name_constraints([_example(tokenizer, "t2", [first])], slots, names)


def test_a_round_trains_the_renormalised_logprobs(tokenizer):
    """prepare_round with sets attached: a forced token's old and reference log-probs are 0 exactly, a token
    chosen among two gets the plain log-prob minus log Σ over the two, the others are unchanged; the loss over the
    batch (which carries the sets) is finite, and its gradient does not reach a forced token's logits."""
    from tests.support.tiny_model import make_tiny_model
    from tests.test_trainer import _round_cfg, _round_examples
    from trainer import step_ppo
    from trainer.model import PolicyWithValue
    from trainer.ppo_round import prepare_round

    torch.manual_seed(0)
    model = PolicyWithValue(make_tiny_model(tokenizer))
    plain, _ = prepare_round(model, _round_examples(tokenizer), _round_cfg("steptool"))
    a, b = _round_examples(tokenizer)
    a.allowed = {1: [a.input_ids[3]], 3: [a.input_ids[7], 5]}  # action tokens 1 (position 3) and 3 (position 7)
    items, _ = prepare_round(model, [a, b], _round_cfg("steptool"))
    with torch.no_grad():
        h, _ = model(torch.tensor([a.input_ids]), torch.ones(1, len(a.input_ids), dtype=torch.long))
        logp = torch.log_softmax(model.lm_head(h[0, 6]).float(), -1)
    norm = float(torch.logsumexp(logp[[a.input_ids[7], 5]], -1))
    assert items[0].old_logprobs[1] == 0.0 and items[0].ref_logprobs[1] == 0.0
    assert items[0].old_logprobs[3] == pytest.approx(plain[0].old_logprobs[3] - norm, abs=1e-5)
    for k in (0, 2, 4):
        assert items[0].old_logprobs[k] == pytest.approx(plain[0].old_logprobs[k], abs=1e-6)
    assert items[1].old_logprobs == pytest.approx(plain[1].old_logprobs, abs=1e-6)

    batch = step_ppo.collate(items, tokenizer.pad_token_id)
    assert batch["allowed"].shape == (7, 2) and batch["allowed"][1].tolist() == [a.input_ids[3], -1]
    trainer = step_ppo.StepPPOTrainer(model, _round_cfg("steptool", kl_coef=0.1), [a, b], pad_id=tokenizer.pad_token_id)
    loss = trainer.compute_loss(model, batch)
    assert torch.isfinite(loss)
    lp = model(batch["input_ids"], batch["attention_mask"], *torch.nonzero(batch["action_mask"], as_tuple=True), 1024,
               False, batch["allowed"])[2]
    grad, = torch.autograd.grad(lp[1], model.lm_head.weight, allow_unused=True)
    assert grad is None or float(grad.abs().max()) == 0.0
