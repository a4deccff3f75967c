"""The chat-template tool-call format (`chat_tools`) and constrained function names."""
from __future__ import annotations

import json
import random

import pytest
import torch

from pipeline.agent.backends import HFPolicy, NameSlot, SamplingConfig, ScriptedPolicy, slot_remainders
from pipeline.agent.name_constraint import token_texts
from pipeline.agent.expert import expert_path
from pipeline.agent.parse import parse_action, parse_tool_call
from pipeline.agent.prompts import ChatRenderer, format_action, name_slot, system_prompt, user_message
from pipeline.agent.rollout import run_cot
from pipeline.envs import ToolWorldEnv
from pipeline.toolworld.fact_judge import SOLVED, rule_judge
from tests.support.tiny_model import make_tiny_model

KNOWN = {"search_for_x", "details_for_x"}


@pytest.fixture(scope="module")
def chat_renderer(tokenizer):
    return ChatRenderer(tokenizer, "chat_tools")


def test_chat_tools_system_prompt_lists_every_function_as_json(splits):
    task = splits["train"][0]
    system = system_prompt(task.api_list, "chat_tools")
    block = system.split("XML tags:\n<tools>", 1)[1].split("</tools>", 1)[0].strip().splitlines()
    names = [json.loads(line)["function"]["name"] for line in block]
    assert names[-1] == "Finish" and len(names) == len(task.api_list) + 1
    assert all(json.loads(line)["type"] == "function" for line in block)
    assert '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' in system


def test_tool_call_round_trip_and_argument_strings():
    text = format_action("Look it up.", "search_for_x", {"query": "Ösel"}, "chat_tools")
    assert text == 'Look it up.\n<tool_call>\n{"name": "search_for_x", "arguments": {"query": "Ösel"}}\n</tool_call>'
    p = parse_tool_call(text, KNOWN)
    assert (p.thought, p.api_name, json.loads(p.arguments), p.parse_ok) == ("Look it up.", "search_for_x", {"query": "Ösel"}, True)
    # arguments given as a JSON string (as some servers write them), no thought, no closing tag
    p = parse_tool_call('<tool_call>\n{"name": "details_for_x", "arguments": "{\\"id\\": \\"a1\\"}"}', KNOWN)
    assert p.parse_ok and p.thought == "" and json.loads(p.arguments) == {"id": "a1"}
    assert parse_action(text, "chat_tools", KNOWN) == parse_tool_call(text, KNOWN)
    assert not parse_action(text, "compact", KNOWN).parse_ok  # the ReAct parser finds no Action line


@pytest.mark.parametrize("text, error", [
    ("I will search.", "missing tool call"),
    ('<tool_call>\n{"name": "search_for_x", "arguments": {"query": "a"}\n</tool_call>', "malformed JSON"),
    ('<tool_call>\n{"arguments": {"query": "a"}}\n</tool_call>', "malformed JSON: the call must be"),
    ('<tool_call>\n{"name": "search_for_y", "arguments": {}}\n</tool_call>', "unknown API: search_for_y"),
    ('<tool_call>\n{"name": "search_for_x", "arguments": [1]}\n</tool_call>', "malformed JSON: arguments must be an object"),
    ('<tool_call>\n{"name": "search_for_x", "arguments": "{bad"}\n</tool_call>', "malformed JSON"),
    ('<tool_call>\n{"name": "search_for_x", "arguments": {}}\n</tool_call> and then', "text after the call"),
])
def test_broken_tool_calls_fail_with_a_reason(text, error):
    p = parse_tool_call(text, KNOWN)
    assert not p.parse_ok and p.error.startswith(error), p.error


def test_chat_tools_expert_paths_parse_and_solve(world, splits):
    env = ToolWorldEnv(world)
    rng = random.Random(3)
    for task in splits["train"][:12]:
        path = expert_path(task, env, world, rng, error_rate=0.5, fmt="chat_tools")
        known = {f["name"] for f in env.functions()}
        parsed = [parse_tool_call(a, known) for a in path.actions]
        assert all(p.parse_ok for p in parsed), [p.error for p in parsed]
        final = json.loads(parsed[-1].arguments)
        assert rule_judge(task.gold_facts, final["final_answer"], "give_answer") == SOLVED


