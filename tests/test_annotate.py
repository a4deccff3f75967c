"""Step-grained annotation: the SuccCalling rule (also on real StableToolBench responses), the oracle and
heuristic annotators, the importer of the reference's annotations, and the openai judge against a real
local server with faults, its cache, and a kill -9 in the middle of a run."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.annotate.base import status_of
from pipeline.annotate.cache import JudgeCache
from pipeline.annotate.heuristic import heuristic_label, lcs_length, lcs_ratio
from pipeline.annotate.importer import import_reference_annotations
from pipeline.annotate.llm_judge import parse_answer
from pipeline.annotate.scripted_judge_server import Faults, JudgeServer, auth_digest
from pipeline.annotate.oracle import oracle_label
from pipeline.annotate.run import annotated_rows, group_steps, label_trajectories, summarize
from pipeline.annotate.succ_calling import read_envelope, succ_calling
from pipeline.config import AnnotateConfig
from pipeline.errors import SchemaError, SteptoolError
from pipeline.formats.stabletoolbench import parse_answer_steps
from pipeline.schema import ANNOTATED_STEPS, write_table
from tests.support.annotate_data import play_scripted

REPO = Path(__file__).resolve().parents[1]


def env(error="", response=None):
    return json.dumps({"error": error, "response": response})


@pytest.mark.parametrize("observation, expected", [
    (env(response={"results": [{"id": "a1"}]}), (1, "")),
    (env(response={"status": 404, "message": "not found"}), (0, "status 404")),
    (env(response={"results": []}), (0, "empty result")),
    (env(response={"page": 1, "results": []}), (0, "empty result")),
    (env(response=""), (0, "empty result")),
    (env(response="[]"), (0, "empty result")),
    (env("Rate limit per minute error..."), (0, "error: Rate limit per minute error...")),
    (env("No such function name: foo"), (0, "unknown API")),
    (env(response="{'message': 'DEPRECATED_ENDPOINT'}"), (0, "error message: DEPRECATED_ENDPOINT")),
    (env(response={"message": "Invalid API key. Go to https://x"}), (0, "error message: Invalid API key. Go to https://x")),
    (env(response="{'success': False, 'message': 'No results found'}"), (0, "status error")),
    (env(response="403 - Forbidden | Access to this page is forbidden"), (0, "status 403")),
    (env(response="<html>\r\n<head><title>502 Bad Gateway</title></head>"), (0, "status 502")),
    (env(response="{'404': 'Unable to find a route to match the URI'}"), (0, "error message: Unable to find a route to match the URI")),
    (env(response="False"), (1, "")),  # "contains profanity?" False is an answer
    (env(response={"data": "x" * 400, "note": "no error here, just data"}), (1, "")),
    ('{"error": "", "response": "{\\"items\\": [1, 2, 3], \\"more\\": tru...', (1, "")),  # cut envelope, still data
    # hand-labelled at each branch's edge (what a loosened rule would get wrong)
    (env(response={"results": [], "data": {"id": 7}}), (1, "")),  # empty only when ALL containers are empty
    (env(response={"results": [], "summary": "Forty-one characters of text are data, ok"}), (1, "")),  # > 40
    (env(response={"results": [], "summary": "none"}), (0, "empty result")),
    (env(response={"results": [], "summary": "x" * 40}), (0, "empty result")),  # 40 characters are not yet data
    (env(response=None), (0, "empty result")),  # a null response
    # the error fields: each name, and what does not count as an error in them
    (env(response={"errors": ["quota"], "data": [1]}), (0, "error field: ['quota']")),
    (env(response={"err": "bad key", "data": [1]}), (0, "error field: bad key")),
    (env(response={"error": "", "data": [1]}), (1, "")),
    (env(response={"error": False, "data": [1]}), (1, "")),
    (env(response={"error": 0, "data": [1]}), (1, "")),
    (env(response={"error": True, "data": [1]}), (0, "error field: True")),
    (env(response={"error": 1, "data": [1]}), (0, "error field: 1")),
    (env(response={"error": "e" * 70}), (0, "error field: " + "e" * 60)),  # reasons are cut at 60 characters
    # a status that says so in words, in any case
    (env(response={"status": "Error", "data": [1]}), (0, "status error")),
    (env(response={"status": "fail", "data": [1]}), (0, "status error")),
    (env(response={"status": "FAILED", "data": [1]}), (0, "status error")),
    (env(response={"status": "failure", "data": [1]}), (0, "status error")),
    (env(response={"status": "ok", "data": [1]}), (1, "")),
    # a message beside only status / success keys is the whole answer; 300 characters still count as a message
    (env(response={"message": "Invalid API key", "success": True}), (0, "error message: Invalid API key")),
    (env(response={"message": "Invalid " + "k" * 292, "code": 200}), (0, "error message: Invalid " + "k" * 52)),
    (env(response={"message": "Invalid " + "k" * 293, "code": 200}), (1, "")),
    (env(response={"status": 400, "message": "Bad"}), (0, "status 400")),  # the range starts at 400
    (env(response={"status": 599, "data": [1]}), (0, "status 599")),
    (env(response={"status": 600, "data": [1]}), (1, "")),
    (env(response={"status": 399, "data": [1]}), (1, "")),
    (env(response={"code": "404", "data": [1]}), (0, "status 404")),  # a status given as text
    (env(response={"error": "None", "data": [1]}), (1, "")),  # an error field that says there is none
    (env(response={"error": "null", "data": [1]}), (1, "")),
    (env(response={"error": "quota", "data": [1]}), (0, "error field: quota")),
    (env(response={"message": "Missing optional field 'year'", "results": [{"id": 1}]}), (1, "")),  # beside data
    (env(response={"message": "Missing required field 'year'"}), (0, "error message: Missing required field 'year'")),
    (env(response={"result": "Unable to resolve the host"}), (0, "error message: Unable to resolve the host")),
    (env(response={"result": "Resolved"}), (1, "")),
    (env(response="Found " + "x" * 300 + " without error"), (1, "")),  # a long text is data, words or not
    (env(response="Request failed"), (0, "error message: Request failed")),
    # one key alone: a 4xx / 5xx key is an error whatever its text says; otherwise its text must read as a short error
    (env(response={"404": "Page moved"}), (0, "error message: Page moved")),
    (env(response={"200": "Page moved"}), (1, "")),
    (env(response={"note": "Invalid " + "k" * 292}), (0, "error message: Invalid " + "k" * 52)),  # 300 characters
    (env(response={"note": "Invalid " + "k" * 293}), (1, "")),  # 301: data
    # every reason is cut at 60 characters; a plain text of 300 characters is still a message; an error page's title
    # counts within the first 2,000 characters only
    (env(response={"note": "Invalid " + "k" * 70}), (0, "error message: Invalid " + "k" * 52)),
    (env(response="Request failed " + "z" * 70), (0, "error message: Request failed " + "z" * 45)),
    (env(error="Timeout " + "t" * 70), (0, "error: Timeout " + "t" * 52)),
    (env(response="Request failed " + "z" * 285), (0, "error message: Request failed " + "z" * 45)),
    (env(response="x" * 1990 + "<title>404</title>"), (0, "error page")),
    (env(response="x" * 1991 + "<title>404</title>"), (1, "")),
    ("", (0, "empty result")), (None, (0, "empty result")),  # no observation at all
    (env(response="<html><body>" + "x" * 300 + "</body><title>404</title></html>"), (0, "error page")),
])
def test_succ_calling_rule(observation, expected):
    assert succ_calling("f_for_t", True, observation) == expected


@pytest.mark.parametrize("text, expected", [
    (None, ("", None, False)),
    ('{"error": "x", "response": "y"}', ("x", "y", True)),
    ('{"response": {"a": 1}}', ("", {"a": 1}, True)),  # either key makes an envelope
    ('{"error": "boom"}', ("boom", None, True)),
    ('{"data": 1}', ("", '{"data": 1}', False)),  # JSON, but not an envelope: the text as it is
    ("plain text", ("", "plain text", False)),
    # cut short (max_observation_length), so no longer JSON: the error unescaped, the response read leniently
    ('{"error": "a\\"b", "response": [1, 2', ('a"b', "[1, 2", True)),
    ('{"error": "bad \\q", "response": 1', ("bad \\q", "1", True)),  # an escape JSON refuses: kept as written
    # a Python-literal response is not JSON either: the envelope's closing brace goes, the response's own stay
    ('{"error": "", "response": {\'a\': {\'b\': 1}}}', ("", {"a": {"b": 1}}, True)),
    ('{"error": "", "response": "done"}', ("", "done", True)),
    ('{"error": "Rate limit exceeded and the message goes on', ("Rate limit exceeded and the message goes on", None,
                                                                True)),  # cut inside the error
])
def test_read_envelope(text, expected):
    """The tool server's envelope as replay, the annotators and the environments read it (`ok`: an envelope at all)."""
    assert read_envelope(text) == expected


