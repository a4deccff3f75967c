"""Simulated answers for calls the replay never recorded (pipeline/simulator.py): the request as StableToolBench's
server sends it, line by line; the answers through the loopback server (`steptool serve-judge` answers simulation
requests by rule), cached by canonical arguments, retried when not JSON, and the spend capped while it runs."""
from __future__ import annotations

import hashlib
import json

import pytest

from pipeline.annotate.scripted_judge_server import Faults, JudgeServer
from pipeline.config import SimulatorConfig, parse_params
from pipeline.envs import ReplayEnv
from pipeline.errors import ConfigError
from pipeline.replay import ReplayCache, args_key
from pipeline.simulator import (EXAMPLES_CHARS, FAILED, SYSTEM_PROMPT, Simulator, SimulatorBudgetExceeded, examples,
                                messages, parse, request)
from pipeline.task import Task

DOC = {"category_name": "Data", "tool_name": "The Clique", "api_name": "Songkick concert",
       "api_description": "Concert details by id", "required_parameters": [{"name": "id_conc", "type": "STRING"}],
       "optional_parameters": []}
NAME = "songkick_concert_for_the_clique"
# sha256 of the system prompt string of StableToolBench's server/main.py at commit 9fd0a3c7 (fake_response_function_
# chat), computed from that file's source with ast (the literal's value, its escapes applied)
STABLETOOLBENCH_PROMPT_SHA256 = "cb0a04b8c63e55ae9653b343596d278e2645cee8ddae1e8d48459672966eec66"


def _rows(responses):
    return [{"method": "m", "subset": "G1_tool", "query_id": str(i), "function_name": NAME,
             "args_key": args_key(json.dumps({"id_conc": k})), "response": json.dumps(v)}
            for i, (k, v) in enumerate(responses)]


def test_the_request_is_stabletoolbench_s_line_by_line():
    assert hashlib.sha256(SYSTEM_PROMPT.encode()).hexdigest() == STABLETOOLBENCH_PROMPT_SHA256
    lines = SYSTEM_PROMPT.split("\n")
    assert len(lines) == 81 and lines[0] == "" and lines[-1] == "    "
    assert lines[1].startswith("Imagine you are an API Server operating within a specialized tool")
    assert lines[3:8] == ["Your responses must adhere to a specific JSON structure, which is as follows:", "", "{",
                          '    "error": "",', '    "response": "<Your_Response>"']
    assert lines[35] == '    "code": "import requests' and lines[36] == ""  # its \n escapes are real newlines
    assert lines[-2] == ("Your will also be given successful examples of API calls and their expected outputs, based on "
                         "which you will generate the response for the given input.")
    recorded = [("{'id_conc': 'a'}", {"error": "", "response": {"venue": "Hall"}})]
    system, user = messages(DOC, recorded, {"id_conc": "z"})
    assert system == {"role": "system", "content": SYSTEM_PROMPT}
    assert user == {"role": "user", "content": (
        "API Documentation:{'tool_description': '', 'api_info': [{'name': 'Songkick concert', "
        "'description': 'Concert details by id'}]}\n"
        "API Examples:[(\"{'id_conc': 'a'}\", {'error': '', 'response': {'venue': 'Hall'}})]\n"
        "API Input:{'id_conc': 'z'}\n")}
    assert request("gpt-4-turbo", [system, user], 0.0) == {
        "model": "gpt-4-turbo", "messages": [system, user], "max_tokens": 1024, "temperature": 0.0,
        "response_format": {"type": "json_object"}}


def test_examples_are_at_most_five_and_shrink_to_fit_as_the_server_takes_them():
    short = [(f"{{'id': {i}}}", {"error": "", "response": "x"}) for i in range(7)]
    assert examples(short) == short[:5]
    long = [(f"{{'id': {i}}}", {"error": "", "response": "y" * 900}) for i in range(5)]
    assert examples(long) == long[:2] and len(str(long[:2])) <= EXAMPLES_CHARS < len(str(long[:3]))
    huge = [("{'id': 0}", {"error": "", "response": "z" * 5000})] * 3
    assert examples(huge) == huge[:1]  # at least one, then the user message cuts its text at 2,048 characters
    user = messages(DOC, huge, {})[1]["content"]
    assert len(user.split("API Examples:")[1].split("\nAPI Input:")[0]) == EXAMPLES_CHARS


