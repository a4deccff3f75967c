"""A real `dvc repro` in a temporary git repository: builds (the viewer too, opened in Chromium), is a no-op the
second time, collects through an OpenAI-compatible server and re-annotates with the openai judge in one `dvc exp
run`, and reruns only what a changed parameter touches. One pipeline run is
shared by the tests of this module (they run in file order; the last one changes the repository)."""
from __future__ import annotations

import json
import subprocess

import polars as pl
import pytest
import yaml

from pipeline import layout
from tests.conftest import REPO
from tests.support.browser import browser, console_errors, wait_view
from tests.support.browser import missing as missing_browser
from tests.support.dvc_repo import DVC, commit, copy_repo, run

pytestmark = pytest.mark.slow


# `make test` runs `pytest -n 2 --dist loadfile`: this file's tests stay on one worker, in order.
@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_model_dir):
    dest = tmp_path_factory.mktemp("dvc") / "repo"
    env = copy_repo(REPO, dest)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["tasks"]["train"] = {"I1": 8, "I2": 4, "I3": 4}
    params["tasks"]["test"] = {"I1": 4, "I2": 2, "I3": 2}
    params["base_model"]["source"] = str(tiny_model_dir)  # the real GGUF conversion has its own test
    params["warmstart"].update(max_tasks=4, batch_size=4, max_length=4096)
    params["agent"].update(max_steps=2, max_new_tokens=8)
    params["rewards"]["audit_max_tasks"] = 1  # the audit of the first train task of each level (its math: test_reward_audit)
    params["collect"].update(max_tasks=3, n_samples=2, chunk_size=2, replay=True)
    # One variant and one seed (the suite's time is bounded): the other variants differ only in the reward table
    # and the registry's flags, which tests/test_trainer.py (ppo_outcome's token-level GAE and learning) and
    # tests/test_rewards.py check by hand, and tests/test_evaluate.py reports against ppo_outcome; a second seed's
    # chain is DVC's graph (the dry run of the last test) and its report tables are tests/test_evaluate.py's. One
    # round (several rounds inside a train stage: tests/test_rounds.py). DVCLive logs the training (its files
    # and `dvc plots show` are checked in the first test).
    params["variants"] = ["steptool"]
    params["train"].update(seeds=[0], rounds=1, report_to=["dvclive"])
    params["evaluate"].update(models=["sft", "steptool"], strategies=["cot"], tasks_per_level={"cot": 1, "dfsdt": 1})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    commit(dest, env, "init", init=True)
    out = run(DVC + ["repro"], dest, env)
    commit(dest, env, "reproduced")
    return dest, env, out


