"""Agents: token-exact rendering, the HF backend, cot and dfsdt, expert paths, the SFT importer."""
from __future__ import annotations

import ast
import json
import random
import re

import pytest

from pipeline.agent.backends import Generation, HFPolicy, SamplingConfig, ScriptedPolicy
from pipeline.agent.expert import expert_path
from pipeline.agent.parse import functions_from_system_prompt, parse_react
from pipeline.agent.prompts import TOOLLLAMA_SYSTEM, ChatRenderer, format_action, system_prompt, user_message
from pipeline.agent.rollout import run_cot, run_dfsdt, run_dfsdt_batch
from pipeline.apidoc import FINISH_FUNCTION
from pipeline.envs import ToolWorldEnv
from pipeline.toolworld.fact_judge import SOLVED, rule_judge
from tests.support.tiny_model import make_tiny_model


@pytest.fixture(scope="module")
def renderer(tokenizer):
    return ChatRenderer(tokenizer)


@pytest.fixture(scope="module")
def tiny_policy(tokenizer):
    return HFPolicy(make_tiny_model(tokenizer), tokenizer, SamplingConfig(max_new_tokens=10, temperature=1.0),
                    batch_size=3, name="tiny")


class Recording:
    """Wraps a policy and keeps every prompt it was given."""

    def __init__(self, inner):
        self.inner, self.name, self.prompts = inner, inner.name, []

    def generate(self, prompts, seeds, slots=None):
        gens = self.inner.generate(prompts, seeds, slots)
        for p, g in zip(prompts, gens):
            self.prompts.append((list(p), g))
        return gens


def test_rendering_gives_exactly_the_ids_the_sampler_saw(world, splits, tiny_policy, renderer):
    rec = Recording(tiny_policy)
    rollouts = run_cot([(t, 0) for t in splits["train"][:4]], rec, renderer, lambda: ToolWorldEnv(world), max_steps=3)
    seen = {id(g): p for p, g in rec.prompts}
    for r in rollouts:
        assert len(r.steps) == 3  # random weights never finish
        actions = [s.generation.token_ids for s in r.steps]
        obs = [s.result.observation for s in r.steps]
        ended = [s.generation.ended for s in r.steps]
        for i, step in enumerate(r.steps):
            prefix = renderer.render(r.system, r.user, actions[:i], obs[:i], ended[:i]).input_ids
            assert prefix == seen[id(step.generation)], f"step {i}: the trainer would see other ids"
            assert step.prompt_len == len(prefix)
        full = renderer.render(r.system, r.user, actions, obs[:-1], ended)
        for (a, b), ids in zip(full.step_bounds, actions):
            assert full.input_ids[a:b] == ids and all(full.action_mask[a:b])
        assert sum(full.action_mask) == sum(len(a) for a in actions)


def test_batched_sampling_equals_one_by_one(tokenizer, renderer, splits):
    policy = HFPolicy(make_tiny_model(tokenizer), tokenizer, SamplingConfig(max_new_tokens=8, temperature=0.9,
                                                                            top_p=0.95), batch_size=4)
    prompts = [renderer.encode(renderer.prefix("S", user_message(t.query))) for t in splits["test"][:4]]
    together = policy.generate(prompts, [11, 12, 13, 14])
    alone = [policy.generate([p], [s])[0] for p, s in zip(prompts, [11, 12, 13, 14])]
    for a, b in zip(together, alone):
        assert a.token_ids == b.token_ids
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4
    again = policy.generate(prompts, [11, 12, 13, 14])
    assert [g.token_ids for g in again] == [g.token_ids for g in together]
    other = policy.generate(prompts, [21, 22, 23, 24])
    assert [g.token_ids for g in other] != [g.token_ids for g in together]
    assert all(lp <= 0 for g in together for lp in g.logprobs)


def test_greedy_logprob_is_the_max_log_softmax(tokenizer, renderer):
    import torch

    model = make_tiny_model(tokenizer)
    policy = HFPolicy(model, tokenizer, SamplingConfig(max_new_tokens=3, temperature=0.0))
    prompt = renderer.encode(renderer.prefix("S", "U"))
    g = policy.generate([prompt], [0])[0]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + g.token_ids[:-1]])).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    for k, tok in enumerate(g.token_ids):
        row = logp[len(prompt) - 1 + k]
        assert tok == int(row.argmax()) and abs(float(row[tok]) - g.logprobs[k]) < 1e-4