@pytest.mark.parametrize("text, expected", [
    ('{"error": "", "response": {"a": 1}}', {"error": "", "response": {"a": 1}}),
    ('```json\n{"error": "", "response": "ok"}\n```', {"error": "", "response": "ok"}),
    ('{"response": "no error key"}', None), ('["error", "response"]', None), ("not json", None), (None, None),
    ('{"error": null, "response": ""}', {"error": "", "response": ""}),
])
def test_an_answer_is_an_envelope_or_asked_again(text, expected):
    assert parse(text) == expected


def _env(server, tmp_path, rows, **cfg):
    cfg = SimulatorConfig(base_url=server.url, model="sim-test", cache_path=str(tmp_path / "sim.sqlite"), **cfg)
    sim = Simulator(cfg)
    env = ReplayEnv(ReplayCache.from_rows(rows), simulator=sim)
    env.reset(Task("q1", "test", "I1", "the query", [DOC]))
    return env, sim


def test_a_miss_is_simulated_from_the_recorded_examples_and_cached_by_canonical_arguments(tmp_path):
    rows = _rows([("a", {"error": "boom", "response": ""}), ("b", {"error": "", "response": {"venue": "Hall B"}})])
    server = JudgeServer()
    try:
        env, sim = _env(server, tmp_path, rows)
        recorded = env.step(NAME, '{"id_conc": "a"}')
        assert recorded.status == "ok" and server.http_calls == 0
        r = env.step(NAME, '{"id_conc": "zz", "lang": "en"}')
        # the rule: no example with this input, so the first that succeeded (b's)
        assert r.status == "simulated" and json.loads(r.observation) == {"error": "", "response": {"venue": "Hall B"}}
        assert server.simulated == 1 and sim.stats["simulator_calls"] == 1 and sim.stats["simulator_cost_usd"] > 0
        again = env.step(NAME, '{"lang":"en","id_conc":"zz"}')  # same call, other key order and spacing
        assert again.status == "simulated" and again.observation == r.observation
        assert server.simulated == 1 and sim.stats["simulator_cache_hits"] == 1
        bad = env.step(NAME, "{not json")  # the server's own parse error, no model asked
        assert bad.status == "simulated" and "Tool input parse error" in bad.observation and server.simulated == 1
        sim.close()
        env2, sim2 = _env(server, tmp_path, rows)  # a rerun: from the SQLite cache, nothing paid
        assert env2.step(NAME, '{"id_conc": "zz", "lang": "en"}').observation == r.observation
        assert server.simulated == 1 and sim2.stats["simulator_cost_usd"] == 0
        sim2.close()
    finally:
        server.close()


def test_an_answer_that_is_not_json_is_asked_three_times_then_the_server_s_failure(tmp_path):
    server = JudgeServer(Faults(p_malformed=1.0))
    try:
        env, sim = _env(server, tmp_path, _rows([]))
        r = env.step(NAME, '{"id_conc": "q"}')
        assert json.loads(r.observation) == FAILED and r.status == "simulated"
        assert server.simulated == 3 and sim.stats["simulator_invalid_answers"] == 3
        assert sim.stats["simulator_failed"] == 1 and len(sim.cache) == 0  # an invalid answer is never cached
        sim.close()
    finally:
        server.close()


