"""Evaluation: pass-rate and win-rate math by hand, then the evaluate and report stages on a tiny model."""
from __future__ import annotations

import json
import shutil

import polars as pl
import pyarrow as pa
import pytest
import yaml

from pipeline import layout
from pipeline.config import load_params
from pipeline.evaluate.results import compare_round, result_rows, summarize, win_rate
from pipeline.task import Task


def _row(task, level, sample, statuses, facts=None, calls=1, ok=1, finish="give_answer", steps=2):
    return {"task_id": task, "level": level, "sample_idx": sample, "statuses": statuses, "n_calls": calls,
            "n_calls_ok": ok, "facts_stated": facts, "finish_type": finish, "n_steps": steps, "actions_generated": steps}


def test_summary_pass_rate_per_level_over_samples_and_runs():
    rows = [
        # I1, 2 tasks x 2 samples. Sample 0: S, U -> 75 %; sample 1: S, X -> 50 %  => mean 62.5, pop. std 12.5
        _row("a", "I1", 0, ["Solved"]), _row("b", "I1", 0, ["Unsure"]),
        _row("a", "I1", 1, ["Solved"]), _row("b", "I1", 1, ["Unsolved"], finish="give_up", calls=2, ok=0),
        # I2, 1 task x 2 samples: X then S => 0, 100 => mean 50, std 50
        _row("c", "I2", 0, ["Unsolved"], finish="none", steps=4), _row("c", "I2", 1, ["Solved"]),
    ]
    s = summarize(rows)
    assert s["pass_rate"]["I1"] == {"mean": 62.5, "std": 12.5, "n": 2}
    assert s["pass_rate"]["I2"] == {"mean": 50.0, "std": 50.0, "n": 2}
    assert s["pass_rate"]["average"] == {"mean": 56.25, "std": 31.25}  # mean of the levels, as the paper
    assert s["tasks"] == 3 and s["samples"] == 2
    assert s["tool_success_rate"] == pytest.approx(5 / 7, abs=1e-4)  # 7 calls, 5 succeeded
    assert s["give_up_rate"] == pytest.approx(1 / 6, abs=1e-4) and s["no_finish_rate"] == pytest.approx(1 / 6, abs=1e-4)
    assert s["avg_steps"] == pytest.approx(14 / 6, abs=1e-3)
    assert s["solved_rate"] == pytest.approx(3 / 6, abs=1e-4)


def test_judging_runs_are_a_second_axis_of_the_std():
    rows = [_row("a", "I1", 0, ["Solved", "Unsure", "Unsolved"])]
    s = summarize(rows)
    assert s["pass_rate"]["I1"]["mean"] == 50.0
    assert s["pass_rate"]["I1"]["std"] == pytest.approx(40.825, abs=1e-3)  # pstdev(100, 50, 0)
    assert s["judge_runs"] == 3


def test_compare_round_orders_status_then_facts_then_cost():
    ref = _row("a", "I1", 0, ["Unsure"], facts=1, calls=2)
    assert compare_round(_row("a", "I1", 0, ["Solved"], facts=2, calls=9), ref, 0) == 1  # status first
    assert compare_round(_row("a", "I1", 0, ["Unsolved"], facts=0, calls=0), ref, 0) == -1
    assert compare_round(_row("a", "I1", 0, ["Unsure"], facts=2, calls=5), _row("a", "I1", 0, ["Unsure"], facts=1, calls=2), 0) == 1
    assert compare_round(_row("a", "I1", 0, ["Unsure"], facts=1, calls=1), ref, 0) == 1  # cheaper
    assert compare_round(_row("a", "I1", 0, ["Unsure"], facts=1, calls=2), ref, 0) == 0
    # two failures are a tie whatever they cost
    fail = _row("a", "I1", 0, ["Unsolved"], facts=0, calls=1)
    assert compare_round(fail, _row("a", "I1", 0, ["Unsolved"], facts=0, calls=4), 0) == 0


def test_win_rate_counts_ties_on_their_own_and_needs_a_majority_of_rounds():
    ref = [_row("a", "I1", 0, ["Unsure", "Unsure", "Unsure"], facts=1),
           _row("b", "I1", 0, ["Solved", "Solved", "Solved"], facts=2),
           _row("c", "I1", 0, ["Unsolved"] * 3, facts=0)]
    cand = [_row("a", "I1", 0, ["Solved", "Unsure", "Unsolved"], facts=1),  # +1, 0, -1: tie
            _row("b", "I1", 0, ["Solved", "Unsure", "Solved"], facts=2),  # 0, -1, 0: loss
            _row("c", "I1", 0, ["Unsure", "Unsure", "Unsolved"], facts=1),  # more facts in every round: win
            _row("z", "I1", 0, ["Solved"] * 3, facts=1)]  # the reference never played z: not counted
    assert win_rate(cand, ref) == {"tasks": 3, "win": round(1 / 3, 4), "tie": round(1 / 3, 4), "loss": round(1 / 3, 4)}


