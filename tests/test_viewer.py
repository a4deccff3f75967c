"""The trajectory viewer (pipeline/viewer.py): step kinds by hand, what the site holds for a small hand-written run,
the folders it refuses to replace, and, in a real headless Chromium (tests/support/browser.py), that untrusted text
stays text and the page shows the Parquet values. The same checks on a real pipeline run's artifacts:
tests/test_dvc_pipeline.py."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline import layout
from pipeline.config import parse_params
from pipeline.errors import SteptoolError
from pipeline.schema import (ANNOTATED_STEPS, EVAL_RESULTS, ROUND_STEPS, STEPS, TASKS, TRAJECTORIES, write_table)
from pipeline.viewer import build_viewer, read_data_file, step_kinds
from tests.support.browser import browser, console_errors, missing, row, wait_view

EVIL_REASON = 'check_answer_status: Solved (<img src=x onerror="window.PWNED=5"> states 42)'
EVIL_OBS = '<script>window.PWNED=1</script></textarea></pre><img src=x onerror="window.PWNED=2">'
EVIL_ANSWER = "<script>window.PWNED=3</script> It is 42 & <b>Paris</b>"
# reward, return, baseline, advantage, PPO ratio, clip share
ROUND = [(0.45, 1.35, 0.2, 0.25, 1.05, 0.0), (-0.05, 0.9, 0.5, -0.6, 0.7, 0.5), (0.95, 0.95, 0.3, 0.65, 1.25, 1.0)]


def _step(traj, task, i, api, args, obs, finish=False, answer=None, **extra):
    return row(STEPS, traj_id=traj, task_id=task, step_idx=i, thought=f"thought {i}", api_name=api,
                arguments_json=args, parse_ok=True, observation=obs, is_finish=finish,
                finish_type="give_answer" if finish else None, final_answer=answer, parse_error="",
                env_status="finish" if finish else "ok", **extra)


def _traj(traj, task, policy, split, n, answer, seed=0):
    return row(TRAJECTORIES, traj_id=traj, task_id=task, policy=policy, strategy="cot", sample_idx=0, seed=seed,
                n_steps=n, finish_type="give_answer", final_answer=answer, split=split, level="I2",
                actions_generated=n)


def _result(model, traj, seed, statuses, score, n_calls, ok, reasons=None):
    return row(EVAL_RESULTS, model=model, strategy="cot", task_id="tw-test-1", level="I2", seed=seed, sample_idx=0,
                traj_id=traj, judge="rule" if reasons is None else "openai", statuses=statuses, reasons=reasons,
                pass_score=score, finish_type="give_answer",
                final_answer=EVIL_ANSWER, n_steps=n_calls + 1, n_calls=n_calls, n_calls_ok=ok, facts_stated=1,
                n_facts=2, actions_generated=n_calls + 1)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, object]:
    """A hand-written run: one collected trajectory (a call, its repeat, the Finish) with its labels and steptool's
    round table, one answered at once in steptool's second round, and one test task evaluated by sft and steptool
    (seed 0)."""
    root = tmp_path_factory.mktemp("run")
    params = parse_params({"variants": ["steptool"], "train": {"seeds": [0]},
                           "evaluate": {"models": ["sft", "steptool"], "strategies": ["cot"]}})
    for split, tid in (("train", "tw-train-1"), ("test", "tw-test-1")):
        write_table([row(TASKS, task_id=tid, split=split, level="I2", query="What is <i>the</i> answer? </pre>",
                          api_list="[]", gold={"calls": [], "facts": ["42", "Paris"]}, source="toolworld",
                          intent="attr", tools=[])], root / layout.tasks_file(split), TASKS)
    write_table([], root / layout.tasks_file("val"), TASKS)
    call = ("get_x_for_y", '{"id": 7}')
    steps = [_step("c1", "tw-train-1", 0, *call, EVIL_OBS), _step("c1", "tw-train-1", 1, *call, EVIL_OBS),
             _step("c1", "tw-train-1", 2, "Finish", "{}", "", finish=True, answer=EVIL_ANSWER)]
    folder = layout.trajectories_dir(0)
    write_table([_traj("c1", "tw-train-1", "sft", "train", 3, EVIL_ANSWER)], root / layout.table(folder, "trajectories"),
                 TRAJECTORIES)
    write_table(steps, root / layout.table(folder, "steps"), STEPS)
    labels = [dict(succ_calling=1.0, contribution=5.0, progress=0.5, sc_rule=1, sc_reason=""),
              dict(succ_calling=1.0, contribution=0.0, progress=0.5, sc_rule=1, sc_reason=""),
              dict(is_solved="Unsure", is_solved_score=0.5, sc_rule=1, sc_reason="finish")]
    annotated = [{**row(ANNOTATED_STEPS), **s, **lab, "annotator": "openai", "judge_model": "judge-1",
                  "votes": 2, "vote_details": json.dumps([{"why": "</script><script>window.PWNED=4</script>"}])}
                 for s, lab in zip(steps, labels)]
    write_table(annotated, root / layout.table(layout.annotated_dir(0), "steps"), ANNOTATED_STEPS)
    write_table([row(ROUND_STEPS, traj_id="c1", task_id="tw-train-1", step_idx=i, reward=r, baseline=b,
                      advantage=a, variant="steptool", ratio=q, clipped=c, **{"return": g})
                 for i, (r, g, b, a, q, c) in enumerate(ROUND)],
                root / layout.round_dir("steptool", 0, 1) / "round.parquet", ROUND_STEPS)
    # round 2: collected by round 1's steptool policy and annotated in the round's folder
    r2 = [_step("c2", "tw-train-1", 0, "Finish", "{}", "", finish=True, answer="42, Paris")]
    write_table([{**row(ANNOTATED_STEPS), **r2[0], "is_solved": "Solved", "is_solved_score": 1.0, "sc_rule": 1,
                  "sc_reason": "finish", "annotator": "oracle", "votes": 1}],
                root / layout.round_dir("steptool", 0, 2) / "annotated" / "steps.parquet", ANNOTATED_STEPS)
    write_table([row(ROUND_STEPS, traj_id="c2", task_id="tw-train-1", step_idx=0, reward=1.0, baseline=0.4,
                      advantage=0.6, variant="steptool", **{"return": 1.0})],
                root / layout.round_dir("steptool", 0, 2) / "round.parquet", ROUND_STEPS)
    for model, seed, n_calls in (("sft", None, 1), ("steptool", 0, 2)):
        out = root / layout.eval_dir(model, "cot")
        played = out if seed is None else out / layout.seed_dir(seed)
        traj = f"e-{model}"
        ev = [_step(traj, "tw-test-1", i, *call, '{"error": "", "response": {"x": 42}}') for i in range(n_calls)]
        ev.append(_step(traj, "tw-test-1", n_calls, "Finish", "{}", "", finish=True, answer=EVIL_ANSWER))
        write_table([_traj(traj, "tw-test-1", model, "test", n_calls + 1, EVIL_ANSWER, seed=0)],
                    root / layout.table(played, "trajectories"), TRAJECTORIES)
        write_table(ev, root / layout.table(played, "steps"), STEPS)
        write_table([_result(model, traj, seed, ["Unsure"] if model == "sft" else ["Solved"],
                             0.5 if model == "sft" else 1.0, n_calls, n_calls,
                             reasons=None if model == "sft" else [EVIL_REASON])],
                    root / layout.table(out, "results"), EVAL_RESULTS)
    return root, params


def _data(site: Path) -> tuple[dict, dict]:
    """(the index, every trajectory's details) as the page reads them."""
    details = {}
    for f in sorted((site / "js").glob("chunk-*.js")):
        details.update(read_data_file(f))
    return read_data_file(site / "js" / "index.js"), details


def test_step_kinds_by_hand():
    """Finish; a failed call (the rule, or an action that did not parse); a repeat of an earlier call (same
    function, the same arguments in any key order); new information when the progress rose, else none; with
    Contribution only, new when it is above 0; unannotated (an evaluation's): a call."""
    def s(api, args="{}", **kw):
        return {"api_name": api, "arguments_json": args, "is_finish": api == "Finish", "parse_ok": True, **kw}
    steps = [s("a", '{"x": 1, "y": 2}', sc_rule=1, progress=0.5), s("a", '{"y": 2, "x": 1}', sc_rule=1, progress=0.5),
             s("b", sc_rule=0, progress=0.5), s("c", sc_rule=1, progress=0.5), s("d", sc_rule=1, progress=1.0),
             s("Finish")]
    assert step_kinds(steps) == ["new information", "repeat", "failed call", "no new information", "new information",
                                 "Finish"]
    assert step_kinds([s("a", sc_rule=1, contribution=0.0), s("b", sc_rule=1, contribution=2.5),
                       s("c", sc_rule=1), {**s("d"), "parse_ok": False}]) == [
        "no new information", "new information", "call", "failed call"]


def test_the_site_holds_every_trajectory_with_the_parquet_values(run, tmp_path):
    root, params = run
    summary = build_viewer(params, root, tmp_path / "site")
    assert (summary["collected"], summary["evaluated"], summary["chunks"]) == (2, 2, 1)
    index, details = _data(tmp_path / "site")
    rows = [dict(zip(index["columns"], v)) for v in index["values"]]
    c1 = next(r for r in rows if r["id"] == "c1")
    assert (c1["kind"], c1["model"], c1["round"], c1["status"], c1["finish"], c1["steps"], c1["return"]) == (
        "collect", "sft", 1, "Unsure", "answer", 3, 1.35)
    c2 = next(r for r in rows if r["id"] == "c2")
    assert (c2["model"], c2["round"], c2["status"], c2["return"]) == ("steptool", 2, "Solved", 1.0)
    assert details["c2"]["steps"][0]["v"] == {"steptool": [1.0, 1.0, 0.4, 0.6, None, None]}  # no ratio recorded
    d = details["c1"]
    assert [s["kind"] for s in d["steps"]] == ["new information", "repeat", "Finish"]
    assert [s["v"]["steptool"] for s in d["steps"]] == [list(x) for x in ROUND]
    assert d["steps"][0]["obs"] == EVIL_OBS and d["final_answer"] == EVIL_ANSWER and d["gold_facts"] == ["42", "Paris"]
    assert d["steps"][0]["votes"] == [{"why": "</script><script>window.PWNED=4</script>"}]
    # hand-computed: the repeat's advantage alone in its kind, and the mean of one step per kind
    assert index["advantage_by_kind"]["steptool"] == {"new information": [0.25, 1], "repeat": [-0.6, 1],
                                                      "Finish": [0.625, 2]}  # (0.65 + 0.6) / 2
    evals = {r["model"]: r for r in rows if r["kind"] == "eval"}
    assert evals["sft"]["status"] == "Unsure" and evals["steptool"]["status"] == "Solved"
    assert evals["steptool"]["seed"] == 0 and evals["sft"]["seed"] is None
    assert details[evals["steptool"]["id"]]["judge"]["statuses"] == ["Solved"]
    assert details[evals["steptool"]["id"]]["judge"]["reasons"] == [EVIL_REASON]
    assert details[evals["sft"]["id"]]["judge"]["reasons"] is None  # the rule judge gives none


def test_a_large_run_is_split_into_chunks(run, tmp_path, monkeypatch):
    import pipeline.viewer as viewer

    root, params = run
    monkeypatch.setattr(viewer, "CHUNK", 2)
    summary = build_viewer(params, root, tmp_path / "site")
    index, details = _data(tmp_path / "site")
    chunks = sorted(p.name for p in (tmp_path / "site" / "js").glob("chunk-*.js"))
    assert summary["chunks"] == 2 and chunks == ["chunk-00000.js", "chunk-00001.js"]
    assert [v[index["columns"].index("chunk")] for v in index["values"]] == [0, 0, 1, 1]
    assert len(details) == 4


def test_only_a_folder_the_viewer_wrote_is_replaced(run, tmp_path):
    root, params = run
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(SteptoolError, match="a folder the viewer did not write"):
        build_viewer(params, root, mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    site = tmp_path / "site"
    build_viewer(params, root, site)
    (site / "js" / "stale.js").write_text("old")
    build_viewer(params, root, site)  # its own folder: replaced whole
    assert not (site / "js" / "stale.js").exists() and (site / "index.html").is_file()


def test_a_bad_artifact_is_refused_naming_the_file(run, tmp_path):
    import shutil

    import polars as pl

    root, params = run
    copy = tmp_path / "run"
    shutil.copytree(root, copy)
    results = copy / layout.table(layout.eval_dir("sft", "cot"), "results")
    pl.read_parquet(results).drop("statuses").write_parquet(results)
    with pytest.raises(SteptoolError, match=r"results.parquet: column\(s\) \['statuses'\] missing"):
        build_viewer(params, copy, tmp_path / "site")
    assert not (tmp_path / "site").exists()


@pytest.mark.skipif(missing() is not None, reason=f"no browser: {missing()}")
def test_in_chromium_untrusted_text_stays_text_and_the_rewards_are_the_parquet_values(run, tmp_path):
    from selenium.webdriver.common.by import By

    root, params = run
    site = tmp_path / "site"
    build_viewer(params, root, site)
    url = (site / "index.html").as_uri()
    with browser() as d:
        d.get(url)
        wait_view(d, "index")
        assert len(d.find_elements(By.CSS_SELECTOR, "#index tbody tr")) == 4
        at = [th.get_attribute("data-col") for th in d.find_elements(By.CSS_SELECTOR, "#index thead th")].index("return")
        returns = [tr.find_elements(By.CSS_SELECTOR, "td")[at].text for tr in d.find_elements(By.CSS_SELECTOR, "#index tbody tr")]
        assert all(re.fullmatch(r"-?\d+\.\d{3}|–", x) for x in returns) and "1.000" in returns, returns
        d.get(url + "#t/c1")
        wait_view(d, "trajectory")
        assert d.find_element(By.ID, "obs-0").get_attribute("textContent") == EVIL_OBS
        assert d.find_element(By.ID, "final-answer").get_attribute("textContent") == EVIL_ANSWER
        assert "window.PWNED=4" in d.find_element(By.CSS_SELECTOR, ".votes").get_attribute("textContent")
        assert d.find_element(By.ID, "query").get_attribute("textContent") == "What is <i>the</i> answer? </pre>"
        assert not d.find_elements(By.CSS_SELECTOR, "#app img, #app script, #app i, #app b")  # no markup from data
        shown = [[c.text for c in d.find_elements(By.CSS_SELECTOR, f'[data-step="{i}"] tr[data-variant="steptool"] td.num')]
                 for i in range(3)]
        assert shown == [[f"{x:.4f}" for x in row] for row in ROUND]
        d.get(url + "#t/steptool-cot-e-steptool")  # the judge's reason, as characters
        wait_view(d, "trajectory")
        assert [li.get_attribute("textContent") for li in d.find_elements(By.CSS_SELECTOR, "#judge-reasons li")] == [
            EVIL_REASON]
        assert not d.find_elements(By.CSS_SELECTOR, "#app img")
        d.get(url + "#c/tw-test-1")
        wait_view(d, "compare")
        assert d.find_element(By.ID, "pick-left").get_attribute("value") != d.find_element(By.ID, "pick-right").get_attribute("value")
        assert d.find_element(By.ID, "verdicts").text.split("\n")[0].startswith("judge")
        assert d.execute_script("return window.PWNED") is None  # nothing from the data ran
        assert console_errors(d) == []
