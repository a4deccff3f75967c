"""Choosing the study's settings on val (pipeline/val_grid.py): candidates merged over the base profile, the test
split refused, every candidate run once (a rerun resumes), and the selection by the grid's rule. `dvc repro` is
replaced by a function that writes what the pipeline would (evaluation results, replays, metrics) from the
candidate's params file (written by the grid from the real config code) and then runs the real report stage."""
from __future__ import annotations

import json

import pytest
import yaml

from pipeline import layout
from pipeline.config import load_params
from pipeline.errors import ConfigError
from pipeline.schema import EVAL_RESULTS, write_table
from pipeline.val_grid import deep_merge, load_grid, run_grid, write_selection
from stages import report

GRID = {
    "profile": "base.yaml",
    "common": {"variants": ["steptool"], "train": {"seeds": [0]},
               "evaluate": {"split": "val", "models": ["sft", "steptool"]}},
    "candidates": {"slow": {"train": {"learning_rate": 1.0e-5}},
                   "fast": {"train": {"learning_rate": 3.0e-5}, "rewards": {"shaping": "progress", "call_cost": 0.05}}},
    "select": {"model": "steptool", "strategy": "cot"},
}
# the val tasks a candidate solves, by learning rate: "fast" solves more (the rule must pick it)
SOLVED = {1.0e-5: 2, 3.0e-5: 3}


def _rows(model, seed, solved, n=4, calls=2):
    return [{"model": model, "strategy": "cot", "task_id": f"t{i}", "level": "I1", "seed": seed, "sample_idx": 0,
             "traj_id": f"{model}-{i}", "judge": "rule", "statuses": ["Solved" if i < solved else "Unsolved"],
             "pass_score": 1.0 if i < solved else 0.0, "finish_type": "give_answer" if i < solved else "none",
             "final_answer": "x", "n_steps": calls + 1, "n_calls": calls, "n_calls_ok": calls, "facts_stated": 1,
             "n_facts": 1, "actions_generated": calls + 1} for i in range(n)]


def _fake_repro(ws):
    """What a val run leaves that the selection reads, from the params the real CLI wrote; then the real report."""
    p = load_params(ws / "params.yaml")
    assert p.evaluate.split == "val"
    solved = SOLVED[p.train.learning_rate]
    write_table(_rows("sft", None, 1), ws / layout.table(layout.eval_dir("sft", "cot"), "results"), EVAL_RESULTS)
    write_table(_rows("steptool", 0, solved), ws / layout.table(layout.eval_dir("steptool", "cot"), "results"),
                EVAL_RESULTS)
    write_table(_rows("sft", None, 1, calls=4), ws / layout.replay_dir(layout.trajectories_dir(0)) / "results.parquet",
                EVAL_RESULTS)
    write_table(_rows("steptool", 0, solved, calls=2), ws / layout.round_dir("steptool", 0, 1) / "replay" /
                "results.parquet", EVAL_RESULTS)
    (ws / layout.round_dir("steptool", 0, 1) / "metrics.json").write_text(json.dumps({"final_kl_ref_token": 0.003}))
    audit = ws / layout.metrics_file("advantages", layout.run_name("steptool", 0))  # the shares the table reads,
    audit.unlink(missing_ok=True)  # written after the report, which would want the whole audit summary
    report.run(p, ws)
    audit.parent.mkdir(parents=True, exist_ok=True)
    audit.write_text(json.dumps({"audit": {"padded_beats_direct": 0.0, "finish_preferred": 1.0}}))


@pytest.fixture
def grid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"collect": {"n_samples": 4}, "train": {"seeds": [0, 1, 2]}}))
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(GRID, sort_keys=False))
    (tmp_path / "ws").mkdir()
    return tmp_path / "grid.yaml"


def test_candidates_merge_over_the_base_and_test_is_refused(grid, tmp_path):
    g = load_grid(grid)
    fast = g["profiles"]["fast"]
    assert fast["train"] == {"seeds": [0], "learning_rate": 3.0e-5}  # the list replaced, the section merged
    assert fast["collect"] == {"n_samples": 4} and fast["rewards"]["shaping"] == "progress"
    assert deep_merge({"a": {"b": 1, "c": [1]}}, {"a": {"c": [2]}}) == {"a": {"b": 1, "c": [2]}}
    for bad, match in (({**GRID, "common": {"evaluate": {"split": "test"}}}, "chooses on val"),
                       ({**GRID, "candidates": {"../x": {}}}, "folder name"),
                       ({**GRID, "candidates": {"x": {"evaluate": {"split": "test"}}}}, "must stay val")):
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError, match=match):
            load_grid(tmp_path / "bad.yaml")


def test_grid_runs_each_candidate_once_and_selects_by_the_rule(grid, tmp_path):
    calls = []

    def runner(cmd, cwd, env):
        calls.append(cmd)
        _fake_repro(cwd)

    out = tmp_path / "val"
    assert run_grid(grid, tmp_path / "ws", out, runner=runner, log=lambda s: None) == ["slow", "fast"]
    assert calls == [["dvc", "repro"]] * 2
    sel = json.loads((out / "selection.json").read_text())
    assert sel["chosen"] == "fast" and sel["pending"] == []
    assert sel["candidates"]["slow"]["pass"]["mean"] == 50.0 and sel["candidates"]["fast"]["pass"]["mean"] == 75.0
    assert sel["candidates"]["fast"]["vs_ref"]["diff"] == 50.0  # 3 of 4 solved against sft's 1 of 4
    assert sel["candidates"]["fast"]["replay_diff"]["diff"] == 50.0  # the replay: 1 -> 3 of 4 train tasks
    md = (out / "selection.md").read_text()
    assert "**fast**" in md and "**Chosen: fast**" in md and "rewards.shaping=progress" in md
    assert "4.00 → 2.00" in md  # replay calls per task before -> after
    assert "The reference on val: sft 25.0 [" in md
    assert (out / "fast" / "RUN.md").exists() and (out / "fast" / "params.yaml").exists()

    assert run_grid(grid, tmp_path / "ws", out, runner=runner, log=lambda s: None) == []  # resumes: nothing left
    (out / "slow" / "RUN.md").unlink()  # a candidate a stopped session never finished
    assert write_selection(grid, out) is None
    assert "Not run yet: slow" in (out / "selection.md").read_text()


def test_a_bad_candidate_stops_before_anything_runs(grid, tmp_path):
    bad = {**GRID, "candidates": {"odd": {"rewards": {"shaping": "everything"}}}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    ran = []
    with pytest.raises(ConfigError, match="shaping"):
        run_grid(tmp_path / "bad.yaml", tmp_path / "ws", tmp_path / "val", runner=lambda *a: ran.append(a),
                 log=lambda s: None)
    assert ran == [] and not (tmp_path / "val" / "odd").exists()