def test_repro_builds_every_stage(repo):
    dest, env, out = repo
    dvc = DVC
    for stage in ("tasks", "base_model", "warmstart", "collect@0", "annotate@0", "advantages@steptool-0",
                  "train@steptool-0", "evaluate@sft-cot", "evaluate@steptool-cot", "report", "view"):
        assert f"Running stage '{stage}'" in out
    assert "ppo_outcome" not in out and "collect@1" not in out
    for variant in ("steptool",):
        for seed in (0,):
            assert (dest / layout.model_dir(variant, seed) / "model.safetensors").exists()
            assert (dest / layout.model_dir(variant, seed) / "value_head.pt").exists()
            train_metrics = json.loads((dest / layout.metrics_file("train", layout.run_name(variant, seed))).read_text())
            assert train_metrics["rounds"] == 1 and train_metrics["round"] == 1
            assert train_metrics["optimizer_steps"] >= 2 and "round_baseline_ev_rloo" in train_metrics
            # the round trained on the collect stage's trajectories, and replayed the train tasks after training
            # (round 2 and later, which collect and annotate inside the stage: tests/test_rounds.py)
            r1 = pl.read_parquet(dest / layout.round_dir(variant, seed, 1) / "round.parquet")
            adv = pl.read_parquet(dest / layout.advantages_file(variant, seed))
            assert r1.height == adv.height
            # data/advantages holds exactly what the round trained on: the same reward and return on every step
            both = r1.join(adv, on=["traj_id", "step_idx"], suffix="_table")
            assert both.height == r1.height
            assert (both["reward"] == both["reward_table"]).all() and (both["return"] == both["return_table"]).all()
            audit = json.loads((dest / layout.metrics_file("advantages", layout.run_name(variant, seed))).read_text())
            assert audit["audit"]["tasks"] == 3 and audit["audit"]["padded_beats_direct"] == 0.0
            round1 = json.loads((dest / layout.round_dir(variant, seed, 1) / "metrics.json").read_text())
            assert round1["replay"]["tasks"] == 3
            log = json.loads((dest / layout.train_plot(variant, seed)).read_text())
            assert {h["round"] for h in log} == {1}
            assert [h["step"] for h in log] == sorted(h["step"] for h in log)
        assert not (dest / layout.checkpoint_dir(variant, 0)).exists()  # the work is removed when done
    assert pl.read_parquet(dest / layout.table(layout.trajectories_dir(0), "trajectories")).height == 6
    assert json.loads((dest / layout.metrics_file("collect", "s0")).read_text())["replay"]["tasks"] == 3
    plots = run(dvc + ["plots", "show", "--json"], dest, env)
    assert "policy_loss" in plots and str(layout.FIGURES / "pass_rate.png") in plots and str(layout.WIN_RATE_CSV) in plots
    # DVCLive (train.report_to): train@steptool-0 logged through the Trainer's callback into
    # dvclive/train/steptool/s0/r1 with its own dvc.yaml, so `dvc plots show` has its curves and `dvc exp show` its
    # values; the pipeline's dvc.yaml is the committed one
    live = dest / layout.dvclive_dir("train", "steptool/s0") / "r1"
    assert (live / "dvc.yaml").exists() and (live / "metrics.json").exists()
    assert list((live / "plots" / "metrics").rglob("*.tsv"))
    assert "dvclive/train/steptool/s0/r1/plots/metrics" in plots
    assert "dvclive/train/steptool/s0/r1/metrics.json" in run(dvc + ["exp", "show", "--json"], dest, env)
    assert (dest / "dvc.yaml").read_text() == (REPO / "dvc.yaml").read_text()
    results = pl.read_parquet(dest / layout.table(layout.eval_dir("steptool", "cot"), "results"))
    assert results.height == 3 and results["seed"].to_list() == [0, 0, 0]
    assert pl.read_parquet(dest / layout.table(layout.eval_dir("sft", "cot"), "results")).height == 3
    md = (dest / layout.RESULTS_MD).read_text()
    assert "| steptool | cot |" in md and "## Ablation" in md and "one training run (seed) per trained variant" in md
    assert "## Learning signal" in md and "comes from the **test** split" in md and "| steptool | 0 | 1 |" in md
    assert "replay pass rate" in md and "## Reward audit" in md and "| progress | 1 |" in md
    assert "## Did training move the policy?" in md and "| steptool | 1 |" in md  # one seed: no interval
    assert pl.read_parquet(dest / layout.tasks_file("val")).height > 0
    annotated = pl.read_parquet(dest / layout.table(layout.annotated_dir(0), "steps"))
    assert annotated.height == pl.read_parquet(dest / layout.table(layout.trajectories_dir(0), "steps")).height
    assert set(annotated["annotator"]) == {"oracle"}
    train = pl.read_parquet(dest / layout.tasks_file("train"))
    assert (dest / layout.SFT_MODEL / "model.safetensors").exists()
    metrics = run(dvc + ["metrics", "show"], dest, env)
    assert "parse_success" in metrics and "train_loss" in metrics
    assert "steptool-cot" in metrics and "win_rate_vs_sft" in metrics
    assert train.height == 16 and set(train["level"]) == {"I1", "I2", "I3"}
    assert (dest / layout.BASE_MODEL / "model.safetensors").exists()
    lock = (dest / "dvc.lock").read_text()
    assert "toolworld" in lock