def test_succ_calling_parse_failures_and_finish():
    assert succ_calling("f", False, env(response={"a": 1})) == (0, "parse failure")
    assert succ_calling("f", True, "No such function name: f", env_status="no_such_function") == (0, "unknown API")
    assert succ_calling("Finish", True, "") == (None, "finish")


def test_succ_calling_agrees_with_gpt4_labels(external):
    """The 5 GPT-4-annotated trajectories (3 runs each): our rule vs the judges' majority on every step."""
    data = json.loads((external / "steptool/reward_annotation/qwen2_G123_example_5.json").read_text())
    agree = total = vote_agree = votes = 0
    for rec in data.values():
        steps = parse_answer_steps(rec["answer_steps"])
        runs = rec["process_reward"].values()
        for i, st in enumerate(steps):
            labels = [r["succeed_tool_calling"][i] for r in runs]
            ours, _ = succ_calling(st.name, True, st.response)
            agree += ours == int(sum(labels) * 2 > len(labels))
            total += 1
            vote_agree += sum(ours == x for x in labels)
            votes += len(labels)
    # Measured: 10 of 11 steps; the one disagreement is a simulated response without data that GPT-4
    # itself labels 0, 1, 0.
    assert (agree, total) == (10, 11)
    assert (vote_agree, votes) == (31, 33)


def test_succ_calling_over_real_pass_rate_results(external):
    counts = {0: 0, 1: 0, None: 0}
    for path in sorted((external / "steptool/pass_rate_results").glob("*/*.json")):
        for rec in json.loads(path.read_text()).values():
            for st in parse_answer_steps(rec["answer_steps"], str(path)):
                sc, reason = succ_calling(st.name, True, st.response)
                counts[sc] += 1
                if "Tool input parse error" in st.response[:60] or st.response.startswith('{"error": "No such function'):
                    assert sc == 0, st.response[:100]
    calls = counts[0] + counts[1]
    assert calls > 15000 and counts[None] > 5000
    assert 0.7 < counts[1] / calls < 0.85  # measured 0.79: real agents fail about one call in five


def test_oracle_contributions_by_hand(world, splits, tokenizer):
    tasks = splits["train"][:10]
    trajs, steps = play_scripted(world, tasks, tokenizer)
    by = group_steps(steps)
    labels = {t["traj_id"]: oracle_label(t, by[t["traj_id"]], task) for t, task in zip(trajs, tasks)}
    for t, task in zip(trajs, tasks):
        lab, st = labels[t["traj_id"]], by[t["traj_id"]]
        for s, sl in zip(st, lab.steps):
            if s["is_finish"]:
                assert (sl.succ_calling, sl.contribution) == (None, None)
            elif s["api_name"] == "made_up_for_nothing":
                assert (sl.succ_calling, sl.contribution) == (0.0, 0.0)
            elif sl.succ_calling == 0:
                assert sl.contribution == 0.0  # a failed call never contributes
            else:
                assert sl.contribution == 5.0  # expert calls each bring an id or a fact the first time
        expected = "Solved" if t["finish_type"] == "give_answer" else "Unsolved"
        assert lab.is_solved == expected and lab.is_solved_score == {"Solved": 1.0, "Unsolved": 0.0}[expected]
    # A repeated successful call brings nothing new: Contribution 0 (it was 1, a reward of 0.6 at α = 1, and with
    # γ = 1 every repeat then added to the return of every earlier step, so padding out-earned answering; the
    # paper judges Contribution against the final answer: "minimal actions receive lower rewards")
    t, task = trajs[0], tasks[0]
    st = by[t["traj_id"]]
    first_ok = next(s for s in st if not s["is_finish"] and succ_calling(s["api_name"], s["parse_ok"], s["observation"])[0])
    repeated = st[:-1] + [dict(first_ok, step_idx=len(st) - 1)] + [dict(st[-1], step_idx=len(st))]
    lab = oracle_label(t, repeated, task)
    assert lab.steps[-2].contribution == 0.0 and lab.steps[-2].succ_calling == 1.0
    # progress: the share of the needed items seen so far, 1 once the plan ran, unchanged by the repeat
    assert lab.steps[-2].progress == lab.steps[-3].progress == lab.steps[-1].progress == 1.0
    assert [sl.progress for sl in lab.steps] == sorted(sl.progress for sl in lab.steps)


