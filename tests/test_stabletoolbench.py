"""Real StableToolBench tasks in the pipeline (`tasks.source: stabletoolbench`, profiles/stabletoolbench.yaml): the
split of the solvable queries, the params that cannot work without gold, StableToolBench's criteria text in the
pass-rate judge, and the whole pipeline offline on a handful of real queries through the replay environment, as
`dvc repro` runs it."""
from __future__ import annotations

import json

import polars as pl
import pytest
import yaml

from pipeline import layout
from tests.conftest import REPO

QUERIES = "stabletoolbench/solvable_queries/test_instruction"


def test_queries_split_by_level_without_overlap_and_test_first(external):
    from pipeline.formats.stabletoolbench import SUBSETS, split_solvable_queries

    sizes = {"train": {"I1": 5, "I2": 3, "I3": 2}, "val": {"I1": 2, "I2": 1, "I3": 0}, "test": {"I1": 4, "I2": 2, "I3": 3}}
    splits = split_solvable_queries(external / QUERIES, list(SUBSETS), sizes, seed=7)
    ids = {s: [t.task_id for t in ts] for s, ts in splits.items()}
    assert {s: len(v) for s, v in ids.items()} == {"train": 10, "val": 3, "test": 9}
    assert not (set(ids["train"]) & set(ids["test"]) or set(ids["train"]) & set(ids["val"]) or set(ids["val"]) & set(ids["test"]))
    for split, tasks in splits.items():
        assert all(t.split == split and not t.has_gold and t.source.startswith("stabletoolbench:G") for t in tasks)
        for level in ("I1", "I2", "I3"):
            assert sum(t.level == level for t in tasks) == sizes[split][level]
    # I3 comes from G3_instruction only; the same seed gives the same split, a larger train leaves test alone
    g3 = {str(r["query_id"]) for r in json.loads((external / QUERIES / "G3_instruction.json").read_text())}
    assert {t.task_id for t in splits["test"] if t.level == "I3"} <= g3
    again = split_solvable_queries(external / QUERIES, list(SUBSETS), sizes, seed=7)
    assert {s: [t.task_id for t in ts] for s, ts in again.items()} == ids
    more = split_solvable_queries(external / QUERIES, list(SUBSETS), dict(sizes, train={"I1": 50, "I2": 3, "I3": 2}), 7)
    assert [t.task_id for t in more["test"]] == ids["test"]
    assert [t.task_id for t in split_solvable_queries(external / QUERIES, list(SUBSETS), sizes, 8)["test"]] != ids["test"]


def test_a_level_asked_for_more_queries_than_its_subsets_hold_is_refused(external, tmp_path):
    from pipeline.errors import SchemaError
    from pipeline.formats.stabletoolbench import split_solvable_queries

    sizes = {"train": {"I3": 40}, "val": {"I3": 0}, "test": {"I3": 25}}
    with pytest.raises(SchemaError, match=r"I3 asks for 25 test \+ 40 train = 65 StableToolBench queries; "
                                          r"G3_instruction hold 61"):
        split_solvable_queries(external / QUERIES, ["G3_instruction"], sizes, 7)
    with pytest.raises(SchemaError, match="no subset of tasks.stabletoolbench_subsets is of this level"):
        split_solvable_queries(external / QUERIES, ["G1_tool"], {"train": {"I1": 1}, "test": {"I2": 1}}, 7)
    with pytest.raises(SchemaError, match=r"G1_tools\.json: no such file"):
        split_solvable_queries(external / QUERIES, ["G1_tools"], sizes, 7)
    with pytest.raises(SchemaError, match="no such folder"):
        split_solvable_queries(tmp_path / "nowhere", ["G1_tool"], sizes, 7)


@pytest.mark.parametrize("override, message", [
    ({"env": {"kind": "toolworld"}}, "needs env.kind http or replay"),
    ({"annotate": {"annotator": "oracle"}}, "needs annotate.annotator heuristic or openai"),
    ({"evaluate": {"judge": "rule"}}, "needs evaluate.judge openai"),
    ({"collect": {"replay": True}}, "needs collect.replay false"),
])
def test_stabletoolbench_params_refuse_what_needs_gold(tmp_path, override, message):
    from pipeline.config import load_params
    from pipeline.errors import ConfigError

    raw = yaml.safe_load((REPO / "profiles/stabletoolbench.yaml").read_text())
    for section, values in override.items():
        raw.setdefault(section, {}).update(values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=f"tasks.source: stabletoolbench {message}"):
        load_params(tmp_path / "params.yaml")


def test_the_profile_fits_the_subsets_and_loads():
    from pipeline.config import load_params

    p = load_params(REPO / "profiles/stabletoolbench.yaml")
    assert p.tasks.source == "stabletoolbench" and p.env.kind == "replay" and p.evaluate.judge == "openai"
    # G3_instruction holds 61 queries: I3 of every split together must fit
    assert p.tasks.train.I3 + p.tasks.val.I3 + p.tasks.test.I3 <= 61