@pytest.mark.skipif(missing_browser() is not None, reason=f"no browser: {missing_browser()}")
def test_the_viewer_of_the_run_in_chromium(repo):
    """`dvc repro` built reports/viewer; opened from disk in headless Chromium it shows every trajectory of the run,
    its filters and sort change the rows, a collected trajectory's rewards are the round table's, and the
    evaluated test task compares sft and steptool side by side, with no console error."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    dest, _, _ = repo
    collected = pl.read_parquet(dest / layout.table(layout.trajectories_dir(0), "trajectories")).height
    evaluated = sum(pl.read_parquet(dest / layout.table(layout.eval_dir(m, "cot"), "results")).height
                    for m in ("sft", "steptool"))
    table = pl.read_parquet(dest / layout.round_dir("steptool", 0, 1) / "round.parquet")
    traj = table["traj_id"][0]
    assert table["ratio"].null_count() == table["clipped"].null_count() == 0  # every step was trained on
    url = (dest / layout.VIEWER / "index.html").as_uri()
    with browser() as d:
        d.get(url)
        wait_view(d, "index")
        assert d.find_element(By.ID, "summary").text == (f"{collected + evaluated} trajectories ({collected} collected, "
                                                         f"{evaluated} evaluated)")
        Select(d.find_element(By.ID, "filter-kind")).select_by_value("eval")
        kinds = [r.text for r in d.find_elements(By.CSS_SELECTOR, "#index tbody tr td:nth-child(2)")]
        assert kinds == ["eval"] * evaluated
        d.find_element(By.CSS_SELECTOR, 'th[data-col="steps"]').click()
        steps = [int(r.text) for r in d.find_elements(By.CSS_SELECTOR, "#index tbody tr td:nth-child(12)")]
        assert steps == sorted(steps) and len(steps) == evaluated
        task = d.find_element(By.CSS_SELECTOR, "#index tbody tr td:nth-child(3)").text.split()[0]
        d.get(f"{url}#t/{traj}")
        wait_view(d, "trajectory")
        rows = table.filter(pl.col("traj_id") == traj).sort("step_idx")
        for r in rows.iter_rows(named=True):
            cells = d.find_elements(By.CSS_SELECTOR, f'[data-step="{r["step_idx"]}"] tr[data-variant="steptool"] td.num')
            assert [c.text for c in cells] == [f"{r[k]:.4f}" for k in ("reward", "return", "baseline", "advantage",
                                                                       "ratio", "clipped")]
        d.get(f"{url}#c/{task}")
        wait_view(d, "compare")
        picked = {Select(d.find_element(By.ID, f"pick-{side}")).first_selected_option.text.split(" · ")[0]
                  for side in ("left", "right")}
        assert picked == {"sft", "steptool"}
        assert console_errors(d) == []


def test_a_second_repro_does_nothing(repo):
    dest, env, _ = repo
    out = run(DVC + ["repro"], dest, env)
    assert "Running stage" not in out and "up to date" in out


def test_a_bad_param_under_dvc_repro_leaves_the_previous_outputs(repo):
    """DVC removes a stage's outputs before running it; the stage that refuses its params puts them back from the
    DVC cache (pipeline/dvc_restore.py), and its metrics file, which DVC does not cache, DVC leaves in place
    (persist), so a typo costs nothing."""
    dest, env, _ = repo
    files = [layout.advantages_file("steptool", 0), layout.metrics_file("advantages", layout.run_name("steptool", 0))]
    before = {f: (dest / f).read_bytes() for f in files}
    text = (dest / "params.yaml").read_text()
    params = yaml.safe_load(text)
    params["rewards"]["alpha"] = -1.0
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        proc = subprocess.run(DVC + ["repro", "advantages@steptool-0"], cwd=dest, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode != 0
        assert "rewards.alpha must be >= 0, got -1.0" in proc.stderr
        assert "the previous outputs are back" in proc.stderr and "Traceback" not in proc.stderr
        assert {f: (dest / f).read_bytes() for f in files} == before
    finally:
        (dest / "params.yaml").write_text(text)
    assert "Running stage" not in run(DVC + ["repro"], dest, env)  # nothing to redo: the outputs are the same


def test_exp_run_with_the_openai_backend_and_judge_then_a_rerun_makes_no_call(repo, tokenizer):
    """One `dvc exp run annotate@0` with both OpenAI-compatible parts: collect@0 plays through the loopback
    completions server serving the repository's checkpoints by path (as `vllm serve data/models/sft` does; evaluate
    calls the same `play`): prompts go as token ids, names through the trigger's stop string (and the
    structured-output choice when the model reaches it), and the server's log-probs are the recorded behaviour
    log-probs; then annotate@0 labels those trajectories through the scripted judge (faults on), and a forced rerun
    of annotate alone is answered from the judge's cache. Neither key is in any file the pipeline wrote. A numeric
    `-S` value comes back from DVC's YAML writer as a number (DVC writes 2e-05, which PyYAML reads as a string)."""
    import math

    from transformers import AutoModelForCausalLM

    from pipeline.annotate.scripted_judge_server import Faults, JudgeServer
    from pipeline.config import load_params
    from tests.support.openai_server import CompletionServer

    dest, env, _ = repo
    judge_key, server_key = "sk-dvc-test-7d1c", "vllm-key-3e9a"
    env = dict(env, OPENAI_API_KEY=judge_key, VLLM_API_KEY=server_key)
    server = CompletionServer({}, tokenizer, load=lambda name: AutoModelForCausalLM.from_pretrained(dest / name))
    judge = JudgeServer(Faults(p_429=0.1, seed=2))  # malformed answers are not cached: tests/test_annotate.py
    try:
        sets = ["-S", "agent.backend=openai", "-S", f"agent.base_url={server.url}", "-S", "collect.replay=false",
                "-S", "train.learning_rate=2e-5", "-S", "annotate.annotator=openai",
                "-S", f"annotate.base_url={judge.url}", "-S", "annotate.n_votes=2",
                "-S", "rewards.shaping=min_form"]  # the default 'progress' reads the oracle's facts
        out = run(DVC + ["exp", "run", "annotate@0"] + sets, dest, env)
        assert "Running stage 'collect@0'" in out and "Running stage 'annotate@0'" in out
        reqs = list(server.requests_seen)
        metrics = json.loads((dest / layout.metrics_file("annotate", "s0")).read_text())
        assert metrics["annotator"] == "openai" and metrics["judge_calls"] > 0
        assert metrics["annotated"] + metrics["failed"] == 6
        calls = judge.http_calls
        out = run(DVC + ["exp", "run", "-f", "-s", "annotate@0"] + sets, dest, env)  # annotate alone
        assert "Running stage 'annotate@0'" in out and "Running stage 'collect@0'" not in out
        metrics = json.loads((dest / layout.metrics_file("annotate", "s0")).read_text())
        assert metrics["judge_calls"] == 0 and metrics["cache_hits"] > 0 and judge.http_calls == calls
    finally:
        server.close()
        judge.close()
    assert set(server.models) == {str(layout.SFT_MODEL)}, server.models.keys()
    assert reqs and all(isinstance(r["prompt"], list) and all(isinstance(t, int) for t in r["prompt"]) for r in reqs)
    assert all(r["return_tokens_as_token_ids"] and r["logprobs"] is not None for r in reqs)
    assert any(r.get("stop") == ["\nAction:"] for r in reqs)  # the name slot's first request
    assert all(set(r["structured_outputs"]["choice"]) for r in reqs if "structured_outputs" in r)
    tokens = pl.read_parquet(dest / layout.table(layout.trajectories_dir(0), "tokens"))
    lps = [x for row in tokens["logprobs"].to_list() for x in row]
    assert lps and all(math.isfinite(x) and x <= 0 for x in lps)  # the server's, none missing
    assert sum(len(r) for r in tokens["action_ids"].to_list()) == len(lps)
    assert "2e-05" in (dest / "params.yaml").read_text()
    assert load_params(dest / "params.yaml").train.learning_rate == 2e-5
    for f in dest.rglob("*"):  # the keys are in no file the pipeline wrote, dvc.lock and the cache included
        if f.is_file() and ".git" not in f.parts:
            data = f.read_bytes()
            assert judge_key.encode() not in data and server_key.encode() not in data, f
    run(["git", "checkout", "--", "params.yaml", "dvc.lock"], dest, env)
    run(DVC + ["checkout", "-f"], dest, env)