def test_heuristic_gives_a_repeat_nothing(world, splits, tokenizer):
    """The heuristic's LCS rule would credit a repeat as much as the call it repeats (same response): a repeat
    (same function, same arguments) gets Contribution 0."""
    tasks = splits["train"][:3]
    trajs, steps = play_scripted(world, tasks, tokenizer)
    by = group_steps(steps)
    t = next(t for t in trajs if t["finish_type"] == "give_answer")
    st = by[t["traj_id"]]
    base = heuristic_label(t, st, None, threshold=0.0)  # threshold 0: every successful call contributes
    ok = [i for i, (s, sl) in enumerate(zip(st, base.steps)) if sl.succ_calling == 1.0]
    assert ok and all(base.steps[i].contribution == 5.0 for i in ok)
    again = dict(st[ok[0]], step_idx=len(st) - 1)
    lab = heuristic_label(t, st[:-1] + [again, dict(st[-1], step_idx=len(st))], None, threshold=0.0)
    assert lab.steps[-2].succ_calling == 1.0 and lab.steps[-2].contribution == 0.0


def test_lcs_and_heuristic():
    rng = random.Random(0)

    def dp(a, b):
        m = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(len(a)):
            for j in range(len(b)):
                m[i + 1][j + 1] = m[i][j] + 1 if a[i] == b[j] else max(m[i][j + 1], m[i + 1][j])
        return m[-1][-1]

    for _ in range(300):
        a = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 25)))
        b = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 25)))
        assert lcs_length(a, b) == dp(a, b)
    assert lcs_length("ABCBDAB", "BDCABA") == 4  # the textbook example
    assert lcs_ratio("Lyon 42", "The hotel is in Lyon and has 42 rooms.") == 1.0
    traj = {"traj_id": "t", "final_answer": "The rating is 4.5 in Lyon", "finish_type": "give_answer"}
    steps = [{"api_name": "a", "parse_ok": True, "is_finish": False, "observation": env(response="rating 4.5, Lyon")},
             {"api_name": "b", "parse_ok": True, "is_finish": False, "observation": env(response="zzzz qqqq wwww")},
             {"api_name": "Finish", "parse_ok": True, "is_finish": True, "observation": ""}]
    lab = heuristic_label(traj, steps, None, threshold=0.5)
    assert [(s.succ_calling, s.contribution) for s in lab.steps] == [(1.0, 5.0), (1.0, 0.0), (None, None)]
    assert lab.is_solved == "Unsure"  # no gold: an answer nobody checked


def test_importer_reads_the_reference_annotations(external, tmp_path):
    trajs, rows = import_reference_annotations(external / "steptool/reward_annotation/qwen2_G123_example_5.json")
    assert len(trajs) == 5 and len(rows) == 16
    write_table(rows, tmp_path / "steps.parquet", ANNOTATED_STEPS)  # fits the schema
    by = {(r["task_id"], r["step_idx"]): r for r in rows}
    assert by[("32980", 2)]["contribution"] == pytest.approx(13 / 3)  # votes 5, 5, 3
    assert by[("56543", 1)]["succ_calling"] == pytest.approx(1 / 3)  # votes 0, 1, 0
    assert by[("56543", 2)]["is_solved_score"] == pytest.approx(1 / 3) and by[("56543", 2)]["is_solved"] == "Unsure"
    # r_t = (SC + Con/5) / 2 on these means gives the reference's training rewards (its PPO CSVs)
    r = {k: (v["succ_calling"] + v["contribution"] / 5) / 2 for k, v in by.items() if v["succ_calling"] is not None}
    assert round(r[("32980", 2)], 4) == 0.9333 and round(r[("32980", 3)], 4) == 0.8667
    assert round(r[("56543", 0)], 4) == 0.1333 and round(r[("56543", 1)], 4) == 0.4333


def test_importer_errors_name_the_record_and_field(tmp_path):
    bad = {"q1": {"query": "x", "answer_steps": ["Step 1: {'name': 'a', 'arguments': '{}', 'response': '{}'}"],
                  "final_step": "Final step: {'name': 'Finish', 'arguments': '{}', 'response': ''}",
                  "process_reward": {"0": {"succeed_tool_calling": [1, 1], "contributions": [5]}},
                  "is_solved": {"0": "AnswerStatus.Solved"}}}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(SchemaError, match=r"bad.json: record q1: field process_reward.0.succeed_tool_calling has 2 values for 1 steps"):
        import_reference_annotations(path)
    for field, value, says in (("process_reward", {}, "field process_reward must map each judge run"),
                               ("process_reward", "{'0': (", "field process_reward is neither JSON nor a Python literal"),
                               ("process_reward", {"0": {"succeed_tool_calling": ["x"], "contributions": [5]}},
                                "field process_reward.0.succeed_tool_calling holds 'x', not a number"),
                               ("is_solved", {}, "field is_solved must map each judge run")):
        path.write_text(json.dumps({"q1": {**bad["q1"], "process_reward": {"0": {"succeed_tool_calling": [1],
                                                                                "contributions": [5]}}, field: value}}))
        with pytest.raises(SchemaError, match=rf"bad.json: record q1: {says}"):
            import_reference_annotations(path)


def test_parse_answer_rejects_what_is_wrong():
    def body(args):
        return {"choices": [{"message": {"tool_calls": [{"function": {"name": "evaluate_process_reward",
                                                                       "arguments": json.dumps(args)}}]}}]}
    good = {"succeed_tool_calling": [1, 0], "contribution_to_final_answer": [5, 0], "final_answer_status": "Solved"}
    assert parse_answer(body(good), 2) == ([1, 0], [5.0, 0.0], "Solved")
    for bad, why in [(dict(good, succeed_tool_calling=[1]), "has 1 values for 2 steps"),
                     (dict(good, contribution_to_final_answer=[5, 6]), "0..5"),
                     (dict(good, succeed_tool_calling=[1, 2]), "0 or 1"),
                     (dict(good, final_answer_status="Maybe"), "Solved, Unsure or Unsolved")]:
        with pytest.raises(ValueError, match=why):
            parse_answer(body(bad), 2)
    with pytest.raises(ValueError, match="not JSON"):
        parse_answer({"choices": [{"message": {"tool_calls": [{"function": {"name": "evaluate_process_reward",
                                                                             "arguments": '{"succ'}}]}}]}, 2)
    assert status_of(2 / 3) == "Unsure" and status_of(0.8) == "Solved" and status_of(0.25) == "Unsolved"