def test_the_cap_stops_the_run_naming_spend_and_cap_and_a_rerun_continues_from_the_cache(tmp_path):
    from pipeline.annotate.pricing import cost_usd, estimated_tokens

    # the cap: 10% above one call's estimate, so the first call fits and the second (its estimate plus what the
    # first cost, by the server's usage) does not
    estimate = cost_usd(estimated_tokens(request("sim-test", messages(DOC, [], {"id_conc": "1"}), 0.0)), 1024,
                        SimulatorConfig())
    cap = round(estimate * 1.1, 6)
    server = JudgeServer()
    try:
        env, sim = _env(server, tmp_path, _rows([]), max_cost_usd=cap)
        first = env.step(NAME, '{"id_conc": "1"}')
        spent = sim.stats["simulator_cost_usd"]
        assert first.status == "simulated" and 0.1 * estimate < spent < cap
        with pytest.raises(SimulatorBudgetExceeded, match=rf"\${spent:.4f} spent on 1 simulated answers.*"
                                                          rf"env\.simulator\.max_cost_usd \${cap:g}: stopped"):
            env.step(NAME, '{"id_conc": "2"}')
        assert server.simulated == 1  # nothing sent past the cap
        sim.close()
        env2, sim2 = _env(server, tmp_path, _rows([]), max_cost_usd=1.0)  # the cap raised: the first from the cache
        assert env2.step(NAME, '{"id_conc": "1"}').observation == first.observation
        assert env2.step(NAME, '{"id_conc": "2"}').status == "simulated" and server.simulated == 2
        sim2.close()
    finally:
        server.close()


def test_simulate_needs_the_replay_environment_and_a_url():
    with pytest.raises(ConfigError, match="env.on_miss simulate needs env.kind replay"):
        parse_params({"env": {"on_miss": "simulate"}})
    with pytest.raises(ConfigError, match="env.simulator.base_url must be an http"):
        parse_params({"env": {"kind": "replay", "on_miss": "simulate", "simulator": {"base_url": "nowhere"}}})
    p = parse_params({"env": {"kind": "replay", "on_miss": "simulate", "simulator": {"max_cost_usd": 2}}})
    assert p.env.simulator.max_cost_usd == 2.0 and p.env.simulator.temperature == 0.0


def test_a_collection_counts_who_answered_each_call(tmp_path, tokenizer):
    """A scripted agent calls a recorded input, an unrecorded one, a function the task does not offer, then
    answers: the steps say ok / simulated / no_such_function, and the summary counts 1 recorded, 1 simulated and
    no error from a miss (the call to no function is nobody's answer)."""
    from pipeline.agent.play import collect
    from pipeline.agent.policy import ScriptedPolicy
    from pipeline.agent.prompts import ChatRenderer, format_action

    script = [format_action("a", NAME, {"id_conc": "b"}), format_action("b", NAME, {"id_conc": "new"}),
              format_action("c", "no_such_api", {}),
              format_action("d", "Finish", {"return_type": "give_answer", "final_answer": "Hall B"})]
    policy = ScriptedPolicy(tokenizer, lambda prompt, seed, it=iter(script): next(it))
    server = JudgeServer()
    try:
        cfg = SimulatorConfig(base_url=server.url, model="sim-test", cache_path=str(tmp_path / "sim.sqlite"))
        sim = Simulator(cfg)
        cache = ReplayCache.from_rows(_rows([("b", {"error": "", "response": {"venue": "Hall B"}})]))
        task = Task("q1", "test", "I1", "Where is concert b?", [DOC])
        summary = collect([task], policy, ChatRenderer(tokenizer), lambda: ReplayEnv(cache, simulator=sim),
                          tmp_path / "played", "k", max_steps=5, progress=False, count_answers=True)
        sim.close()
    finally:
        server.close()
    import polars as pl

    steps = pl.read_parquet(tmp_path / "played" / "steps.parquet").sort("step_idx")
    assert steps["env_status"].to_list() == ["ok", "simulated", "no_such_function", "finish"]
    assert summary["answers"] == {"recorded": 1, "simulated": 1, "miss_error": 0} and summary["tool_calls"] == 3
    assert summary["simulated_answers"] == 1 and summary["replay_misses"] == 0