def test_result_rows_use_the_rule_judge_and_the_succ_calling_rule():
    task = Task("t1", "test", "I2", "q", [], gold_calls=[], gold_facts=["42", "Paris"])
    trajs = [{"traj_id": "x", "task_id": "t1", "sample_idx": 0, "finish_type": "give_answer",
              "final_answer": "It is 42.", "n_steps": 3, "actions_generated": 3}]
    steps = [
        {"traj_id": "x", "api_name": "f", "parse_ok": True, "is_finish": False, "env_status": "ok",
         "observation": json.dumps({"error": "", "response": {"v": 42}})},
        {"traj_id": "x", "api_name": "g", "parse_ok": True, "is_finish": False, "env_status": "ok",
         "observation": json.dumps({"error": "Rate limit exceeded", "response": ""})},
        {"traj_id": "x", "api_name": "Finish", "parse_ok": True, "is_finish": True, "env_status": "finish",
         "observation": ""},
    ]
    (row,) = result_rows("sft", "cot", trajs, steps, {"t1": task})
    assert row["statuses"] == ["Unsure"] and row["pass_score"] == 0.5  # one fact of two
    assert (row["n_calls"], row["n_calls_ok"], row["facts_stated"], row["n_facts"]) == (2, 1, 1, 2)
    (row,) = result_rows("sft", "cot", trajs, steps, {"t1": task}, statuses={"x": ["Solved", "Unsure"]},
                         judge="openai")
    assert row["judge"] == "openai" and row["pass_score"] == 0.75 and row["reasons"] is None
    assert result_rows("sft", "cot", trajs, steps, {"t1": task})[0]["reasons"] is None  # the rule judge gives none
    # a judge that says why: (status, reason) per run, the reasons kept in run order
    (row,) = result_rows("sft", "cot", trajs, steps, {"t1": task}, judge="openai",
                         statuses={"x": [("Solved", "states 42"), ("Unsolved", None)]})
    assert row["statuses"] == ["Solved", "Unsolved"] and row["reasons"] == ["states 42", ""]
    assert row["pass_score"] == 0.5


def test_results_written_before_the_reasons_column_still_read(tmp_path):
    """A results.parquet from before `reasons` existed (the study's committed pieces) reads with it null; a
    column that was always there is still required."""
    import pyarrow.parquet as pq

    from pipeline.schema import EVAL_RESULTS, SchemaError, read_table, write_table

    row = {"model": "sft", "strategy": "cot", "task_id": "t", "level": "I1", "seed": None, "sample_idx": 0,
           "traj_id": "x", "judge": "rule", "statuses": ["Solved"], "reasons": ["r"], "pass_score": 1.0,
           "finish_type": "give_answer", "final_answer": "42", "n_steps": 2, "n_calls": 1, "n_calls_ok": 1,
           "facts_stated": 1, "n_facts": 1, "actions_generated": 2}
    old = pa.Table.from_pylist([row], schema=EVAL_RESULTS).drop_columns(["reasons"])
    pq.write_table(old, tmp_path / "old.parquet")
    back = read_table(tmp_path / "old.parquet", EVAL_RESULTS)
    assert back.column_names == EVAL_RESULTS.names and back.column("reasons").to_pylist() == [None]
    assert back.column("statuses").to_pylist() == [["Solved"]]
    del row["reasons"]  # written by hand without it: null, as read
    write_table([row], tmp_path / "by_hand.parquet", EVAL_RESULTS)
    assert read_table(tmp_path / "by_hand.parquet", EVAL_RESULTS).column("reasons").to_pylist() == [None]
    del row["judge"]  # a column that was always there is required when writing too
    with pytest.raises(SchemaError, match=r"record 0 lacks field\(s\) \['judge'\]"):
        write_table([row], tmp_path / "bad.parquet", EVAL_RESULTS)
    pq.write_table(old.drop_columns(["judge"]), tmp_path / "older.parquet")
    with pytest.raises(SchemaError, match=r"older.parquet: column\(s\) \['judge'\] missing"):
        read_table(tmp_path / "older.parquet", EVAL_RESULTS)