def _scripted_dfsdt(task, tokenizer):
    """Depth 0: child 0 gives up, child 1 searches. Depth 1: child 0 sends broken JSON, child 1 is right.
    Depth 2: Finish with the facts."""
    search, details = task.gold_calls[0], task.gold_calls[1]

    def script(prompt_ids, seed):
        text = tokenizer.decode(prompt_ids)
        depth = text.count("<|im_start|>function")
        child = script.calls.setdefault(depth, 0)
        script.calls[depth] += 1
        if depth == 0:
            return (format_action("no idea", "Finish", {"return_type": "give_up_and_restart"}) if child == 0
                    else format_action("search", search.function_name, search.arguments))
        if depth == 1:
            return (f"Thought: x\nAction: {details.function_name}\nAction Input: {{broken" if child == 0
                    else format_action("details", details.function_name, details.arguments))
        return format_action("done", "Finish", {"return_type": "give_answer", "final_answer": " ".join(task.gold_facts)})

    script.calls = {}
    return script


class OneAtATime:
    """DFSDT asks for `width` children in one call; a script answers them in order."""

    def __init__(self, inner):
        self.inner, self.name = inner, inner.name

    def generate(self, prompts, seeds, slots=None):
        return [self.inner.generate([p], [s])[0] for p, s in zip(prompts, seeds)]


def test_dfsdt_backtracks_on_give_up_and_error(world, splits, tokenizer, renderer):
    task = next(t for t in splits["train"] if t.intent == "attr" and t.level == "I1")
    policy = OneAtATime(ScriptedPolicy(tokenizer, _scripted_dfsdt(task, tokenizer)))
    r = run_dfsdt(task, 0, policy, renderer, lambda: ToolWorldEnv(ToolWorldEnv(world).world.__class__(1234, world.entities_per_tool, 0.0)),
                  width=2, budget=10, max_steps=5)
    statuses = [(n["depth"], n["status"]) for n in r.tree]
    assert statuses == [(1, "give_up"), (1, "open"), (2, "dead_end"), (2, "open"), (3, "answer")]
    assert [s.parsed.api_name for s in r.steps] == [task.gold_calls[0].function_name,
                                                    task.gold_calls[1].function_name, "Finish"]
    assert rule_judge(task.gold_facts, r.final_answer, r.finish_type) == SOLVED
    assert r.actions_generated == 6


def test_dfsdt_budget_keeps_the_deepest_path(world, splits, tokenizer, renderer):
    task = splits["train"][0]
    give_up = format_action("no", "Finish", {"return_type": "give_up_and_restart"})
    policy = ScriptedPolicy(tokenizer, lambda p, s: give_up)
    r = run_dfsdt(task, 0, policy, renderer, lambda: ToolWorldEnv(world), width=3, budget=5)
    assert r.actions_generated == 3 and r.finish_type == "give_up" and len(r.tree) == 3


def test_dfsdt_searches_advance_together_with_the_same_result(world, splits, tokenizer, renderer):
    """Many searches share each forward pass; per-row seeds make every tree the one a lone search grows."""
    class Counting(HFPolicy):
        calls = 0

        def generate(self, prompts, seeds, slots=None):
            Counting.calls += 1
            return super().generate(prompts, seeds, slots)

    policy = Counting(make_tiny_model(tokenizer), tokenizer, SamplingConfig(max_new_tokens=6, temperature=1.0),
                      batch_size=8, name="tiny")
    jobs = [(t, 0) for t in splits["test"][:3]]
    kw = dict(max_steps=3, width=2, budget=4, seed=5, constrain_names=True)
    together = run_dfsdt_batch(jobs, policy, renderer, lambda: ToolWorldEnv(world), **kw)
    batched_calls, Counting.calls = Counting.calls, 0
    alone = [run_dfsdt(t, k, policy, renderer, lambda: ToolWorldEnv(world), **kw) for t, k in jobs]
    assert [r.tree for r in together] == [r.tree for r in alone]
    assert [[s.generation.token_ids for s in r.steps] for r in together] == \
        [[s.generation.token_ids for s in r.steps] for r in alone]
    assert batched_calls < Counting.calls  # fewer, larger forward batches


def test_expert_paths_solve_and_recover(world, splits):
    env = ToolWorldEnv(world)
    rng = random.Random(0)
    mistakes = 0
    for task in splits["train"][:80]:
        path = expert_path(task, env, world, rng, error_rate=0.5)
        mistakes += path.mistakes
        assert len(path.observations) == len(path.actions) - 1
        for a in path.actions:
            assert parse_react(a).parse_ok
        final = json.loads(parse_react(path.actions[-1]).arguments)
        assert rule_judge(task.gold_facts, final["final_answer"], final["return_type"]) == SOLVED
        errors = [o for o in path.observations
                  if '"status": 404' in o or "missing 1 required" in o or "Rate limit" in o]
        assert len(errors) >= path.mistakes
    assert mistakes > 10