def test_the_pass_rate_judge_sends_stabletoolbench_criteria_verbatim(external):
    """The two requests, byte for byte what StableToolBench's evaluator sends for a real StepTool trajectory:
    the template's description formatted with the query and the Finish arguments, then with json.dumps of the
    converted answer (fixed lines of template.txt checked here by hand), the function of its config.yaml forced."""
    from pipeline.annotate.cache import JudgeCache
    from pipeline.config import parse_params
    from pipeline.evaluate.llm_pass_rate import CHECK_TOOL, PARSE_TOOL, PassRateJudge, check_messages, parse_messages
    from pipeline.formats.stabletoolbench import converted_answer_body, load_json_records, parse_answer_steps

    rec = next(iter(load_json_records(external / "steptool/pass_rate_results/steptool_cot/G1_instruction.json").values()))
    ref = parse_answer_steps(rec["answer_steps"])
    steps = [{"step_idx": i, "api_name": s.name, "arguments_json": s.arguments, "observation": s.response,
              "is_finish": False} for i, s in enumerate(ref)]
    traj = {"traj_id": "x", "finish_type": "give_answer", "final_answer": "The answer is 42."}
    answer = converted_answer_body(traj, steps)
    check = check_messages(rec["query"], answer)
    assert len(check) == 1 and check[0]["role"] == "user"
    text = check[0]["content"]
    assert text.startswith("\nGiving the query and answer, you need give `answer_status` of the answer by following "
                           "rules:\n1. If the answer is a sorry message or not a positive/straight response for the "
                           'given query, return "Unsolved".\n')
    assert ('2.2 If you are confident that the answer is sufficient to determine whether the solve the query or not, '
            'return "Solved" or "Unsolved".\n\nQuery:\n' + rec["query"] + "\nAnswer:\n"
            '{"return_type": "give_answer", "final_answer": "The answer is 42."}\n\nNow give your reason in "content" '
            'and `answer_status` of JSON to `check_answer_status`.\n') in text
    parse = parse_messages(rec["query"], answer)[0]["content"]
    assert parse.startswith("\nGiving the query and the correspond execution detail of an answer, you need give "
                            "`answer_status` of the answer by following rules:\n1. If all 'tool' nodes' message "
                            'indicate that there are errors happened, return "Unsolved"\n')
    body = parse.split("\nAnswer:\n", 1)[1].rsplit("\n\nNow you are requested", 1)[0]
    assert json.loads(body) == answer and body == json.dumps(answer)
    assert json.loads(body)["answer_details"][0]["next"][0]["next"][0]["message"]["name"] == ref[0].name
    assert parse.endswith('Now you are requested to give reason in "content" and `answer_status` of JSON to '
                          "`parse_answer_status`.\n")
    for tool, name in ((CHECK_TOOL, "check_answer_status"), (PARSE_TOOL, "parse_answer_status")):
        assert tool["function"]["name"] == name and tool["function"]["parameters"]["required"] == ["answer_status"]
        assert tool["function"]["parameters"]["properties"]["answer_status"]["enum"] == ["Unsure", "Unsolved", "Solved"]
    cfg = parse_params({}).annotate
    judge = PassRateJudge(cfg, JudgeCache(":memory:"), 3, temperature=0.0)
    req = judge.request(check, CHECK_TOOL, 2, 0)
    assert req["temperature"] == 0.0 and req["tool_choice"]["function"]["name"] == "check_answer_status"
    assert req["seed"] == 2000 and req["messages"] == check