@pytest.fixture()
def eval_root(tmp_path, tiny_model_dir):
    """A repo root with tasks and two tiny checkpoints, and params for a quick evaluation."""
    from stages import tasks as tasks_stage
    from tests.conftest import REPO

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tasks"].update(train={"I1": 2, "I2": 1, "I3": 1}, test={"I1": 3, "I2": 2, "I3": 2})
    raw["agent"].update(max_steps=2, max_new_tokens=8, dfsdt_budget=3)
    raw["evaluate"].update(models=["sft", "steptool"], strategies=["cot", "dfsdt"],
                           tasks_per_level={"cot": 1, "dfsdt": 1})
    raw["train"]["seeds"] = [0, 1]  # a trained variant: one checkpoint per seed, each evaluated
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "params.yaml")
    tasks_stage.run(params, tmp_path)
    for d in (layout.model_dir("sft"), layout.model_dir("steptool", 0), layout.model_dir("steptool", 1)):
        shutil.copytree(tiny_model_dir, tmp_path / d)
    return tmp_path, params


def test_evaluate_then_report(eval_root):
    from stages import evaluate, report

    root, params = eval_root
    for model in ("sft", "steptool"):
        for strategy in ("cot", "dfsdt"):
            msg = evaluate.run(params, root, model, strategy)
            assert msg.startswith(f"evaluate {model} {strategy}: 3 tasks" + (" x 2 seeds" if model != "sft" else " x"))
    res = pl.read_parquet(root / layout.table(layout.eval_dir("sft", "dfsdt"), "results"))
    assert res.height == 3 and sorted(res["level"]) == ["I1", "I2", "I3"] and res["seed"].is_null().all()
    seeded = pl.read_parquet(root / layout.table(layout.eval_dir("steptool", "cot"), "results"))
    assert seeded.height == 6 and sorted(seeded["seed"]) == [0, 0, 0, 1, 1, 1]
    assert (root / layout.eval_dir("steptool", "cot") / layout.seed_dir(1) / "steps.parquet").exists()
    assert (res["actions_generated"] >= res["n_steps"]).all()
    metrics = json.loads((root / layout.metrics_file("eval", "steptool-cot")).read_text())
    assert set(metrics["pass_rate"]) == {"I1", "I2", "I3", "average"} and metrics["judge"] == "rule"

    msg = report.run(params, root)
    assert msg.startswith("report: 4 model x strategy runs")
    md = (root / layout.RESULTS_MD).read_text()
    for line in ("| sft | cot |", "| sft | dfsdt |", "| steptool | cot |", "| steptool | dfsdt |"):
        assert line in md
    assert "## Ablation" in md and "| steptool | cot |" in md.split("## Ablation")[1]
    protocol = md.split("## Protocol and seeds")[1].split("## Figures")[0]
    assert "every trained variant is 2 training runs (seeds)" in md
    for seed in (f"`toolworld.seed` {params.toolworld.seed}", "`train.seeds` [0, 1]",
                 f"`evaluate.seed` {params.evaluate.seed}"):
        assert seed in protocol
    # the precision each evaluation ran in, as recorded where it ran (a report made on another machine would
    # resolve 'auto' otherwise); runs that differ are each named
    assert metrics["generated_by"] == evaluate.generated_by(params)
    assert f"; generated by {metrics['generated_by']}.\n" in protocol
    sft_metrics = root / layout.metrics_file("eval", "sft-cot")
    recorded = json.loads(sft_metrics.read_text())
    sft_metrics.write_text(json.dumps(dict(recorded, generated_by="hf on cuda, bf16")))
    report.run(params, root)
    protocol = (root / layout.RESULTS_MD).read_text().split("## Protocol and seeds")[1]
    assert "; generated by hf on cuda, bf16 (sft-cot); " in protocol and "(sft-dfsdt, steptool-cot, steptool-dfsdt)" in protocol
    sft_metrics.write_text(json.dumps(recorded))
    for fig in ("pass_rate.png", "win_rate.png"):
        assert (root / layout.FIGURES / fig).read_bytes()[:4] == b"\x89PNG"
    # runs with unequal seeds (a study missing a piece) say how many each has, not "every variant is 2"
    path = root / layout.table(layout.eval_dir("steptool", "dfsdt"), "results")
    from pipeline.schema import EVAL_RESULTS, write_table

    write_table(pl.read_parquet(path).filter(pl.col("seed") == 0).to_arrow(), path, EVAL_RESULTS)
    report.run(params, root)
    md = (root / layout.RESULTS_MD).read_text()
    assert "not as many of each: steptool-cot 2, steptool-dfsdt 1." in md and "every trained variant is" not in md
    m = json.loads((root / layout.REPORT_METRICS).read_text())
    assert m["sft-cot"]["win_rate_vs_sft"] is None and m["steptool-cot"]["win_rate_vs_sft"]["tasks"] == 6
    assert m["steptool-cot"]["vs_sft"]["tasks"] == 3 and m["steptool-cot"]["vs_sft"]["seeds"] == 2
    assert (root / layout.WIN_RATE_CSV).read_text().startswith("run,win,tie,loss\nsteptool-cot,")


