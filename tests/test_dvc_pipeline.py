"""A real `dvc repro` in a temporary git repository: builds, is a no-op the second time, re-annotates with
the openai judge in `dvc exp run`, and reruns only what a changed parameter touches. One pipeline run is
shared by the tests of this module (they run in file order; the last one changes the repository)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from pipeline import layout
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _run(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


DVC = [sys.executable, "-m", "dvc"]


# `make test` runs `pytest -n 2 --dist loadfile`: this file's tests stay on one worker, in order.
@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_model_dir):
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    dest = tmp_path_factory.mktemp("dvc") / "repo"
    for f in files:
        if f.startswith("tests/") or f == "dvc.lock":
            continue
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dest / f)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["tasks"]["train"] = {"I1": 8, "I2": 4, "I3": 4}
    params["tasks"]["test"] = {"I1": 4, "I2": 2, "I3": 2}
    params["base_model"]["source"] = str(tiny_model_dir)  # the real GGUF conversion has its own test
    params["warmstart"].update(max_tasks=4, batch_size=4, max_length=4096)
    params["agent"].update(max_steps=2, max_new_tokens=8)
    params["collect"].update(max_tasks=3, n_samples=2, chunk_size=2)
    # the default variants (steptool, ppo_outcome: step and token level); the others differ only in the reward
    # table and the registry's flags, which tests/test_trainer.py checks by hand
    params["evaluate"].update(models=["sft", "steptool"], strategies=["cot", "dfsdt"],
                              tasks_per_level={"cot": 1, "dfsdt": 1})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(dest), GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", DVC_NO_ANALYTICS="1")
    _run(["git", "init", "-q"], dest, env)
    _run(["git", "add", "-A"], dest, env)
    _run(["git", "commit", "-qm", "init"], dest, env)
    out = _run(DVC + ["repro"], dest, env)
    _run(["git", "add", "-A"], dest, env)
    _run(["git", "commit", "-qm", "reproduced"], dest, env)
    return dest, env, out


def test_repro_builds_every_stage(repo):
    dest, env, out = repo
    dvc = DVC
    for stage in ("tasks", "base_model", "warmstart", "collect", "annotate", "advantages@steptool",
                  "train@steptool", "train@ppo_outcome"):
        assert f"Running stage '{stage}'" in out
    for variant in ("steptool", "ppo_outcome"):
        assert (dest / layout.model_dir(variant) / "model.safetensors").exists()
        assert (dest / layout.model_dir(variant) / "value_head.pt").exists()
        train_metrics = json.loads((dest / layout.metrics_file("train", variant)).read_text())
        assert train_metrics["optimizer_steps"] >= 1 and "round_baseline_ev_rloo" in train_metrics
        rounds = pl.read_parquet(dest / layout.round_table(variant))
        assert rounds.height == pl.read_parquet(dest / layout.advantages_file(variant)).height
    plots = _run(dvc + ["plots", "show", "--json"], dest, env)
    assert "policy_loss" in plots and str(layout.FIGURES / "pass_rate.png") in plots and str(layout.WIN_RATE_CSV) in plots
    for model in ("sft", "steptool"):
        for strategy in ("cot", "dfsdt"):
            assert f"Running stage 'evaluate@{model}-{strategy}'" in out
            assert pl.read_parquet(dest / layout.table(layout.eval_dir(model, strategy), "results")).height == 3
    assert "Running stage 'report'" in out
    md = (dest / layout.RESULTS_MD).read_text()
    assert "| steptool | dfsdt |" in md and "## Ablation" in md
    assert "## Learning signal" in md and "comes from the **test** split" in md
    assert pl.read_parquet(dest / layout.tasks_file("val")).height > 0
    annotated = pl.read_parquet(dest / layout.table(layout.ANNOTATED, "steps"))
    assert annotated.height == pl.read_parquet(dest / layout.table(layout.TRAJECTORIES, "steps")).height
    assert set(annotated["annotator"]) == {"oracle"}
    train = pl.read_parquet(dest / layout.tasks_file("train"))
    trajs = pl.read_parquet(dest / layout.table(layout.TRAJECTORIES, "trajectories"))
    assert trajs.height == 6 and trajs["traj_id"].n_unique() == 6
    assert (dest / layout.SFT_MODEL / "model.safetensors").exists()
    metrics = _run(dvc + ["metrics", "show"], dest, env)
    assert "parse_success" in metrics and "train_loss" in metrics
    assert "steptool-cot" in metrics and "win_rate_vs_sft" in metrics
    assert train.height == 16 and set(train["level"]) == {"I1", "I2", "I3"}
    assert (dest / layout.BASE_MODEL / "model.safetensors").exists()
    lock = (dest / "dvc.lock").read_text()
    assert "toolworld" in lock


def test_a_second_repro_does_nothing(repo):
    dest, env, _ = repo
    out = _run(DVC + ["repro"], dest, env)
    assert "Running stage" not in out and "up to date" in out


def test_exp_run_with_the_openai_judge_then_a_rerun_makes_no_call(repo):
    """`dvc exp run annotate -S annotate.annotator=openai ...` against the scripted judge (faults on), then a
    forced rerun answered from the cache; the key is in no file."""
    from pipeline.annotate.scripted_judge_server import Faults, JudgeServer

    dest, env, _ = repo
    dvc = DVC
    secret = "sk-dvc-test-7d1c"
    env = dict(env, OPENAI_API_KEY=secret)
    server = JudgeServer(Faults(p_429=0.1, p_malformed=0.05, seed=2))
    try:
        sets = ["-S", "annotate.annotator=openai", "-S", f"annotate.base_url={server.url}", "-S", "annotate.n_votes=2"]
        out = _run(dvc + ["exp", "run", "annotate"] + sets, dest, env)
        assert "Running stage 'annotate'" in out
        metrics = json.loads((dest / layout.metrics_file("annotate")).read_text())
        assert metrics["annotator"] == "openai" and metrics["judge_calls"] > 0
        assert metrics["annotated"] + metrics["failed"] == 6
        calls = server.http_calls
        out = _run(dvc + ["exp", "run", "-f", "-s", "annotate"] + sets, dest, env)  # annotate alone
        assert "Running stage 'annotate'" in out
        metrics = json.loads((dest / layout.metrics_file("annotate")).read_text())
        assert metrics["judge_calls"] == 0 and metrics["cache_hits"] > 0 and server.http_calls == calls
    finally:
        server.close()
    for f in dest.rglob("*"):  # the key is in no file the pipeline wrote, dvc.lock and the cache included
        if f.is_file() and ".git" not in f.parts:
            assert secret.encode() not in f.read_bytes(), f


def test_a_changed_param_reruns_only_what_it_touches(repo):
    dest, env, _ = repo
    dvc = DVC
    _run(["git", "checkout", "--", "params.yaml", "dvc.lock"], dest, env)  # undo the experiment's -S keys
    train = pl.read_parquet(dest / layout.tasks_file("train"))
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["toolworld"]["seed"] = 99
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(dvc + ["repro", "annotate"], dest, env)  # (the rest of the chain is the same work again)
    assert "Running stage 'tasks'" in out and "Running stage 'base_model'" not in out
    assert "Running stage 'collect'" in out
    assert not pl.read_parquet(dest / layout.tasks_file("train"))["query"].equals(train["query"])