@pytest.mark.parametrize("body, why", [
    ({"choices": [{"message": "text"}]}, "no choices\\[0\\].message object"),
    ({"choices": "x"}, "no choices\\[0\\].message object"),
    ([1, 2], "no choices\\[0\\].message object"),
    ({"choices": [{"message": {"tool_calls": {"function": {}}}}]}, "tool_calls is not a list of function calls"),
    ({"choices": [{"message": {"tool_calls": ["evaluate_process_reward"]}}]}, "tool_calls is not a list"),
    ({"choices": [{"message": {"tool_calls": [{"function": {"name": "evaluate_process_reward",
                                                             "arguments": {"succeed_tool_calling": [1]}}}]}}]},
     "arguments are not JSON text \\(a dict\\)"),
    ({"choices": [{"message": {"tool_calls": [{"function": {"name": "evaluate_process_reward", "arguments": json.dumps(
        {"succeed_tool_calling": [1], "contribution_to_final_answer": [3], "final_answer_status": "Garbage.Solved"})}}]}}]},
     "final_answer_status: the status must be Solved, Unsure or Unsolved, got 'Garbage.Solved'"),
])
def test_answers_of_any_shape_are_invalid_never_a_crash(body, why):
    """Before: a traceback (str has no .get, a dict of tool calls...), the bad answer already cached, so every
    rerun crashed the same way; "Garbage.Solved" was read as Solved."""
    from pipeline.annotate.llm_judge import InvalidAnswer, answer_status

    with pytest.raises(InvalidAnswer, match=why):
        parse_answer(body, 1)
    assert answer_status("AnswerStatus.Unsure") == "Unsure" and answer_status("Solved") == "Solved"


def test_odd_usage_costs_nothing_and_keeps_the_answer():
    from pipeline.annotate.pricing import usage_tokens

    assert usage_tokens({"usage": {"prompt_tokens": 120, "completion_tokens": 30}}) == (120, 30)
    for usage, expected in (({"prompt_tokens": -18000, "completion_tokens": 5}, (0, 5)),
                            ({"prompt_tokens": "12", "completion_tokens": None}, (0, 0)),
                            ({"prompt_tokens": True, "completion_tokens": 1.5}, (0, 0)), ("lots", (0, 0)), (None, (0, 0))):
        assert usage_tokens({"usage": usage}) == expected, usage


def test_only_valid_answers_are_cached_and_a_stale_invalid_one_is_asked_again(played, tmp_path, monkeypatch):
    """An invalid answer is retried and never cached; an invalid answer found in the cache (written by an older
    version, or a batch) is dropped and asked again, then the valid one is kept."""
    from pipeline.annotate.cache import request_key
    from pipeline.annotate.llm_judge import TOOL, OpenAIJudge

    trajs, steps, tasks = played
    monkeypatch.setenv("STEPTOOL_TEST_JUDGE_KEY", "k")
    server = JudgeServer()
    try:
        cfg = _judge_cfg(server.url, n_votes=1)
        cache = JudgeCache(tmp_path / "judge.sqlite")
        judge = OpenAIJudge(cfg, cache)
        item = (trajs[0], group_steps(steps)[trajs[0]["traj_id"]], tasks[trajs[0]["task_id"]].query)
        request = judge.first_requests([item])[0]
        key = request_key(cfg.model, judge.prompt_version, request, endpoint=cfg.base_url)
        cache.put(key, cfg.model, judge.prompt_version, request, {"choices": [{"message": "garbage"}]})
        [label] = judge.annotate([item], progress=False)
        assert not label.failed and judge.stats["stale_cache_answers"] == 1 and judge.stats["judge_calls"] == 1
        assert parse_answer(cache.get(key), sum(1 for s in item[1] if not s["is_finish"]))  # the valid one is kept
        again = OpenAIJudge(cfg, cache)
        again.annotate([item], progress=False)
        assert again.stats["judge_calls"] == 0 and again.stats["cache_hits"] == 1
        assert request["tools"] == [TOOL]
    finally:
        server.close()


def _without_hits(rows):
    """Rows without `cache_hits`, which says how a run got its answers, not what they were."""
    return [{k: v for k, v in r.items() if k != "cache_hits"} for r in rows]


MIN_FORM = {"rewards": {"shaping": "min_form"}}  # the default shaping, 'progress', needs the oracle's facts


def _judge_cfg(url, **kw) -> AnnotateConfig:
    base = dict(annotator="openai", base_url=url, model="judge-test", api_key_env="STEPTOOL_TEST_JUDGE_KEY",
                n_votes=3, temperature=0.7, concurrency=16, timeout_s=0.5, max_retries=8, max_invalid_retries=2)
    base.update(kw)
    return AnnotateConfig(**base)


@pytest.fixture(scope="module")
def played(world, splits, tokenizer):
    tasks = splits["train"][:24]
    trajs, steps = play_scripted(world, tasks, tokenizer)
    return trajs, steps, {t.task_id: t for t in tasks}


@pytest.mark.long
def test_openai_judge_under_faults_then_a_rerun_pays_only_for_invalid_answers(played, tmp_path, monkeypatch, caplog):
    trajs, steps, tasks = played
    secret = "sk-test-SECRET-5f3a"
    monkeypatch.setenv("STEPTOOL_TEST_JUDGE_KEY", secret)
    server = JudgeServer(Faults(p_429=0.10, p_500=0.10, p_malformed=0.05, p_timeout=0.02, timeout_sleep_s=1.0,
                                seed=4))
    try:
        cfg = _judge_cfg(server.url)
        cache = tmp_path / "judge.sqlite"
        labels, stats = label_trajectories(trajs, steps, tasks, cfg, str(cache), progress=False)
        assert len(labels) == len(trajs)
        for lab in labels:  # every trajectory ends annotated, or failed with its reason
            assert (lab.failed == "") == (len(lab.steps) == len(group_steps(steps)[lab.traj_id]))
        assert stats["transport_retries"] > 0 and stats["invalid_answers"] > 0  # the faults did happen
        assert sum(1 for lab in labels if lab.failed) <= 1
        rows = annotated_rows(group_steps(steps), labels)
        out = tmp_path / "annotated.parquet"
        write_table(rows, out, ANNOTATED_STEPS)
        assert server.auth_digests and all(h == auth_digest(f"Bearer {secret}") for h in server.auth_digests)
        labels2, stats2 = label_trajectories(trajs, steps, tasks, cfg, str(cache), progress=False)
        # the rerun pays only for the invalid answers, which are never cached (the scripted judge gives a request
        # the same answer every time, so they are invalid again and the same retries follow)
        assert stats2["judge_calls"] == stats["invalid_answers"] == stats2["invalid_answers"]
        assert _without_hits(annotated_rows(group_steps(steps), labels2)) == _without_hits(rows)
        assert all(r["cache_hits"] >= 3 for r in annotated_rows(group_steps(steps), labels2) if r["votes"])
        summary = summarize(labels, rows, stats)
        assert summary["annotated"] + summary["failed"] == len(trajs)
        for f in (cache, out, cache.with_name("judge.sqlite-wal")):
            if f.exists():
                assert secret.encode() not in f.read_bytes(), f
        assert secret not in caplog.text
    finally:
        server.close()