def test_evaluate_names_a_missing_checkpoint(eval_root):
    from pipeline.errors import SteptoolError
    from stages import evaluate

    root, params = eval_root
    shutil.rmtree(root / layout.model_dir("steptool", 1))
    with pytest.raises(SteptoolError, match=f"{layout.model_dir('steptool', 1)}: not a checkpoint"):
        evaluate.run(params, root, "steptool", "cot")


def test_tasks_per_level_takes_the_first_of_each_level(eval_root):
    from pipeline.task_files import first_per_level, load_tasks

    root, _ = eval_root
    picked = first_per_level(load_tasks(root, "test"), 2)
    assert [t.level for t in picked].count("I1") == 2 and [t.level for t in picked].count("I3") == 2
    assert len(first_per_level(load_tasks(root, "test"), 0)) == 7


def _judge_params(tmp_path, url, n_judgings=3):
    from tests.conftest import REPO

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["annotate"].update(base_url=url, cache_path=str(tmp_path / "judge.sqlite"), max_retries=8)
    raw["evaluate"].update(judge="openai", n_judgings=n_judgings)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return load_params(tmp_path / "params.yaml")


def test_openai_pass_rate_judge_follows_the_protocol(tmp_path, monkeypatch):
    """No answer -> Unsolved with no call; check_answer_status first; parse_answer_status only on Unsure;
    faults retried; a rerun pays only for the invalid answers, never cached; the key is sent but never written."""
    from pipeline.annotate.scripted_judge_server import Faults, JudgeServer, auth_digest
    from pipeline.evaluate.llm_pass_rate import judge_answers

    monkeypatch.setenv("OPENAI_API_KEY", "sk-eval-test-91")
    task = Task("t", "test", "I1", "How tall is the tower?", [], gold_calls=[], gold_facts=["300"])
    ok = json.dumps({"error": "", "response": {"height_m": 300}})
    bad = json.dumps({"error": "Rate limit exceeded", "response": ""})
    trajs = [
        {"traj_id": "num", "task_id": "t", "finish_type": "give_answer", "final_answer": "It is 300 m tall."},
        {"traj_id": "words-ok", "task_id": "t", "finish_type": "give_answer", "final_answer": "It is rather tall."},
        {"traj_id": "words-bad", "task_id": "t", "finish_type": "give_answer", "final_answer": "It is rather tall!"},
        {"traj_id": "gave-up", "task_id": "t", "finish_type": "give_up", "final_answer": ""},
        {"traj_id": "empty", "task_id": "t", "finish_type": "give_answer", "final_answer": "  "},
    ]
    def step(traj, i, obs):
        return {"traj_id": traj, "step_idx": i, "api_name": "height_for_towers", "arguments_json": "{}",
                "parse_ok": True, "is_finish": False, "env_status": "ok", "observation": obs}
    steps = [step("words-ok", 0, bad), step("words-ok", 1, ok), step("words-bad", 0, bad), step("num", 0, ok)]
    server = JudgeServer(Faults(p_429=0.2, p_500=0.1, p_malformed=0.1, seed=6))
    try:
        params = _judge_params(tmp_path, server.url)
        judged, stats = judge_answers(trajs, steps, {"t": task}, params, progress=False)
        statuses = {k: [s for s, _ in v] for k, v in judged.items()}
        assert statuses["gave-up"] == statuses["empty"] == ["Unsolved"] * 3
        assert stats["no_call_unsolved"] == 2
        # a number in the answer: Solved from the answer alone; words: Unsure, then the trajectory decides
        assert statuses["num"] == ["Solved"] * 3
        assert statuses["words-ok"] == ["Solved"] * 3 and statuses["words-bad"] == ["Unsolved"] * 3
        # each run's reason: the deciding call's function, status and message content, both calls after Unsure
        assert {r for _, r in judged["num"]} == {"check_answer_status: Solved (the answer states a number)"}
        assert {r for _, r in judged["words-ok"]} == {
            "check_answer_status: Unsure (words only: the calls must decide); "
            "then parse_answer_status: Solved (1 of 2 tool calls succeeded)"}
        assert {r for _, r in judged["words-bad"]} == {
            "check_answer_status: Unsure (words only: the calls must decide); "
            "then parse_answer_status: Unsolved (0 of 1 tool calls succeeded)"}
        assert judged["gave-up"][0][1].startswith("gave up: Unsolved without a call")
        assert judged["empty"][0][1].startswith("no final answer: Unsolved without a call")
        assert stats["second_calls"] == 6 and stats["failed_judgings"] == 0
        assert stats["transport_retries"] > 0 and stats["invalid_answers"] > 0  # the faults did happen
        calls = server.http_calls
        again, stats2 = judge_answers(trajs, steps, {"t": task}, params, progress=False)
        # invalid answers are never cached: the rerun asks those again (the scripted judge answers a request the
        # same way every time, as a replay would) and nothing else; the cached answers give the same reasons
        assert again == judged and stats2["judge_calls"] == stats["invalid_answers"] > 0
        assert stats2["invalid_answers"] == stats["invalid_answers"]
        assert server.auth_digests and all(h == auth_digest("Bearer sk-eval-test-91") for h in server.auth_digests)
    finally:
        server.close()
    assert b"sk-eval-test-91" not in (tmp_path / "judge.sqlite").read_bytes()


