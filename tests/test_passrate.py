"""Pass rate as StableToolBench computes it: hand-computed cases and the published StepTool figures."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.errors import SchemaError
from pipeline.evaluate.passrate import group_rates, method_pass_rates, rate_of, run_scores


def test_run_scores_count_unsure_as_half():
    # 4 queries, 2 runs. Run 0: S, U, X, S -> (2 + 0.5) / 4 = 62.5 %. Run 1: S, S, X, X -> 50 %.
    statuses = [["Solved", "Solved"], ["Unsure", "Solved"], ["Unsolved", "Unsolved"], ["Solved", "Unsolved"]]
    assert run_scores(statuses) == [62.5, 50.0]
    r = rate_of(statuses)
    assert r.mean == pytest.approx(56.25)
    assert r.std == pytest.approx(6.25)  # population std of {62.5, 50}
    assert (r.n_queries, r.n_runs) == (4, 2)


def test_groups_average_their_subsets():
    subsets = {"G1_instruction": rate_of([["Solved"]]), "G1_tool": rate_of([["Unsolved"], ["Unsure"]]),
               "G3_instruction": rate_of([["Unsure"]])}
    g = group_rates(subsets)
    assert g["I1"].mean == pytest.approx((100 + 25) / 2)  # mean of subsets, not pooled over queries (would be 50)
    assert g["I3"].mean == pytest.approx(50.0)
    assert "I2" not in g


def test_runs_of_different_length_are_an_error():
    with pytest.raises(SchemaError, match="different number"):
        run_scores([["Solved", "Solved"], ["Solved"]])


def test_bad_status_names_file_and_query(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "G1_tool.json").write_text(json.dumps({"42": {"is_solved": {"0": "AnswerStatus.Maybe"}}}))
    with pytest.raises(SchemaError, match=r"G1_tool.json: query 42: field 'is_solved'"):
        method_pass_rates(folder)


def test_reproduces_published_steptool_cot(external):
    """The StepTool README: CoT I1 61.1 +- 0.7, I2 56.6 +- 2.2 (ToolLLaMA-2-7b-v2, GPT-4 judge, 3 judgings)."""
    out = subprocess.run([sys.executable, "-m", "steptool", "pass-rate",
                          str(external / "steptool/pass_rate_results/steptool_cot"), "--compact"],
                         capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    assert round(got["groups"]["I1"]["mean"], 1) == 61.1
    assert round(got["groups"]["I1"]["std"], 1) == 0.7
    assert round(got["groups"]["I2"]["mean"], 1) == 56.6
    assert round(got["groups"]["I2"]["std"], 1) == 2.2
    assert got["subsets"]["G1_instruction"]["n_queries"] == 163
    assert set(got["subsets"]) == {"G1_instruction", "G1_category", "G1_tool", "G2_instruction", "G2_category",
                                   "G3_instruction"}


def test_other_methods_give_their_own_table(external):
    root = external / "steptool/pass_rate_results"
    table = {d.name: method_pass_rates(d)["groups"] for d in sorted(root.iterdir()) if d.is_dir()}
    assert len(table) == 8
    # The paper's claim on this data: StepTool CoT beats the SFT model with CoT on I1 and I2.
    for g in ("I1", "I2"):
        assert table["steptool_cot"][g]["mean"] > table["toolllama_sft_cot"][g]["mean"]
    assert "G1_category" not in method_pass_rates(root / "baseline-eto_cot")["subsets"]  # a missing file is skipped


def test_runs_are_read_in_numeric_order(tmp_path):
    """Run "10" comes after run "2" (a text sort would put it third): statuses are [query][run] by run number."""
    from pipeline.evaluate.passrate import subset_statuses

    runs = {"10": "AnswerStatus.Unsolved", "2": "AnswerStatus.Unsure", "0": "AnswerStatus.Solved",
            "1": "AnswerStatus.Solved"}
    (tmp_path / "G1_tool.json").write_text(json.dumps({"7": {"is_solved": runs}}))
    assert subset_statuses(tmp_path / "G1_tool.json") == [["Solved", "Solved", "Unsure", "Unsolved"]]