def test_a_changed_param_reruns_only_what_it_touches(repo):
    """A collect param makes `dvc repro annotate@0` rerun collect@0, and nothing upstream; a second
    training seed adds its own chain and keeps the first seed's data (dry runs: which stages run is DVC's graph of
    declared deps and params, and running them is the same work as the first test's)."""
    dest, env, _ = repo
    run(["git", "checkout", "--", "params.yaml", "dvc.lock"], dest, env)  # undo the experiment's -S keys
    before = (dest / layout.table(layout.trajectories_dir(0), "trajectories")).read_bytes()
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["collect"]["temperature"] = 1.3
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(DVC + ["repro", "--dry", "annotate@0"], dest, env)
    assert "Running stage 'collect@0'" in out  # annotate@0 follows once collect's outputs change (not in a dry run)
    for untouched in ("tasks", "base_model", "warmstart"):
        assert f"Running stage '{untouched}'" not in out, untouched
    assert (dest / layout.table(layout.trajectories_dir(0), "trajectories")).read_bytes() == before
    # a second seed: its own chain, wired to its own files, and the evaluation of every seed's checkpoint; seed 0's
    # collection, annotation and rewards are kept
    params["collect"]["temperature"] = yaml.safe_load((REPO / "params.yaml").read_text())["collect"]["temperature"]
    params["train"]["seeds"] = [0, 1]
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(run(DVC + ["status", "--json"], dest, env).splitlines()[-1])
    for stage in ("collect@1", "annotate@1", "advantages@steptool-1", "train@steptool-1", "evaluate@steptool-cot"):
        assert stage in status, stage
    for kept in ("collect@0", "annotate@0", "advantages@steptool-0", "warmstart"):
        assert kept not in status, kept  # the experiment's outputs came back with `dvc checkout`, metrics too
    train1 = json.dumps(status["train@steptool-1"])
    for path in (layout.trajectories_dir(1), layout.advantages_file("steptool", 1), layout.model_dir("steptool", 1)):
        assert str(path) in train1, path
    # code deps are the stages' imports (pipeline/depgraph.py): an edit to the rule judge reruns every stage that
    # judges by it, and not the ones that cannot run it
    params["train"]["seeds"] = [0]
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    judge = dest / "pipeline" / "toolworld" / "fact_judge.py"
    source = judge.read_text()
    judge.write_text(source + "\n# a changed rule\n")
    try:
        status = json.loads(run(DVC + ["status", "--json"], dest, env).splitlines()[-1])
    finally:
        judge.write_text(source)
    outdated = {stage for stage, why in status.items() if "fact_judge.py" in json.dumps(why)}
    assert outdated == {"collect@0", "annotate@0", "advantages@steptool-0", "train@steptool-0", "evaluate@sft-cot",
                        "evaluate@steptool-cot", "report"}  # report reads results.py, which imports the judge
    assert not outdated & {"tasks", "base_model", "warmstart"}