def test_evaluate_stage_with_the_openai_judge(eval_root, monkeypatch):
    from pipeline.annotate.scripted_judge_server import JudgeServer
    from stages import evaluate

    root, _ = eval_root
    server = JudgeServer()
    try:
        params = _judge_params(root, server.url, n_judgings=2)
        raw = yaml.safe_load((root / "params.yaml").read_text())
        raw["evaluate"].update(models=["sft", "steptool"], tasks_per_level={"cot": 1, "dfsdt": 1})
        raw["agent"].update(max_steps=2, max_new_tokens=8)
        (root / "params.yaml").write_text(yaml.safe_dump(raw))
        params = load_params(root / "params.yaml")
        evaluate.run(params, root, "sft", "cot")
    finally:
        server.close()
    res = pl.read_parquet(root / layout.table(layout.eval_dir("sft", "cot"), "results"))
    assert set(res["judge"]) == {"openai"} and res["statuses"].list.len().to_list() == [2, 2, 2]
    # one reason per judging run, each naming the status it gave
    for st, why in zip(res["statuses"].to_list(), res["reasons"].to_list()):
        assert len(why) == len(st) and all(s in w for s, w in zip(st, why))
    m = json.loads((root / layout.metrics_file("eval", "sft-cot")).read_text())
    assert m["judge"] == "openai" and m["judge_runs"] == 2 and "judge_stats" in m


def _synthetic(model: str, strategy: str, solved: list[int]) -> list[dict]:
    """EVAL_RESULTS-like rows: task i of level I1/I2 alternately, Solved where solved[i]."""
    return [{"model": model, "strategy": strategy, "task_id": f"t{i}", "level": ("I1", "I2")[i % 2], "sample_idx": 0,
             "traj_id": f"{model}-{i}", "judge": "rule", "statuses": ["Solved" if s else "Unsolved"],
             "pass_score": float(s), "finish_type": "give_answer", "final_answer": "x", "n_steps": 2, "n_calls": 1,
             "n_calls_ok": 1, "facts_stated": s, "n_facts": 1, "actions_generated": 2} for i, s in enumerate(solved)]


def test_report_sentences_follow_synthetic_results():
    """Clearly better, clearly equal and too few tasks: the report's sentences say which, every cell carries a
    CI, and no '± 0.0' is printed for a single sample."""
    from pipeline.report import build

    n = 40
    results = {("sft", "cot"): _synthetic("sft", "cot", [1 if i % 4 == 0 else 0 for i in range(n)]),
               ("steptool", "cot"): _synthetic("steptool", "cot", [1 if i % 4 in (0, 1, 2) else 0 for i in range(n)]),
               ("ppo_outcome", "cot"): _synthetic("ppo_outcome", "cot", [1 if i % 4 == 1 else 0 for i in range(n)]),
               ("no_step_opt", "cot"): _synthetic("no_step_opt", "cot", [1 if i % 4 == 0 else 0 for i in range(n)])}
    metrics, md = build(results, "sft", ["steptool", "ppo_outcome", "no_step_opt"], {})
    text = "\n".join(md)
    assert "- cot: steptool is better than sft: +50.0 points" in text
    assert "- cot: steptool is better than ppo_outcome:" in text
    assert "- cot: no_step_opt vs sft: too few tasks to tell (0 of 40 differ" in text
    assert "- cot: ppo_outcome vs sft: no significant difference at the 5% level: +0.0 points" in text
    assert "± 0.0" not in text and "n = 1, so no spread over samples" in text
    cell = metrics["steptool-cot"]["pass_rate_ci"]["average"]
    assert cell["mean"] == 75.0 and cell["lo"] < 75.0 < cell["hi"]
    assert metrics["steptool-cot"]["vs_sft"]["wins"] == 20 and metrics["steptool-cot"]["vs_sft"]["losses"] == 0
    few = {("sft", "cot"): _synthetic("sft", "cot", [0, 0, 0, 0]),
           ("steptool", "cot"): _synthetic("steptool", "cot", [1, 1, 1, 1])}
    _, md = build(few, "sft", ["steptool"], {})
    assert any("steptool vs sft: too few tasks to tell (4 of 4 differ" in line for line in md)
    # the split is named, and the power table follows from the measured spread: steptool vs sft differs on
    # 20 of 40 tasks by +1: per level 10 of 20 differ, variance 5/19, sd 51.3 points
    assert "comes from the **test** split" in text
    power = text.split("## How many tasks would tell")[1]
    sd = metrics["steptool-cot"]["vs_sft"]["sd"]
    assert sd == pytest.approx(100 * (20 * 0.25 / 19) ** 0.5, abs=0.01)
    from pipeline.stats import tasks_needed
    assert f"| steptool vs sft | cot | 40 | {sd:.1f} | +50.0 | {tasks_needed(sd, 5)} | {tasks_needed(sd, 10)} |" in power
    assert "| no_step_opt vs sft | cot | 40 | – (no task differed) | +0.0 | – | – | – |" in power
    assert "With one training seed the spread between training runs is not measured" in power
    _, md = build(few, "sft", ["steptool"], {}, split="val")
    assert "comes from the **val** split" in "\n".join(md)


