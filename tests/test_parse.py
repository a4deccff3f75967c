"""The ReAct action parser: real expert actions parse, broken ones fail with a reason, never a crash."""
from __future__ import annotations

import json

import pytest

from pipeline.agent.parse import functions_from_system_prompt, parse_react

FUNCS = {"search_movies_for_cinevault", "get_movie_details_for_cinevault"}


def test_a_clean_action():
    p = parse_react('\nThought: find it first.\nAction: search_movies_for_cinevault\nAction Input: {"query": "Crimson Harbor"}',
                    FUNCS)
    assert p.parse_ok and p.error == ""
    assert p.thought == "find it first." and p.api_name == "search_movies_for_cinevault"
    assert json.loads(p.arguments) == {"query": "Crimson Harbor"}


@pytest.mark.parametrize("text, error", [
    ("Thought: I think I know.", "missing Action"),
    ("Thought: x\nAction: search_movies_for_cinevault", "missing Action Input"),
    ("Thought: x\nAction: search_movies_for_cinevault\nAction Input: {\"query\": \"a\"", "malformed JSON"),
    ("Thought: x\nAction: search_movies_for_cinevault\nAction Input: [1, 2]", "arguments must be an object"),
    ("Thought: x\nAction: fly_to_the_moon\nAction Input: {}", "unknown API: fly_to_the_moon"),
    ("Thought: x\nAction: search_movies_for_cinevault\nAction Input: {\"query\": \"a\"}\nObservation: made up",
     "text after the call"),
])
def test_broken_actions_fail_with_a_reason(text, error):
    p = parse_react(text, FUNCS)
    assert not p.parse_ok and error in p.error


def test_empty_input_means_no_arguments_and_finish_is_always_known():
    assert parse_react("Thought: t\nAction: get_movie_details_for_cinevault\nAction Input:", FUNCS).arguments == "{}"
    p = parse_react('Thought: done\nAction: Finish\nAction Input: {"return_type": "give_answer", "final_answer": "x"}', FUNCS)
    assert p.parse_ok and p.api_name == "Finish"


def test_untrusted_text_is_never_executed():
    p = parse_react('Thought: t\nAction: search_movies_for_cinevault\nAction Input: __import__("os").system("true")', FUNCS)
    assert not p.parse_ok and "malformed JSON" in p.error
    with pytest.raises(ValueError):
        functions_from_system_prompt('Specifically, you have access to the following APIs: __import__("os")')


def test_every_expert_action_of_the_real_sft_data_parses(external):
    data = json.loads((external / "steptool/data_train/gpt4_dfs_G123_for_sft_example.json").read_text())
    n = with_thought = 0
    for record in data.values():
        for inst in record["instances"]:
            conv = inst["conversations"]
            names = {f["name"] for f in functions_from_system_prompt(conv[0]["value"])}
            assert "Finish" in names
            for turn in conv:
                if turn["from"] != "assistant":
                    continue
                p = parse_react(turn["value"], names)
                assert p.parse_ok, (p.error, turn["value"][-200:])
                with_thought += bool(p.thought)  # GPT-4 sometimes writes an empty Thought
                n += 1
    assert n == 96 and with_thought == 63  # 33 of the 96 real expert actions have an empty Thought