@pytest.mark.long
def test_a_failed_vote_labels_from_the_others_and_is_counted_by_length(played, tmp_path, monkeypatch):
    """Vote 1 always comes back with the wrong number of values, and trajectories with 3+ calls get no valid
    vote at all. With min_votes 1 the others are labelled from votes 0 and 2 (listed as partial), the long
    ones fail, and the summary counts both by length; with min_votes 3 every judged trajectory fails."""
    from pipeline.annotate.run import failure_records
    from pipeline.annotate.scripted_judge_server import default_answer

    trajs, steps, tasks = played
    by = group_steps(steps)

    def answer(req):
        args = default_answer(req)
        wrong = args["contribution_to_final_answer"] + [5]
        if req["seed"] // 1000 == 1 or len(wrong) > 3:
            return dict(args, contribution_to_final_answer=wrong)
        return args

    monkeypatch.setenv("STEPTOOL_TEST_JUDGE_KEY", "k")
    server = JudgeServer(answer=answer)
    try:
        labels, stats = label_trajectories(trajs, steps, tasks, _judge_cfg(server.url), str(tmp_path / "c.sqlite"),
                                           progress=False)
        summary = summarize(labels, annotated_rows(by, labels), stats, by)
        labelled = [lab for lab in labels if not lab.failed]
        partial = [lab for lab in labelled if lab.vote_failures]
        assert partial and all(lab.votes == 2 and "vote 1:" in lab.vote_failures for lab in partial)
        assert summary["partial_votes"] == len(partial) and summary["failed"] == len(labels) - len(labelled)
        failed = [lab for lab in labels if lab.failed]
        assert failed and summary["failed_by_steps"] == {
            str(n): sum(1 for lab in failed if len(by[lab.traj_id]) == n)
            for n in sorted({len(by[lab.traj_id]) for lab in failed})}
        assert sum(summary["annotated_by_steps"].values()) == len(labelled)
        records = failure_records(labels, by)
        assert {r["traj_id"] for r in records} == {lab.traj_id for lab in failed + partial}
        assert all(r["steps"] == len(by[r["traj_id"]]) for r in records)
        strict, _ = label_trajectories(trajs, steps, tasks, _judge_cfg(server.url, min_votes=3),
                                       str(tmp_path / "c.sqlite"), progress=False)
        judged = [lab for lab in strict if lab.votes]  # a trajectory with nothing to judge needs no vote
        assert judged and all(lab.failed for lab in judged)
    finally:
        server.close()


def _write_tasks(root, tasks):
    """The task files a stage reads: every split, the played tasks in train."""
    from pipeline import layout
    from pipeline.schema import TASKS
    from pipeline.task import SPLITS

    for split in SPLITS:
        write_table([t.to_row() for t in tasks.values()] if split == "train" else [], root / layout.tasks_file(split),
                    TASKS)


@pytest.mark.long
def test_annotate_fails_above_max_failed_fraction_with_the_reasons_counted(played, tmp_path, monkeypatch):
    """Trajectories with 3+ calls always get answers of the wrong length: with 0 allowed the stage fails and
    counts them; with a fraction above their share it passes and writes the others."""
    from pipeline import layout
    from pipeline.annotate.scripted_judge_server import default_answer
    from pipeline.config import parse_params
    from pipeline.errors import SteptoolError
    from pipeline.schema import STEPS, TRAJECTORIES
    from stages import annotate

    trajs, steps, tasks = played

    def answer(req):
        args = default_answer(req)
        n = len(args["contribution_to_final_answer"])
        return dict(args, contribution_to_final_answer=args["contribution_to_final_answer"] + [5]) if n >= 3 else args

    monkeypatch.setenv("STEPTOOL_TEST_JUDGE_KEY", "k")
    server = JudgeServer(answer=answer)
    root = tmp_path / "root"
    write_table(trajs, root / layout.table(layout.trajectories_dir(0), "trajectories"), TRAJECTORIES)
    write_table(steps, root / layout.table(layout.trajectories_dir(0), "steps"), STEPS)
    _write_tasks(root, tasks)
    cfg = {"annotator": "openai", "base_url": server.url, "api_key_env": "STEPTOOL_TEST_JUDGE_KEY", "n_votes": 2,
           "max_invalid_retries": 0, "cache_path": str(tmp_path / "judge.sqlite")}
    try:
        with pytest.raises(SteptoolError, match=r"(\d+) of 24 trajectories not labelled .* x invalid answers") as e:
            annotate.run(parse_params({"annotate": {**cfg, "max_failed_fraction": 0.0}, **MIN_FORM}), root)
        n_failed = int(str(e.value).split(" of 24")[0].rsplit(" ", 1)[-1])
        assert 0 < n_failed < 24
        assert len(json.loads((root / layout.annotated_dir(0) / "failed.json").read_text())) == n_failed
        msg = annotate.run(parse_params({"annotate": {**cfg, "max_failed_fraction": 0.9}, **MIN_FORM}), root)
        assert f"{24 - n_failed} trajectories" in msg and f"{n_failed} failed" in msg
    finally:
        server.close()


KILL_SCRIPT = """
import json, sys
from pipeline.annotate.run import label_trajectories
from pipeline.config import AnnotateConfig
from pipeline.task import Task
data = json.load(open(sys.argv[1]))
tasks = {t["task_id"]: Task.from_row(t) for t in data["tasks"]}
cfg = AnnotateConfig(**data["cfg"])
label_trajectories(data["trajs"], data["steps"], tasks, cfg, sys.argv[2], progress=False)
"""