def test_learning_signal_table_by_hand():
    from pipeline.report import learning_signal

    def rows(v, advs):
        return [{"traj_id": "t", "task_id": "x", "step_idx": i, "reward": 0.0, "baseline": 0.0, "advantage": a,
                 "variant": v} for i, a in enumerate(advs)]

    def run(v, seed, k, advs, metrics=None, before=None, after=None, history=None):
        return {"variant": v, "seed": seed, "round": k, "rows": rows(v, advs), "metrics": metrics or {},
                "before": before, "after": after, "history": history or []}

    steptool = {"round_baseline_ev_rloo": 0.25, "round_baseline_ev_crossfit": -0.5}
    # two epochs of three optimizer steps; step 4's minibatch holds a token that rose e^6-fold (a spike), step 7
    # logged nothing finite (NaN)
    log = [{"step": i + 1, "approx_kl": a, "kl_ref_token": r} for i, (a, r) in enumerate(
        [(0.01, 0.001), (0.03, 0.002), (0.02, 0.003), (15987.4, 900.0), (0.04, 0.004), (0.05, 0.006)])]
    nan = [{"step": 7, "approx_kl": float("nan")}]
    runs = [run("steptool", 0, 1, [0.5, -0.2, 0.0, 0.3], steptool, history=log + nan),
            run("ppo_outcome", 0, 1, [0.1, 0.4, 0.0, -1.0]),
            run("steptool", 0, 2, [0.5, 0.5, 0.5, 0.5])]
    text = "\n".join(learning_signal(runs, epochs=2))
    # steptool round 1: up 2 of 4, zero 1, down 1; signs differ from ppo_outcome's on steps 1 and 3 -> 50%;
    # approx KL: median of the six finite values (0.03 + 0.04) / 2, max 15,987; KL to ref: the last epoch is steps
    # 5-7 of the 7 logged (3 of them: 7 // 2), finite 0.004 and 0.006 -> 0.005 (the spike of step 4 left out)
    assert "| steptool | 0 | 1 | 4 | 50% / 25% / 25% | 0.25, -0.50 | 50% | 0.035 (15,987) | 0.005 | – |" in text
    from pipeline.report import update_kl
    assert update_kl(log, 2) == pytest.approx((0.035, 15987.4, 0.006))  # last epoch: steps 4-6, median 0.006
    assert update_kl(log, 1)[2] == pytest.approx(0.0035)  # one epoch: all six
    assert update_kl([], 2) == (None, None, None)
    assert "| ppo_outcome | 0 | 1 | 4 | 50% / 25% / 25% | –, – | – | – | – | – |" in text
    # round 2 trained on its own collection: no step in common with ppo_outcome's round 2 (there is none)
    assert "| steptool | 0 | 2 | 4 | 100% / 0% / 0% | –, – | – | – | – | – |" in text
    assert "replay pass rate" not in text and "collect.replay: true" in text
    replayed = [run("steptool", 0, 1, [1.0], before={"pass_rate": 25.0, "failed_call_rate": 0.5, "calls_per_task": 3},
                    after={"pass_rate": 50.0, "failed_call_rate": 0.25, "calls_per_task": 2.5})]
    text = "\n".join(learning_signal(replayed))
    assert "| 25.0 → 50.0 | 0.50 → 0.25 | 3.00 → 2.50 |" in text
    assert learning_signal([]) == []


