"""The two policy backends against each other (docs/architecture.md, "Who writes the actions"): one definition of the behaviour log-prob
(log_softmax(logits) at temperature 1, unmasked), so the first PPO ratio is 1 with `old_logprobs: behaviour`
at T = 0.8 for both; the openai backend sends token ids, gets token ids back, and constrains function names
through the server's structured-output choice, against a loopback server that answers as vLLM does."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.agent.backends import HFPolicy, OpenAIPolicy, SamplingConfig
from pipeline.agent.policy import NameSlot
from tests.support.openai_server import CompletionServer
from tests.support.tiny_model import make_tiny_model

REPO = Path(__file__).resolve().parents[1]
T = 0.8


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_tiny_model(tokenizer, seed=11)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    texts = ["Find the weather in Paris.", "List three tools.", "Which API returns stock prices?", "Say hi."]
    return [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False) for t in texts]


def _examples(prompts, gens):
    from trainer.data import Example

    out = []
    for i, (p, g) in enumerate(zip(prompts, gens)):
        ids = list(p) + list(g.token_ids)
        out.append(Example(f"t{i}", ids, [0] * len(p) + [1] * len(g.token_ids), [(len(p), len(ids))], [1.0],
                           behaviour_logprobs=list(g.logprobs)))
    return out


def _cfg(**kw):
    from trainer.config import StepPPOConfig

    base = dict(output_dir=str(REPO / ".pytest_cache" / "backends"), report_to=[], use_cpu=True, variant="steptool",
                num_train_epochs=1, per_device_train_batch_size=4, gradient_accumulation_steps=1, learning_rate=1e-4,
                save_strategy="no", seed=0, disable_tqdm=True, logging_steps=1, lr_scheduler_type="constant",
                old_logprobs="behaviour", baseline="zero", kl_coef=0.0)
    base.update(kw)
    return StepPPOConfig(**base)


def _tempered(model, examples):
    """log_softmax(logits / T) of each action token: the old definition, which the check must tell apart."""
    out = []
    with torch.no_grad():
        for ex in examples:
            ids = torch.tensor([ex.input_ids])
            logits = model(ids).logits[0].float()
            pos = [i for i, m in enumerate(ex.action_mask) if m]
            lp = torch.log_softmax(logits[[p - 1 for p in pos]] / T, -1)
            out.append(lp.gather(-1, ids[0, pos].unsqueeze(-1)).squeeze(-1).tolist())
    return out


@pytest.mark.parametrize("backend", ["hf", "openai"])
def test_behaviour_logprobs_start_the_ppo_ratio_at_one_at_temperature_08(tokenizer, model, prompts, backend,
                                                                          monkeypatch):
    from trainer.model import PolicyWithValue
    from trainer.ppo_round import precompute
    from trainer.step_ppo import StepPPOTrainer

    sampling = SamplingConfig(max_new_tokens=12, temperature=T)
    hf = HFPolicy(model, tokenizer, sampling, batch_size=4)
    server = None
    if backend == "openai":
        server = CompletionServer({"tiny": model}, tokenizer)
        monkeypatch.setenv("TEST_OPENAI_KEY", "k")
        policy = OpenAIPolicy(server.url, "tiny", tokenizer, sampling, api_key_env="TEST_OPENAI_KEY")
    else:
        policy = hf
    try:
        gens = policy.generate(prompts, [3, 4, 5, 6])
    finally:
        if server:
            server.close()
    assert all(len(g.token_ids) > 0 for g in gens)
    examples = _examples(prompts, gens)
    wrapped = PolicyWithValue(model)
    items, _ = precompute(wrapped, examples, _cfg())
    for it, ex in zip(items, examples):
        assert it.old_logprobs == ex.behaviour_logprobs  # behaviour was used (no NaN, right length)
        assert it.old_logprobs == pytest.approx(it.ref_logprobs, abs=1e-4)
    tempered = _tempered(model, examples)
    assert max(abs(a - b) for it, tl in zip(items, tempered) for a, b in zip(it.ref_logprobs, tl)) > 0.05
    trainer = StepPPOTrainer(wrapped, _cfg(), examples, pad_id=tokenizer.pad_token_id)
    trainer.train()
    first = next(h for h in trainer.state.log_history if "approx_kl" in h)
    assert abs(first["approx_kl"]) < 1e-6 and first["clipfrac"] == 0.0, first


def test_openai_backend_sends_token_ids_and_constrains_the_name(tokenizer, model, prompts, monkeypatch):
    """The trigger is a piece of text the server's model writes on its own at that seed (asked once without a
    slot), so the first request stops there; the name comes from a structured-output choice; the rest is free.
    Prompts go as ids, ids come back."""
    sampling = SamplingConfig(max_new_tokens=24, temperature=1.0)
    choices = (" Search_weather\n", " Finish\n", " get_stock_price\n")
    server = CompletionServer({"tiny": model}, tokenizer)
    monkeypatch.setenv("TEST_OPENAI_KEY", "k")
    try:
        policy = OpenAIPolicy(server.url, "tiny", tokenizer, sampling, api_key_env="TEST_OPENAI_KEY")
        free = policy.generate(prompts[:1], [7])[0]
        assert len(free.token_ids) >= 6
        trigger = tokenizer.decode(free.token_ids[2:4], skip_special_tokens=False)
        assert trigger.strip(), "pick a trigger with visible text"
        slot = NameSlot(trigger, choices)
        server.requests_seen.clear()
        policy.stats["constrained_names"] = 0
        g = policy.generate(prompts[:1], [7], [slot])[0]
        reqs = list(server.requests_seen)
    finally:
        server.close()
    assert reqs[0]["prompt"] == list(prompts[0]) and reqs[0]["return_tokens_as_token_ids"] is True
    assert reqs[0]["stop"] == [trigger] and "structured_outputs" not in reqs[0]
    assert reqs[1]["structured_outputs"]["choice"], reqs[1]
    assert reqs[1]["prompt"][: len(prompts[0])] == list(prompts[0])
    head = tokenizer.decode(free.token_ids[:4], skip_special_tokens=False)
    assert g.text.startswith(head), (g.text, head)  # the same sample up to the trigger
    after = g.text.split(trigger, 1)[1]  # the first request stopped at the trigger's first appearance
    assert any(after.startswith(c) for c in choices), after
    assert policy.stats["constrained_names"] == 1 and policy.stats["misaligned"] == 0
    # the ids are the three answers' ids end to end: what the trainer will condition on
    assert tokenizer.decode(g.token_ids[:-1] if g.ended else g.token_ids, skip_special_tokens=False) == g.text


def test_a_lora_adapter_is_loaded_by_content_and_a_refusal_is_one_line(tokenizer, model, tmp_path, monkeypatch):
    """pipeline/agent/adapters.py against the stand-in's vLLM-documented /v1/load_lora_adapter: the name carries
    the adapter's digest (other weights, another name), loading the same adapter again is accepted (vLLM's 400
    "already been loaded"), a folder without an adapter is refused with the server's message, and the key comes
    from the environment only."""
    from peft import LoraConfig, get_peft_model

    from pipeline.agent.adapters import load_lora_adapter
    from pipeline.errors import SteptoolError

    monkeypatch.setenv("TEST_VLLM_KEY", "sk-adapter-secret")
    peft = get_peft_model(make_tiny_model(tokenizer, seed=11),
                          LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False))
    peft.save_pretrained(tmp_path / "a")
    server = CompletionServer({"sft": model}, tokenizer, lora_base="sft")
    try:
        name = load_lora_adapter(server.url, "ckpt/model", tmp_path / "a", "TEST_VLLM_KEY")
        assert name.startswith("ckpt/model@") and name in server.models
        assert load_lora_adapter(server.url, "ckpt/model", tmp_path / "a", "TEST_VLLM_KEY") == name
        with torch.no_grad():
            next(p for n, p in peft.named_parameters() if "lora_B" in n).add_(1.0)
        peft.save_pretrained(tmp_path / "b")
        assert load_lora_adapter(server.url, "ckpt/model", tmp_path / "b", "TEST_VLLM_KEY") != name
        (tmp_path / "empty").mkdir()
        with pytest.raises(SteptoolError, match=r"load_lora_adapter: .*HTTP 400: .*No adapter found"):
            load_lora_adapter(server.url, "ckpt/model", tmp_path / "empty", "TEST_VLLM_KEY")
        assert [r["lora_path"] for r in server.adapter_requests] == [str((tmp_path / d).resolve())
                                                                      for d in ("a", "a", "b", "empty")]
        assert set(server.keys_seen) == {"Bearer sk-adapter-secret"}
    finally:
        server.close()
