"""The replay environment over real StableToolBench responses, the HTTP server serving it, the solvable-query
reader and the converted-answer exporter."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.envs import HttpToolEnv, ReplayEnv
from pipeline.formats.stabletoolbench import (converted_answer, load_solvable_queries, read_converted_answers,
                                              subset_level)
from pipeline.replay import ReplayCache, args_key, build_table, leave_one_method_out
from pipeline.task import Task
from pipeline.toolworld.server import serve_in_thread
from tests.conftest import REPO

DOC = {"category_name": "Data", "tool_name": "The Clique", "api_name": "Songkick concert", "api_description": "",
       "required_parameters": [{"name": "id_conc", "type": "STRING", "description": ""}], "optional_parameters": []}
NAME = "songkick_concert_for_the_clique"


def _rows():
    return [
        {"method": "a", "subset": "G1_tool", "query_id": "1", "function_name": NAME, "args_key": args_key('{"id_conc": "x"}'),
         "response": json.dumps({"error": "", "response": {"venue": "Hall"}})},
        {"method": "b", "subset": "G1_tool", "query_id": "2", "function_name": NAME, "args_key": args_key('{"id_conc":"y"}'),
         "response": '{"error": "", "response": "The API would typically return the concert' + "x" * 2000},  # cut: not JSON
    ]


def test_args_key_ignores_order_and_whitespace_but_not_types():
    assert args_key('{"b": 1, "a": "x"}') == args_key('{"a":"x","b":1}') == '{"a":"x","b":1}'
    assert args_key('{"a": 1}') != args_key('{"a": "1"}')
    assert args_key("  ") == "{}" and args_key("not json ") == "not json"


def test_replay_env_answers_recorded_calls_and_counts_misses():
    cache = ReplayCache.from_rows(_rows())
    env = ReplayEnv(cache)
    task = Task("1", "test", "I1", "q", [DOC])
    env.reset(task)
    r = env.step(NAME, '{ "id_conc" : "x" }')
    assert json.loads(r.observation) == {"error": "", "response": {"venue": "Hall"}} and r.status == "ok"
    r = env.step(NAME, '{"id_conc": "y"}')  # a recorded envelope cut mid-string is still read, then cut again
    assert r.observation.startswith('{"error": "", "response": "The API would typically') and r.observation.endswith("...")
    r = env.step(NAME, '{"id_conc": "z"}')
    assert json.loads(r.observation)["error"].startswith("Replay miss: no recorded response of " + NAME)
    assert (env.hits, env.misses) == (2, 1)
    strict = ReplayEnv(cache, per_query=True)
    strict.reset(task)
    strict.step(NAME, '{"id_conc": "y"}')  # recorded for query 2, not 1
    assert (strict.hits, strict.misses) == (0, 1)
    assert leave_one_method_out(_rows()) == {"a": {"calls": 1, "hits": 0, "hit_rate": 0.0},
                                             "b": {"calls": 1, "hits": 0, "hit_rate": 0.0}}


def test_the_collect_summary_counts_the_replay_misses_among_the_tool_calls():
    """Three calls (one hit, two misses) and a Finish, as the steps of a trajectory played through the replay env:
    the summary counts 3 tool calls and 2 misses, the Finish in neither."""
    import pyarrow as pa

    from pipeline.agent.play import summarize
    from pipeline.schema import STEPS, TRAJECTORIES

    env = ReplayEnv(ReplayCache.from_rows(_rows()))
    env.reset(Task("1", "test", "I1", "q", [DOC]))
    results = [env.step(NAME, args) for args in ('{"id_conc": "x"}', '{"id_conc": "z"}', "{}")]
    assert (env.hits, env.misses) == (1, 2)
    assert [r.status for r in results] == ["ok", "replay_miss", "replay_miss"]
    steps = [{"traj_id": "t", "step_idx": i, "parse_ok": True, "is_finish": False, "observation": r.observation,
              "env_status": r.status} for i, r in enumerate(results)]
    steps.append({"traj_id": "t", "step_idx": 3, "parse_ok": True, "is_finish": True, "observation": ""})
    trajs = [{"traj_id": "t", "task_id": "1", "finish_type": "give_answer", "final_answer": "Hall"}]
    table = lambda rows, schema: pa.Table.from_pylist(  # noqa: E731
        [{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)
    summary = summarize(table(trajs, TRAJECTORIES), table(steps, STEPS), {}, count_answers=True)
    assert summary["tool_calls"] == 3 and summary["replay_misses"] == 2 and summary["steps"] == 4
    assert summary["simulated_answers"] == 0
    assert summary["pass_rate"] is None  # no task with gold


def test_http_server_serves_the_replay_cache_like_the_replay_env():
    cache = ReplayCache.from_rows(_rows())
    server, url = serve_in_thread(cache)
    try:
        task = Task("1", "test", "I1", "q", [DOC])
        local, remote = ReplayEnv(cache), HttpToolEnv(url)
        local.reset(task)
        remote.reset(task)
        for args in ('{"id_conc": "x"}', '{"id_conc": "nope"}'):
            assert remote.step(NAME, args).observation == local.step(NAME, args).observation
    finally:
        server.shutdown()
        server.server_close()


def test_converted_answer_round_trip():
    task = Task("77", "test", "I1", "Where is the concert?", [DOC])
    traj = {"traj_id": "t", "task_id": "77", "strategy": "cot", "finish_type": "give_answer",
            "final_answer": "At the \"Hall\".", "sample_idx": 0}
    steps = [{"step_idx": 0, "api_name": NAME, "arguments_json": '{"id_conc": "x"}', "is_finish": False,
              "observation": '{"error": "", "response": {"venue": "Hall"}}'},
             {"step_idx": 1, "api_name": "Finish", "is_finish": True, "observation": "",
              "arguments_json": '{"return_type": "give_answer", "final_answer": "At the \\"Hall\\"."}'}]
    rec = converted_answer(task, traj, steps)
    assert rec["answer"]["method"] == "CoT@1" and rec["answer"]["total_steps"] == 4  # system, user, 2 tools
    assert [t["function"]["name"] for t in rec["available_tools"]] == [NAME, "Finish"]
    assert json.loads(rec["answer"]["final_answer"]) == {"return_type": "give_answer", "final_answer": 'At the "Hall".'}
    chain = rec["answer"]["answer_details"][0]
    assert chain["role"] == "system" and chain["next"][0]["role"] == "user"
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "answers.json"
        f.write_text(json.dumps({"77": rec}))
        back = read_converted_answers(f)["77"]
    assert back["final_answer"] == 'At the "Hall".' and back["finish_type"] == "give_answer"
    assert [s["name"] for s in back["steps"]] == [NAME, "Finish"]
    assert back["steps"][0]["response"] == steps[0]["observation"]
    gave_up = converted_answer(task, dict(traj, finish_type="give_up", final_answer=None), steps[:1])
    assert json.loads(gave_up["answer"]["final_answer"]) == {"return_type": "give_up_and_restart"}
    assert converted_answer(task, dict(traj, finish_type="none"), [])["answer"]["final_answer"] == ""


def test_subset_levels():
    assert subset_level("G1_category") == "I1" and subset_level("G3_instruction") == "I3"
    with pytest.raises(Exception, match="G1_instruction"):
        subset_level("test")


def test_reads_the_real_solvable_queries_and_converted_answers(external):
    root = external / "stabletoolbench/solvable_queries/test_instruction"
    sizes = {f.stem: len(load_solvable_queries(f)) for f in sorted(root.glob("*.json"))}
    assert sum(sizes.values()) == 765 and sizes["G3_instruction"] == 61
    task = load_solvable_queries(root / "G1_instruction.json", 1)[0]
    assert task.task_id == "588" and task.level == "I1" and not task.has_gold
    conv = read_converted_answers(external / "steptool/model_predictions_converted/qwen2_G123_example.json")
    assert len(conv) == 5 and all(v["steps"][-1]["name"] == "Finish" for v in conv.values())
    assert conv["44426"]["finish_type"] == "give_answer" and conv["44426"]["final_answer"].startswith("Here is the roster")


def test_replay_hit_rate_on_the_real_trajectories(external):
    """Every method's calls, answered by a table built from the other seven methods' calls."""
    table, stats = build_table(external / "steptool/pass_rate_results")
    assert stats["calls"] == 15088 and stats["finish_steps"] == 5223 and stats["files"] == 47
    lomo = leave_one_method_out(table.to_pylist())
    assert len(lomo) == 8
    assert all(v["hit_rate"] > 0.8 for v in lomo.values()), lomo  # measured: 0.85 (eto_cot) to 0.96 (archer_cot)
    total = sum(v["hits"] for v in lomo.values()) / sum(v["calls"] for v in lomo.values())
    assert 0.85 < total < 0.95


@pytest.mark.slow
def test_agent_plays_real_queries_through_replay_and_exports(external, tmp_path, tiny_model_dir):
    queries = external / "stabletoolbench/solvable_queries/test_instruction/G1_instruction.json"
    out = tmp_path / "play"
    params = tmp_path / "params.yaml"
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["agent"].update(max_steps=2, max_new_tokens=12)
    raw["env"]["replay_path"] = str(external / "steptool/pass_rate_results")
    params.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "steptool", "play", "--params", str(params), "--model",
                           str(tiny_model_dir), "--queries", str(queries), "--env", "replay", "--max-tasks", "2",
                           "--out", str(out)], capture_output=True, text=True, cwd=tmp_path,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["trajectories"] == 2 and "replay" in summary
    conv = read_converted_answers(summary["converted_answers"])
    assert set(conv) == {"588", str(load_solvable_queries(queries, 2)[1].task_id)}
    raw = json.loads((out / "converted_answers.json").read_text())
    assert raw["588"]["available_tools"][-1]["function"]["name"] == "Finish"

    # the same queries through the HTTP tool server serving the same recorded responses (the CLI in this process:
    # the subprocess above already checked the entry point, and a second one costs ~10 s of imports)
    from steptool.cli import main

    server, url = serve_in_thread(ReplayCache.load(external / "steptool/pass_rate_results"))
    try:
        raw_params = yaml.safe_load(params.read_text())
        raw_params["env"]["url"] = url
        params.write_text(yaml.safe_dump(raw_params))
        rc = main(["play", "--params", str(params), "--model", str(tiny_model_dir), "--queries", str(queries),
                   "--env", "http", "--max-tasks", "2", "--out", str(tmp_path / "http")])
    finally:
        server.shutdown()
        server.server_close()
    assert rc == 0
    over_http = read_converted_answers(tmp_path / "http/converted_answers.json")
    assert set(over_http) == set(conv)
    # greedy: the same first action (later ones read observations whose JSON text may be spelt differently)
    for qid in conv:
        assert over_http[qid]["steps"][0]["name"] == conv[qid]["steps"][0]["name"]


def test_stabletoolbench_s_own_cache_layout_is_indexed_too(tmp_path, capsys):
    """`tool_response_cache/<category>/<tool>_for_<category>/<api>.json` (StableToolBench's server cache: str() of
    the input -> the answer): `build-replay` reads it, inputs as Python literals (ast, never eval) keyed like the
    agent's JSON arguments, and the replay answers the agent's calls from it."""
    from steptool.cli import main

    cache = tmp_path / "tool_response_cache"
    api = cache / "Data" / "the_clique_for_Data" / "songkick_concert.json"
    api.parent.mkdir(parents=True)
    api.write_text(json.dumps({
        "{'id_conc': 'x'}": {"error": "", "response": {"venue": "Hall"}},
        "{'lang': 'en', 'id_conc': 'y'}": {"error": "", "response": "Arena"},
        "__import__('os').system('echo owned')": {"error": "", "response": "never run"},
    }))
    (cache / "Data" / "the_clique_for_Data" / "other_api.json").write_text(json.dumps({"{}": {"error": "", "response": 1}}))
    out = tmp_path / "replay.parquet"
    assert main(["build-replay", str(cache), "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["calls"] == 4 and report["files"] == 2 and report["inputs_not_literal"] == 1
    for source in (out, cache):  # the table, or the folder read directly
        env = ReplayEnv(ReplayCache.load(source))
        env.reset(Task("1", "test", "I1", "q", [DOC]))
        assert json.loads(env.step(NAME, '{"id_conc": "x"}').observation)["response"] == {"venue": "Hall"}
        hit = env.step(NAME, '{"id_conc":"y","lang":"en"}')
        assert hit.status == "ok" and json.loads(hit.observation)["response"] == "Arena"
        assert env.step(NAME, '{"id_conc": "z"}').status == "replay_miss"