@pytest.mark.slow
def test_kill_mid_run_then_rerun_repeats_no_call(played, tmp_path):
    trajs, steps, tasks = played
    server = JudgeServer(Faults(latency_s=0.15, p_malformed=0.05, p_wrong_length=0.05, seed=5))
    try:
        cfg = _judge_cfg(server.url, concurrency=4, timeout_s=5.0)
        payload = tmp_path / "in.json"
        payload.write_text(json.dumps({"tasks": [t.to_row() for t in tasks.values()], "trajs": trajs, "steps": steps,
                                       "cfg": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}}, default=str))
        script = tmp_path / "run.py"
        script.write_text(KILL_SCRIPT)
        cache_path = tmp_path / "killed.sqlite"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.Popen([sys.executable, str(script), str(payload), str(cache_path)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if cache_path.exists() and len(JudgeCache(cache_path)) >= 20:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        cache = JudgeCache(cache_path)
        before = {k for (k,) in cache._db.execute("SELECT key FROM calls")}
        cache.close()
        assert 20 <= len(before) < len(trajs) * 3  # killed in the middle
        # the rerun: record every key it pays for
        put_keys = []
        original_put = JudgeCache.put

        def spy(self, key, *a, **kw):
            put_keys.append(key)
            return original_put(self, key, *a, **kw)

        JudgeCache.put = spy
        try:
            labels, stats = label_trajectories(trajs, steps, tasks, cfg, str(cache_path), progress=False)
        finally:
            JudgeCache.put = original_put
        assert put_keys and not (set(put_keys) & before)  # no answered call was made again
        assert stats["cache_hits"] >= len(before)
        # same output as a run that was never interrupted
        clean, _ = label_trajectories(trajs, steps, tasks, cfg, str(tmp_path / "clean.sqlite"), progress=False)
        by = group_steps(steps)
        assert _without_hits(annotated_rows(by, labels)) == _without_hits(annotated_rows(by, clean))
    finally:
        server.close()


# ---- nothing bad gets through (the key, the cache, silent failure) ----------------------------------

def test_redact_removes_the_key_and_bearer_tokens():
    from pipeline.annotate.llm_judge import redact

    echoed = "AuthenticationError: Error code: 401 - {'echo': 'Bearer sk-live-abc123456', 'key': 'sk-live-abc123456'}"
    out = redact(echoed, "sk-live-abc123456")
    assert "sk-live" not in out and out.count("[redacted]") == 2
    assert redact("Authorization: Bearer tok_98765, then") == "Authorization: Bearer [redacted], then"
    assert redact("a plain reason") == "a plain reason"


def test_the_cache_never_answers_for_another_endpoint(played, tmp_path, monkeypatch):
    """Two endpoints serving a model of the same name: the second is asked, not answered from the first's cache."""
    trajs, steps, tasks = played
    monkeypatch.setenv("STEPTOOL_TEST_JUDGE_KEY", "k")
    a, b = JudgeServer(), JudgeServer()
    try:
        cache = str(tmp_path / "judge.sqlite")
        _, stats_a = label_trajectories(trajs[:3], steps, tasks, _judge_cfg(a.url, n_votes=1), cache, progress=False)
        _, again = label_trajectories(trajs[:3], steps, tasks, _judge_cfg(a.url, n_votes=1), cache, progress=False)
        _, stats_b = label_trajectories(trajs[:3], steps, tasks, _judge_cfg(b.url, n_votes=1), cache, progress=False)
        assert stats_a["judge_calls"] == 3 and again["judge_calls"] == 0
        assert stats_b["judge_calls"] == 3 and stats_b["cache_hits"] == 0 and b.http_calls >= 3
    finally:
        a.close()
        b.close()


def test_annotate_fails_loudly_when_the_judge_labels_nothing(played, tmp_path, monkeypatch):
    """An endpoint that never answers: the stage exits with one error line naming failed.json, which holds
    every reason, none with the key."""
    import socket

    from pipeline import layout
    from pipeline.config import parse_params
    from pipeline.errors import SteptoolError
    from pipeline.schema import STEPS, TRAJECTORIES
    from stages import annotate

    trajs, steps, tasks = played
    secret = "sk-never-in-a-file-77"
    monkeypatch.setenv("STEPTOOL_TEST_JUDGE_KEY", secret)
    root = tmp_path
    write_table(trajs[:2], root / layout.table(layout.trajectories_dir(0), "trajectories"), TRAJECTORIES)
    write_table([s for s in steps if s["traj_id"] in {t["traj_id"] for t in trajs[:2]}],
                root / layout.table(layout.trajectories_dir(0), "steps"), STEPS)
    _write_tasks(root, tasks)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    params = parse_params({"annotate": {"annotator": "openai", "base_url": f"http://127.0.0.1:{port}/v1",
                                        "api_key_env": "STEPTOOL_TEST_JUDGE_KEY", "n_votes": 1, "max_retries": 1,
                                        "timeout_s": 1.0, "cache_path": str(tmp_path / "judge.sqlite")},
                           **MIN_FORM})
    with pytest.raises(SteptoolError, match=r"2 of 2 trajectories not labelled .*2 x APIConnectionError"):
        annotate.run(params, root)
    failed = (root / layout.annotated_dir(0) / "failed.json").read_text()
    assert "APIConnectionError" in failed and secret not in failed


def test_an_endpoint_that_echoes_the_key_in_its_401_puts_it_in_no_file(played, tmp_path, monkeypatch):
    """The canary: a 401 whose body repeats the Authorization header. The run fails with one line, and
    neither failed.json, the metrics, the cache nor the annotated table holds the key."""
    import json as _json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from pipeline import layout
    from pipeline.config import parse_params
    from pipeline.errors import SteptoolError
    from pipeline.schema import STEPS, TRAJECTORIES
    from stages import annotate

    class Echo(BaseHTTPRequestHandler):
        calls = 0

        def do_POST(self):
            Echo.calls += 1
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = _json.dumps({"error": {"message": f"invalid key in {self.headers.get('Authorization')}",
                                          "type": "invalid_request_error"}}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    trajs, steps, tasks = played
    canary = "sk-canary-0123456789abcdef"
    monkeypatch.setenv("STEPTOOL_TEST_JUDGE_KEY", canary)
    root = tmp_path / "root"
    keep = {t["traj_id"] for t in trajs[:2]}
    write_table(trajs[:2], root / layout.table(layout.trajectories_dir(0), "trajectories"), TRAJECTORIES)
    write_table([s for s in steps if s["traj_id"] in keep], root / layout.table(layout.trajectories_dir(0), "steps"), STEPS)
    _write_tasks(root, tasks)
    params = parse_params({"annotate": {"annotator": "openai", "base_url": f"http://127.0.0.1:{server.server_port}/v1",
                                        "api_key_env": "STEPTOOL_TEST_JUDGE_KEY", "n_votes": 1, "max_retries": 1,
                                        "concurrency": 1, "cache_path": str(tmp_path / "judge.sqlite")},
                           **MIN_FORM})
    try:
        with pytest.raises(SteptoolError) as e:
            annotate.run(params, root)
    finally:
        server.shutdown()
    assert canary not in str(e.value) and "AuthenticationError" in str(e.value)
    assert "refused the key in $STEPTOOL_TEST_JUDGE_KEY (set)" in str(e.value)
    assert Echo.calls == 1  # one request at a time: the first refusal stops the run, no call for the second
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert canary.encode() not in f.read_bytes(), f


def test_retry_after_is_read_from_seconds_milliseconds_and_dates():
    import email.utils
    from types import SimpleNamespace

    from pipeline.annotate.llm_judge import MAX_RETRY_AFTER_S, retry_after_s

    def err(**headers):
        return SimpleNamespace(response=SimpleNamespace(headers=headers))

    assert retry_after_s(err(**{"retry-after": "2"})) == 2.0
    assert retry_after_s(err(**{"retry-after-ms": "1500", "retry-after": "9"})) == 1.5  # the finer one wins
    date = email.utils.formatdate(1_000_030.0, usegmt=True)
    assert retry_after_s(err(**{"retry-after": date}), now=1_000_000.0) == pytest.approx(30.0)
    assert retry_after_s(err(**{"retry-after": "86400"})) == MAX_RETRY_AFTER_S
    for bad in ("soon", "-3", "nan", ""):
        assert retry_after_s(err(**{"retry-after": bad})) == 0.0
    assert retry_after_s(err()) == 0.0 and retry_after_s(None) == 0.0 and retry_after_s(ValueError("x")) == 0.0


def test_a_429_with_retry_after_is_waited_out(played, tmp_path, monkeypatch):
    """The loopback judge answers the first call 429 with `Retry-After: 1`: the client's retry comes at least a
    second later (the backoff alone would retry after ~0.1 s, as it does without the header)."""
    trajs, steps, tasks = played
    monkeypatch.setenv("STEPTOOL_TEST_JUDGE_KEY", "k")
    gaps = {}
    for retry_after in ("1", None):
        server = JudgeServer(Faults(first_429=1, retry_after=retry_after))
        try:
            cfg = _judge_cfg(server.url, n_votes=1, concurrency=1)
            labels, stats = label_trajectories(trajs[:1], steps, tasks, cfg, str(tmp_path / f"c{retry_after}.sqlite"),
                                               progress=False)
            assert not labels[0].failed and stats["transport_retries"] == 1
            gaps[retry_after] = server.call_times[1] - server.call_times[0]
        finally:
            server.close()
    assert gaps["1"] >= 1.0 and gaps[None] < 0.6, gaps


def test_the_estimate_is_logged_and_a_run_over_max_cost_usd_calls_nothing(played, tmp_path, monkeypatch, caplog):
    """Before any call the judge counts the calls the cache does not hold and prices them; above the cap it
    stops with nothing called. The estimate's call count is exact when every answer is valid, its cost is
    tokens x prices, and a rerun whose answers are all cached costs nothing (so the cap does not bite)."""
    import logging

    from pipeline.annotate.llm_judge import BudgetExceeded

    trajs, steps, tasks = played
    monkeypatch.setenv("STEPTOOL_TEST_JUDGE_KEY", "k")
    caplog.set_level(logging.INFO, logger="steptool.annotate")
    server = JudgeServer()
    cache = str(tmp_path / "judge.sqlite")
    prices = dict(price_input_usd_per_mtok=1.0, price_output_usd_per_mtok=2.0, completion_tokens_per_call=100)
    try:
        with pytest.raises(BudgetExceeded, match=r"\$0\.0001 per M|nothing was called") as err:
            label_trajectories(trajs[:6], steps, tasks, _judge_cfg(server.url, max_cost_usd=1e-6, **prices), cache,
                               progress=False)
        assert server.http_calls == 0 and "to pay" in str(err.value)
        assert "to pay" in caplog.text
        labels, stats = label_trajectories(trajs[:6], steps, tasks, _judge_cfg(server.url, max_cost_usd=0, **prices),
                                           cache, progress=False)
        answered = [t for t in trajs[:6] if t.get("finish_type") == "give_answer"
                    or any(s["traj_id"] == t["traj_id"] and s["api_name"] and not s["is_finish"] for s in steps)]
        assert stats["planned_calls"] == stats["planned_uncached"] == stats["judge_calls"] == 3 * len(answered)
        assert stats["estimated_completion_tokens"] == 100 * stats["planned_uncached"]
        assert stats["estimated_cost_usd"] == pytest.approx(
            (stats["estimated_prompt_tokens"] * 1.0 + stats["estimated_completion_tokens"] * 2.0) / 1e6, abs=1e-4)
        # the loopback server reports usage as characters / 4 of the raw body, as the estimate counts the prompt:
        # the two agree within the request's envelope (model name, tool_choice, seed, temperature)
        assert stats["prompt_tokens"] == pytest.approx(stats["estimated_prompt_tokens"], rel=0.1)
        assert stats["cost_usd"] == pytest.approx((stats["prompt_tokens"] + 2 * stats["completion_tokens"]) / 1e6)
        calls = server.http_calls
        _, again = label_trajectories(trajs[:6], steps, tasks, _judge_cfg(server.url, max_cost_usd=1e-6, **prices),
                                      cache, progress=False)
        assert again["planned_uncached"] == 0 and again["estimated_cost_usd"] == 0 and server.http_calls == calls
    finally:
        server.close()


def test_tokens_per_minute_spreads_the_calls(played, tmp_path, monkeypatch):
    """With `tokens_per_minute` a call of n estimated tokens holds the next start back by n * 60 / TPM seconds;
    without it the same calls start together."""
    from pipeline.annotate.cache import JudgeCache
    from pipeline.annotate.llm_judge import OpenAIJudge, estimated_tokens
    from pipeline.annotate.run import group_steps

    trajs, steps, tasks = played
    monkeypatch.setenv("STEPTOOL_TEST_JUDGE_KEY", "k")
    by = group_steps(steps)
    items = [(t, by[t["traj_id"]], tasks[t["task_id"]].query) for t in trajs[:4]]
    probe = OpenAIJudge(_judge_cfg("http://127.0.0.1:9/v1", n_votes=1), JudgeCache(tmp_path / "probe.sqlite"))
    sizes = [estimated_tokens(r) + 200 for r in probe.first_requests(items)]
    assert len(sizes) >= 3
    tpm = int(max(sizes) * 60 / 0.4)  # the largest call holds the next one back 0.4 s
    starts = {}
    for limit in (tpm, 0):
        server = JudgeServer()
        try:
            cfg = _judge_cfg(server.url, n_votes=1, concurrency=8, tokens_per_minute=limit)
            label_trajectories(trajs[:4], steps, tasks, cfg, str(tmp_path / f"tpm{limit}.sqlite"), progress=False)
            starts[limit] = sorted(server.call_times)
        finally:
            server.close()
    spread = starts[tpm][-1] - starts[tpm][0]
    floor = sum(sorted(s * 60 / tpm for s in sizes)[:len(sizes) - 1])  # every gap but the last call's
    assert spread >= 0.9 * floor and floor > 0.6, (spread, floor)
    assert starts[0][-1] - starts[0][0] < 0.3


@pytest.mark.long
def test_batch_mode_round_trips_through_the_batch_api_and_resumes_its_batch(played, tmp_path, monkeypatch):
    """annotate.mode: batch uploads the first attempts as JSONL, creates one batch, polls it until completed,
    caches its answers; the labels equal the online run's, and the online path is called only for retries of
    invalid answers. A run that stops while the batch is in progress leaves its id beside the cache: the rerun
    retrieves that batch instead of paying for a second."""
    from pipeline.annotate.batch import _state_file

    trajs, steps, tasks = played
    monkeypatch.setenv("STEPTOOL_TEST_JUDGE_KEY", "k")
    online = JudgeServer()
    try:
        ref, _ = label_trajectories(trajs[:6], steps, tasks, _judge_cfg(online.url, max_cost_usd=0),
                                    str(tmp_path / "online.sqlite"), progress=False)
    finally:
        online.close()
    server = JudgeServer(Faults(batch_polls=3))
    cache = tmp_path / "batch.sqlite"
    try:
        # the first run gives up while the batch is in progress (a wait of ~0 h), keeping its id
        cfg = _judge_cfg(server.url, max_cost_usd=0, mode="batch", batch_poll_s=0.05, batch_max_wait_h=1e-9)
        with pytest.raises(SteptoolError, match="still (validating|in_progress)"):
            label_trajectories(trajs[:6], steps, tasks, cfg, str(cache), progress=False)
        assert len(server.batches) == 1 and json.loads(_state_file(cache).read_text())
        cfg = _judge_cfg(server.url, max_cost_usd=0, mode="batch", batch_poll_s=0.05)
        labels, stats = label_trajectories(trajs[:6], steps, tasks, cfg, str(cache), progress=False)
        assert len(server.batches) == 1, "the rerun submitted a second batch"
        assert stats["batch_status"] == "completed" and stats["batch_answered"] == stats["batch_requests"] > 0
        assert stats["judge_calls"] == 0 and stats["cache_hits"] == stats["batch_requests"]
        assert json.loads(_state_file(cache).read_text()) == {}
        assert stats["batch_cost_usd"] == pytest.approx(
            0.5 * (stats["batch_prompt_tokens"] * 0.15 + stats["batch_completion_tokens"] * 0.60) / 1e6, rel=1e-6)
        rows = _without_hits(annotated_rows(group_steps(steps), labels))
        assert rows == _without_hits(annotated_rows(group_steps(steps), ref))
        # everything cached: a third run neither submits nor calls
        _, again = label_trajectories(trajs[:6], steps, tasks, cfg, str(cache), progress=False)
        assert again["batch_requests"] == 0 and len(server.batches) == 1 and again["judge_calls"] == 0
    finally:
        server.close()


@pytest.mark.long
def test_batches_stay_within_the_api_limits_and_a_rerun_submits_only_what_no_batch_holds(played, tmp_path,
                                                                                           monkeypatch):
    """With limits of 3 requests and a few kB per batch, the first attempts go as several batches, each recorded
    beside the cache as it is created; a run that stops while they run leaves them there, and the rerun
    retrieves those and submits none again; a request larger than a whole batch goes online."""
    from pipeline.annotate.batch import _state_file, parts

    assert parts([("a", b"xx"), ("b", b"xxx"), ("c", b"x" * 9), ("d", b"x"), ("e", b"xx")], 2, 6) == (
        [["a", "b"], ["d", "e"]], ["c"])  # by count, by size, one too big for any batch
    assert parts([("a", b"xxxx"), ("b", b"xxx")], 10, 6) == ([["a"], ["b"]], [])

    trajs, steps, tasks = played
    monkeypatch.setenv("STEPTOOL_TEST_JUDGE_KEY", "k")
    server = JudgeServer(Faults(batch_polls=2))
    cache = tmp_path / "batch.sqlite"
    try:
        cfg = _judge_cfg(server.url, max_cost_usd=0, mode="batch", batch_poll_s=0.02, batch_max_requests=3,
                         batch_max_wait_h=1e-9)
        with pytest.raises(SteptoolError, match="still (validating|in_progress)"):
            label_trajectories(trajs[:6], steps, tasks, cfg, str(cache), progress=False)
        state = json.loads(_state_file(cache).read_text())
        submitted = len(server.batches)
        assert submitted == len(state) >= 2 and all(0 < len(keys) <= 3 for keys in state.values())
        cfg = _judge_cfg(server.url, max_cost_usd=0, mode="batch", batch_poll_s=0.02, batch_max_requests=3)
        _, stats = label_trajectories(trajs[:6], steps, tasks, cfg, str(cache), progress=False)
        assert len(server.batches) == submitted, "the rerun submitted again what a batch held"
        assert stats["batches"] == submitted and stats["batch_answered"] == stats["batch_requests"] > 3
        assert stats["judge_calls"] == 0 and json.loads(_state_file(cache).read_text()) == {}
    finally:
        server.close()


def test_needed_items_skip_what_the_query_already_says_in_any_case():
    """A gold argument the query already contains, in whatever case ("PARIS" in "weather in Paris"), is not an item
    a call must reveal; an id the query does not contain is."""
    from pipeline.annotate.oracle import needed_items
    from pipeline.task import GoldCall, Task

    call = GoldCall("Weather", "meteo", "forecast", "forecast_for_meteo", json.dumps({"city": "PARIS", "id": "c-17"}))
    task = Task("t1", "train", "I1", "What is the weather in Paris?", [], gold_calls=[call], gold_facts=["12.5"])
    assert needed_items(task) == ["12.5", "c-17"]
    lower = Task("t2", "train", "I1", "what is the weather in paris?", [], gold_calls=[call], gold_facts=["12.5"])
    assert needed_items(lower) == ["12.5", "c-17"]