def test_toolllama_prompt_matches_the_real_sft_data(external, world):
    data = json.loads((external / "steptool/data_train/gpt4_dfs_G123_for_sft_example.json").read_text())
    for record in data.values():
        system = record["instances"][0]["conversations"][0]["value"]
        assert system.startswith(TOOLLLAMA_SYSTEM + "You have access of the following tools:\n1.")
        assert functions_from_system_prompt(system)[-1] == FINISH_FUNCTION
    ours = system_prompt([a.doc() for a in world.tool_apis("CineVault")], "toolllama", world.tool_descriptions())
    assert ours.startswith(TOOLLLAMA_SYSTEM + "You have access of the following tools:\n1.cinevault: A movie")
    specs = ast.literal_eval(ours.split("Specifically, you have access to the following APIs: ", 1)[1])
    assert [s["name"] for s in specs][-1] == "Finish" and len(specs) == 5


def test_sft_conversations_render_token_for_token(external, tokenizer, renderer):
    """The importer: each SFT instance renders to the text its conversation says, actions masked in."""
    data = json.loads((external / "steptool/data_train/gpt4_dfs_G123_for_sft_example.json").read_text())
    n = 0
    for record in data.values():
        for inst in record["instances"]:
            conv = inst["conversations"]
            messages = [{"role": c["from"], "content": c["value"]} for c in conv]
            actions = [c["value"] for c in conv if c["from"] == "assistant"]
            r = renderer.render_messages(messages)
            expected = tokenizer.apply_chat_template(messages, tokenize=False)
            assert tokenizer.decode(r.input_ids) == expected.rstrip("\n")
            for (a, b), text in zip(r.step_bounds, actions):
                assert tokenizer.decode(r.input_ids[a:b]) == text + tokenizer.eos_token
            assert sum(r.action_mask) == sum(b - a for a, b in r.step_bounds)
            n += 1
    assert n == sum(len(v["instances"]) for v in data.values())


def test_generic_and_incremental_rendering_agree(renderer, splits, world):
    task = splits["train"][3]
    env = ToolWorldEnv(world)
    path = expert_path(task, env, world, random.Random(1), error_rate=0.5)
    system, user = system_prompt(task.api_list), user_message(task.query)
    actions = [renderer.encode_action(a) for a in path.actions]
    a = renderer.render(system, user, actions, path.observations)
    b = renderer.render_messages(renderer.messages(system, user, path.actions, path.observations), actions)
    assert a == b


def test_parser_agrees_with_json_on_real_arguments(external):
    """Every `arguments` text real agents wrote (pass_rate_results): parse_ok exactly when it is a JSON object."""
    folder = external / "steptool/pass_rate_results"
    checked = disagreements = 0
    for path in sorted(folder.glob("*/G1_instruction.json")):
        for rec in json.loads(path.read_text()).values():
            for line in rec["answer_steps"].splitlines():
                m = re.match(r"Step \d+: (\{.*\})$", line)
                if not m:
                    continue
                try:
                    step = ast.literal_eval(m.group(1))
                except (ValueError, SyntaxError):
                    continue
                args = step.get("arguments", "")
                if not isinstance(args, str):
                    continue
                p = parse_react(f"Thought: t\nAction: {step['name']}\nAction Input: {args}")
                try:
                    is_obj = args.strip() == "" or isinstance(json.loads(args, strict=False), dict)
                except json.JSONDecodeError:
                    is_obj = False
                checked += 1
                disagreements += p.parse_ok != is_obj
    assert checked > 2000
    assert disagreements == 0


def test_scripted_generation_is_a_generation(tokenizer):
    g = ScriptedPolicy(tokenizer, lambda p, s: "Thought: hi").generate([[1, 2]], [0])[0]
    assert isinstance(g, Generation) and g.ended and g.token_ids[-1] == tokenizer.eos_token_id


def test_openai_backend_against_a_real_local_server(tokenizer, renderer, splits, monkeypatch):
    from pipeline.agent.backends import OpenAIPolicy
    from tests.support.openai_server import CompletionServer

    hf = HFPolicy(make_tiny_model(tokenizer), tokenizer, SamplingConfig(max_new_tokens=8, temperature=0.0))
    server = CompletionServer(hf, tokenizer, faults=[429, 500, 503])
    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-test-secret")
    try:
        policy = OpenAIPolicy(server.url, "tiny", tokenizer, SamplingConfig(max_new_tokens=8, temperature=0.0),
                              concurrency=4, api_key_env="TEST_OPENAI_KEY")
        prompts = [renderer.encode(renderer.prefix("S", user_message(t.query))) for t in splits["test"][:4]]
        remote = policy.generate(prompts, [1, 2, 3, 4])
        local = hf.generate(prompts, [1, 2, 3, 4])
        assert [g.text for g in remote] == [g.text for g in local]
        assert policy.stats["retries"] == 3 and server.requests == 7
        assert all(k == "Bearer sk-test-secret" for k in server.keys_seen)
        for r, l in zip(remote, local):
            if r.token_ids == l.token_ids:
                assert max(abs(a - b) for a, b in zip(r.logprobs, l.logprobs)) < 1e-5
        assert "sk-test-secret" not in repr(policy.__dict__.get("stats"))
    finally:
        server.close()