@pytest.mark.slow
def test_the_pipeline_runs_on_real_queries_offline(external, tmp_path, tiny_model_dir):
    """profiles/stabletoolbench.yaml, scaled down, through the real `dvc repro` in a temporary git repository:
    every stage on 4 train and 3 test queries, tools answered by the replay of real responses (misses simulated),
    the step annotator, the simulator and the pass-rate judge served by the loopback judge. The query and
    recording folders are the stages' DVC deps."""
    from pipeline.annotate.scripted_judge_server import JudgeServer
    from pipeline.schema import TASKS, read_table
    from tests.support.dvc_repo import DVC, commit, copy_repo, run

    root = tmp_path / "repo"
    env = copy_repo(REPO, root)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in yaml.safe_load((REPO / "profiles/stabletoolbench.yaml").read_text()).items():
        raw[section].update(values)
    raw["tasks"].update(stabletoolbench_path=str(external / QUERIES), train={"I1": 2, "I2": 1, "I3": 1},
                        val={"I1": 1, "I2": 0, "I3": 0}, test={"I1": 1, "I2": 1, "I3": 1})
    raw["env"]["replay_path"] = str(external / "steptool/pass_rate_results")
    raw["base_model"]["source"] = str(tiny_model_dir)
    # calls never recorded: simulated (pipeline/simulator.py) by the loopback server, from the recorded examples
    raw["env"].update(on_miss="simulate", simulator={"api_key_env": "STEPTOOL_TEST_JUDGE_KEY",
                                                      "cache_path": str(tmp_path / "simulator.sqlite")})
    raw["warmstart"].update(max_tasks=2, batch_size=2)
    raw["agent"].update(max_steps=2, max_new_tokens=8)
    raw["collect"].update(max_tasks=4, n_samples=2, chunk_size=4)
    raw["train"].update(seeds=[0])
    raw["variants"] = ["steptool"]
    raw["evaluate"].update(models=["sft", "steptool"], n_judgings=2)
    env["STEPTOOL_TEST_JUDGE_KEY"] = "sk-stb-test"
    server = JudgeServer()
    raw["annotate"].update(base_url=server.url, api_key_env="STEPTOOL_TEST_JUDGE_KEY",
                           cache_path=str(tmp_path / "judge.sqlite"))
    raw["env"]["simulator"]["base_url"] = server.url
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        commit(root, env, "init", init=True)
        out = run(DVC + ["repro"], root, env)
        status = run(DVC + ["status", "--json"], root, env)
    finally:
        server.close()
    for stage in ("tasks", "base_model", "warmstart", "collect@0", "annotate@0", "advantages@steptool-0",
                  "train@steptool-0", "evaluate@sft-cot", "evaluate@steptool-cot", "report", "view"):
        assert f"Running stage '{stage}'" in out
    assert json.loads(status) == {}  # up to date, the external folders included
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    deps = {d["path"] for d in lock["tasks"]["deps"]}
    assert str(external / QUERIES) in deps
    assert str(external / "steptool/pass_rate_results") in {d["path"] for d in lock["collect@0"]["deps"]}
    assert "sk-stb-test" not in (root / "dvc.lock").read_text()
    queries = {str(r["query_id"]) for f in (external / QUERIES).glob("*.json") for r in json.loads(f.read_text())}
    train_ids = read_table(root / layout.tasks_file("train"), TASKS).column("task_id").to_pylist()
    test_ids = read_table(root / layout.tasks_file("test"), TASKS).column("task_id").to_pylist()
    assert len(train_ids) == 4 and len(test_ids) == 3 and set(train_ids) | set(test_ids) <= queries
    assert not set(train_ids) & set(test_ids)
    # the warm start learnt from ToolWorld tasks with gold plans, not from the queries
    warm = pl.read_parquet(root / layout.WARMSTART_TASKS)
    assert warm.height == 4 and warm["gold"].null_count() == 0 and set(warm["source"]) == {"toolworld"}
    played = pl.read_parquet(root / layout.table(layout.trajectories_dir(0), "trajectories"))
    assert played.height == 8 and set(played["task_id"]) == set(train_ids)
    collected = json.loads((root / layout.metrics_file("collect", "s0")).read_text())
    steps = pl.read_parquet(root / layout.table(layout.trajectories_dir(0), "steps")).filter(~pl.col("is_finish"))
    # no error from a miss: every call is recorded or simulated, and the metrics count both
    assert collected["replay_misses"] == 0 and collected["answers"]["miss_error"] == 0
    assert collected["answers"] == {"recorded": int((steps["env_status"] == "ok").sum()),
                                    "simulated": int((steps["env_status"] == "simulated").sum()), "miss_error": 0}
    assert collected["tool_calls"] == steps.height  # (the tiny model's calls mostly name no function: no answer)
    assert collected["simulated_answers"] == collected["answers"]["simulated"]  # simulated answers by play: test_simulator
    annotated = pl.read_parquet(root / layout.table(layout.annotated_dir(0), "steps"))
    assert annotated.height and set(annotated["annotator"]) == {"openai"}
    assert (root / layout.model_dir("steptool", 0) / "model.safetensors").exists()
    results = pl.read_parquet(root / layout.table(layout.eval_dir("steptool", "cot"), "results"))
    assert results.height == 3 and set(results["judge"]) == {"openai"} and set(results["task_id"]) == set(test_ids)
    assert all(len(s) == 2 for s in results["statuses"])
    metrics = json.loads((root / layout.metrics_file("eval", "steptool-cot")).read_text())
    assert metrics["judge"] == "openai" and "judge_stats" in metrics
    assert set(metrics["answers"]) == {"recorded", "simulated", "miss_error"} and metrics["answers"]["miss_error"] == 0
    annotated_metrics = json.loads((root / layout.metrics_file("annotate", "s0")).read_text())
    assert annotated_metrics["answers"] == collected["answers"]
    md = (root / layout.RESULTS_MD).read_text()
    assert "is answered by a **simulator**" in md and "errors from misses" in md
    md = (root / layout.RESULTS_MD).read_text()
    assert "**Benchmark: StableToolBench** (`tasks.source: stabletoolbench`)" in md
    assert "replayed from the real responses" in md and "StableToolBench's criteria text" in md
    assert "sk-stb-test" not in md and b"sk-stb-test" not in (tmp_path / "judge.sqlite").read_bytes()