def test_the_likelihood_shift_by_hand():
    """Per trajectory, Σ (logp_new − logp_old) over the steps pushed up / left alone / pushed down."""
    from pipeline.report import learning_signal, likelihood_shift

    def row(t, k, a, old, new):
        return {"traj_id": t, "task_id": "x", "step_idx": k, "reward": 0.0, "baseline": 0.0, "advantage": a,
                "variant": "steptool", "logp_old": old, "logp_new": new}

    rows = [row("t1", 0, 0.5, -2.0, -1.0), row("t1", 1, 0.0, -1.0, -1.4),
            row("t2", 0, -0.3, -1.0, -3.5), row("t2", 1, -0.2, -0.5, 0.0)]
    # up: +1.0 over 2 trajectories; zero: -0.4 / 2; down: (-2.5 + 0.5) / 2
    assert likelihood_shift(rows) == pytest.approx((0.5, -0.2, -1.0))
    run = {"variant": "steptool", "seed": 0, "round": 1, "rows": rows, "metrics": {}, "before": None,
           "after": None, "history": []}
    assert "| – | – | +0.5 / -0.2 / -1.0 |" in "\n".join(learning_signal([run]))
    # a table made before the columns (or one step without logp_new): no figure rather than a partial one
    assert likelihood_shift([{**r, "logp_new": None} if r["step_idx"] else r for r in rows]) is None
    assert likelihood_shift([{k: v for k, v in r.items() if k not in ("logp_old", "logp_new")} for r in rows]) is None
    assert likelihood_shift([]) is None


def test_the_power_text_says_whether_training_seeds_are_in_the_spread():
    """With several seeds the spread between training runs is measured (and split); the one-seed caveat goes."""
    from pipeline.report import build

    n = 40
    sft = [dict(r, seed=None) for r in _synthetic("sft", "cot", [1 if i % 4 == 0 else 0 for i in range(n)])]
    steptool = []
    for seed, solved in ((0, [1 if i % 4 in (0, 1) else 0 for i in range(n)]),
                         (1, [1 if i % 4 in (0, 2) else 0 for i in range(n)])):
        steptool += [dict(r, seed=seed, traj_id=f"{r['traj_id']}-s{seed}")
                     for r in _synthetic("steptool", "cot", solved)]
    _, md = build({("sft", "cot"): sft, ("steptool", "cot"): steptool}, "sft", ["steptool"], {})
    power = "\n".join(md).split("## How many tasks would tell")[1]
    assert "the spread between training runs is in these numbers" in power
    assert "With one training seed" not in power and "sd within a task (seeds)" in power


def test_did_training_move_the_policy_by_hand(tmp_path):
    """The report's behaviour table over two seeds, on greedy-replay results written by hand (4 train tasks each,
    one call per task unless said): seed 0 passes 1 task before and 3 after (+50 points), seed 1 1 and 2 (+25):
    mean +37.5, s = 17.678, t(0.975, 1) = 12.706, half-width 12.706·17.678/√2 = 158.8 -> [-121.3, +196.3], within
    the seed spread. Calls per task go from 1 to 2 on both seeds: +1.00 with s = 0, an interval of width 0 that
    excludes 0: moved. One seed: the mean alone, '(one seed)'."""
    from pipeline.schema import EVAL_RESULTS, write_table
    from pipeline.report import behaviour_change
    from tests.conftest import REPO

    def rows(solved, calls):
        out = _synthetic("steptool", "cot", [1 if i < solved else 0 for i in range(4)])
        return [dict(r, n_calls=calls, n_calls_ok=calls, seed=None) for r in out]

    for seed, before, after in ((0, 1, 3), (1, 1, 2)):
        write_table(rows(before, 1), tmp_path / layout.replay_dir(layout.trajectories_dir(seed)) / "results.parquet",
                    EVAL_RESULTS)
        write_table(rows(after, 2), tmp_path / layout.round_dir("steptool", seed, 1) / "replay" / "results.parquet",
                    EVAL_RESULTS)
    params = load_params(REPO / "params.yaml")
    params.variants, params.train.seeds, params.train.rounds = ["steptool"], [0, 1], 1
    table = "\n".join(behaviour_change(tmp_path, params))
    assert "| steptool | 2 | +37.5 [-121.3, +196.3] *within the seed spread* |" in table
    assert "+1.00 [+1.00, +1.00] **moved**" in table
    # in words: half-width 158.8; 4 seeds would tell +37.5 at sd 17.7 (tests/test_stats.py, seeds_to_tell)
    assert ("- steptool: did not move beyond the seed spread: +37.5 points, sd 17.7 between its 2 seeds (2 up, 0 down, "
            "0 unchanged). To show at 2 seeds no change a pass rate can make would do (the interval's half-width is "
            "158.8 points), or this mean change, if the spread stayed as measured, about 4 seeds.") in table
    write_table(rows(3, 2), tmp_path / layout.round_dir("steptool", 1, 1) / "replay" / "results.parquet", EVAL_RESULTS)
    assert "- steptool: moved, +50.0 points over 2 seeds (2 up, 0 down, 0 unchanged)." in "\n".join(
        behaviour_change(tmp_path, params))  # both seeds +50: sd 0, an interval of width 0
    params.train.seeds = [0]
    assert "| steptool | 1 | +50.0 (one seed) |" in "\n".join(behaviour_change(tmp_path, params))