def test_chat_tools_results_use_the_tool_role_and_render_token_exact(world, splits, tokenizer, chat_renderer):
    task = splits["train"][1]
    env = ToolWorldEnv(world)
    path = expert_path(task, env, world, random.Random(0), fmt="chat_tools")
    system, user = system_prompt(task.api_list, "chat_tools"), user_message(task.query)
    msgs = chat_renderer.messages(system, user, path.actions, path.observations)
    assert {m["role"] for m in msgs} == {"system", "user", "assistant", "tool"}
    text = tokenizer.apply_chat_template(msgs, tokenize=False)
    assert "<|im_start|>tool\n" in text
    incremental = chat_renderer.render(system, user, [chat_renderer.encode_action(a) for a in path.actions],
                                       path.observations)
    assert chat_renderer.render_messages(msgs) == incremental


def test_chat_tools_rollout_with_a_scripted_policy(world, splits, tokenizer, chat_renderer):
    task = next(t for t in splits["train"] if t.intent == "attr" and t.level == "I1")
    search, details = task.gold_calls[0], task.gold_calls[1]
    answer = {"return_type": "give_answer", "final_answer": " ".join(task.gold_facts)}
    script = iter([format_action("search", search.function_name, search.arguments, "chat_tools"),
                   format_action("details", details.function_name, details.arguments, "chat_tools"),
                   format_action("done", "Finish", answer, "chat_tools")])
    policy = ScriptedPolicy(tokenizer, lambda p, s: next(script))
    (r,) = run_cot([(task, 0)], policy, chat_renderer, lambda: ToolWorldEnv(world), max_steps=5)
    assert [s.parsed.parse_ok for s in r.steps] == [True, True, True]
    assert r.finish_type == "give_answer" and rule_judge(task.gold_facts, r.final_answer, "give_answer") == SOLVED


@pytest.mark.parametrize("text, expected", [
    ("Thought: go", None),  # no trigger yet
    ("Thought: go\nAction:", {" search_for_x\n", " details_for_x\n", " Finish\n"}),
    ("Action: ", {"search_for_x\n", "details_for_x\n", "Finish\n"}),  # a trigger at the very start
    ("Thought: go\nAction: s", {"earch_for_x\n"}),
    ("Thought: go\nAction: search_for_x\n", None),  # completed
    ("Thought: go\nAction: search_for_x\nAction Input: {", None),
    ("Thought: go\nAction: zzz", None),  # left every choice: not constrained any more
])
def test_slot_remainders_react(text, expected):
    trigger, before, after = name_slot("compact")
    slot = NameSlot(trigger, tuple(before + n + after for n in ("search_for_x", "details_for_x", "Finish")))
    assert slot_remainders(text, slot) == expected


def test_slot_remainders_chat_tools():
    trigger, before, after = name_slot("chat_tools")
    slot = NameSlot(trigger, tuple(before + n + after for n in ("search_for_x", "Finish")))
    assert slot_remainders('ok\n<tool_call>\n{"name": "Fi', slot) == {'nish"'}
    assert slot_remainders('ok\n<tool_call>\n{"name": "Finish", "arguments"', slot) is None


def test_token_texts_are_what_batch_decode_gives(tokenizer):
    """The fast path of the name constraint's vocabulary index gives every token's text exactly as transformers'
    own per-item decode does (byte-level pieces of a multi-byte character included)."""
    fast = token_texts(tokenizer)
    assert len(fast) == len(tokenizer) and fast == tokenizer.batch_decode([[i] for i in range(len(tokenizer))],
                                                                          skip_special_tokens=False)
    assert fast[tokenizer.eos_token_id] == tokenizer.eos_token and "\ufffd" in fast  # half a UTF-8 character


def test_constrained_names_from_a_random_model(tokenizer):
    """A random model writes only the allowed names in the slot; the log-probs are the unmasked model's."""
    model = make_tiny_model(tokenizer)
    choices = (" search_for_x\n", " details_for_x\n", " Finish\n")
    policy = HFPolicy(model, tokenizer, SamplingConfig(max_new_tokens=12, temperature=1.0), batch_size=4)
    prompt = tokenizer("Action:", add_special_tokens=False)["input_ids"]
    gens = policy.generate([prompt] * 8, list(range(8)), slots=[NameSlot("", choices)] * 8)
    starts = {next((c for c in choices if g.text.startswith(c)), None) for g in gens}
    assert None not in starts and len(starts) >= 2, [g.text for g in gens]
    free = policy.generate([prompt] * 8, list(range(8)))
    assert not any(g.text.startswith(choices) for g in free)  # without the slot a random model never does
    g = gens[0]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + g.token_ids[:-1]])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    for k, tok in enumerate(g.token_ids):
        assert abs(float(logp[len(prompt) - 1 + k, tok]) - g.logprobs[k]) < 1e-4