def test_the_behaviour_readout_in_words_by_hand():
    """Three seeds +10, +20, +30: mean 20, sd 10, half-width 4.303·10/√3 = 24.84, so within the spread; 4 seeds
    would tell it (3.182·10/2 = 15.91 < 20). Two seeds -10, +10: mean 0, which no number of seeds tells from 0.
    One seed: nothing to say."""
    from pipeline.report import _moved_plainly
    from pipeline.stats import mean_ci

    three = [10.0, 20.0, 30.0]
    assert _moved_plainly("steptool", {"pass_rate": mean_ci(three)}, three) == (
        "- steptool: did not move beyond the seed spread: +20.0 points, sd 10.0 between its 3 seeds (3 up, 0 down, "
        "0 unchanged). To show at 3 seeds the mean change would have to exceed 24.8 points, or this mean change, if "
        "the spread stayed as measured, about 4 seeds.")
    two = [-10.0, 10.0]
    assert _moved_plainly("x", {"pass_rate": mean_ci(two)}, two).endswith(
        "(1 up, 1 down, 0 unchanged). To show at 2 seeds no change a pass rate can make would do (the interval's "
        "half-width is 127.1 points), and no number of seeds tells a mean change of 0 from 0.")
    assert _moved_plainly("x", {"pass_rate": mean_ci([5.0])}, [5.0]) is None


def test_training_curves_of_a_study_stay_apart():
    """A study's 12 runs (4 variants x 3 seeds): matplotlib's 10-colour cycle drew two pairs of them alike. Each
    run gets its variant's colour and its seed's dash and marker, the same across the three panels, and the one
    legend names every run."""
    from pipeline.figures import line_styles, training_figure

    runs = [f"{v}/s{s}" for v in ("steptool", "no_step_reward", "no_step_opt", "ppo_outcome") for s in (0, 1, 2)]
    styles = line_styles(runs)
    assert styles["steptool/s0"] == {"color": "C0", "linestyle": "-", "marker": "."}
    assert styles["no_step_opt/s2"] == {"color": "C2", "linestyle": ":", "marker": "^"}
    assert styles["ppo_outcome/s1"] == {"color": "C3", "linestyle": "--", "marker": "x"}
    logs = {run: [{"step": t, "reward_mean": 0.1 * i, "kl_ref": 0.01 * t, "approx_kl": 0.001 * t} for t in (1, 2)]
            for i, run in enumerate(runs)}
    fig = training_figure(logs)
    drawn = [[(line.get_label(), line.get_color(), line.get_linestyle(), line.get_marker()) for line in ax.lines]
             for ax in fig.axes]
    assert len(drawn) == 3 and drawn[0] == drawn[1] == drawn[2]
    looks = [tuple(look) for _, *look in drawn[0]]
    assert [label for label, *_ in drawn[0]] == runs and len(set(looks)) == 12
    assert {color for color, *_ in looks} == {"C0", "C1", "C2", "C3"}
    assert [t.get_text() for t in fig.legends[0].get_texts()] == runs
    # a run missing a value (kl_ref NaN before the first update) still draws the others
    logs["steptool/s0"][0]["kl_ref"] = float("nan")
    assert len(training_figure(logs).axes[1].lines[0].get_xdata()) == 1


def test_the_protocol_says_how_each_evaluation_ran_and_which_did_not_record_it(tmp_path):
    """Study pieces made before `generated_by` was recorded merge with newer ones: those are named as unrecorded
    instead of the report reading 'generated by not recorded'."""
    from pipeline.report import generation

    folder = tmp_path / layout.METRICS / "eval"
    folder.mkdir(parents=True)
    assert generation(tmp_path) == "generation not recorded"
    (folder / "sft-cot.json").write_text(json.dumps({"pass_rate": {}}))
    assert generation(tmp_path) == "generation not recorded"
    (folder / "steptool-cot.json").write_text(json.dumps({"generated_by": "hf on cpu, bf16"}))
    (folder / "ppo_outcome-cot.json").write_text(json.dumps({"generated_by": "hf on cpu, bf16"}))
    assert generation(tmp_path) == "generated by hf on cpu, bf16 (ppo_outcome-cot, steptool-cot); not recorded for sft-cot"
    (folder / "sft-cot.json").write_text(json.dumps({"generated_by": "hf on cpu, bf16"}))
    assert generation(tmp_path) == "generated by hf on cpu, bf16"
