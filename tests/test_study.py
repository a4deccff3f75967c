"""A study in pieces (pipeline/study.py): one piece per training seed keeps the report's inputs, and the merge lays
them out as one run with every seed; a seedless model (sft) is taken once and must agree across pieces."""
from __future__ import annotations

import json

import polars as pl
import pytest

from pipeline import layout
from pipeline.errors import SteptoolError
from pipeline.schema import EVAL_RESULTS, write_table
from pipeline.study import merge_pieces, save_piece


def _results(model, seed, statuses):
    return [{"model": model, "strategy": "cot", "task_id": f"t{i}", "level": "I1", "seed": seed, "sample_idx": 0,
             "traj_id": f"{model}-{seed}-{i}", "judge": "rule", "statuses": [s], "pass_score": 1.0 if s == "Solved" else 0.0,
             "finish_type": "give_answer", "final_answer": "x", "n_steps": 2, "n_calls": 1, "n_calls_ok": 1,
             "facts_stated": 1, "n_facts": 1, "actions_generated": 2} for i, s in enumerate(statuses)]


def _workspace(root, seed, sft=("Solved", "Unsolved"), variant="steptool", before=("Solved", "Unsolved")):
    for model, s, statuses in (("sft", None, sft), (variant, seed, ("Solved", "Solved"))):
        write_table(_results(model, s, statuses), root / layout.table(layout.eval_dir(model, "cot"), "results"),
                    EVAL_RESULTS)
    write_table(_results("sft", seed, before),  # the greedy replay of the train tasks before training
                root / layout.table(layout.replay_dir(layout.trajectories_dir(seed)), "results"), EVAL_RESULTS)
    for rel, text in ((layout.round_dir(variant, seed, 1) / "metrics.json", {"round": 1, "seed": seed}),
                      (layout.metrics_file("train", layout.run_name(variant, seed)), {"seed": seed}),
                      (layout.metrics_file("collect", layout.seed_dir(seed)), {"trajectories_per_min": len(str(root))}),
                      (layout.metrics_file("warmstart"), {"seconds": 900 + seed})):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(text))
    (root / layout.SFT_MODEL).mkdir(parents=True)
    (root / layout.SFT_MODEL / "model.safetensors").write_bytes(b"weights stay behind")
    return root


def test_pieces_save_and_merge(tmp_path):
    pieces = []
    for seed in (0, 1):
        ws = _workspace(tmp_path / f"ws{seed}", seed)
        files = save_piece(ws, tmp_path / f"pieces/s{seed}")
        assert str(layout.table(layout.eval_dir("steptool", "cot"), "results")) in files
        assert not any(f.startswith(str(layout.MODELS)) for f in files)
        pieces.append(tmp_path / f"pieces/s{seed}")
    out = tmp_path / "merged"
    seeds = merge_pieces(pieces, out)
    assert seeds == {"sft-cot": [], "steptool-cot": [0, 1]}
    steptool = pl.read_parquet(out / layout.table(layout.eval_dir("steptool", "cot"), "results"))
    assert sorted(steptool["seed"].to_list()) == [0, 0, 1, 1]
    assert pl.read_parquet(out / layout.table(layout.eval_dir("sft", "cot"), "results")).height == 2  # once
    assert (out / layout.round_dir("steptool", 1, 1) / "metrics.json").exists()
    assert json.loads((out / layout.metrics_file("warmstart")).read_text())["seconds"] == 900  # the first piece's
    with pytest.raises(SteptoolError, match="another piece too|more than one piece"):
        merge_pieces([pieces[0], pieces[0]], tmp_path / "twice")


def test_pieces_that_disagree_on_sft_are_refused(tmp_path):
    a = save_piece(_workspace(tmp_path / "a", 0), tmp_path / "p/s0")
    b = save_piece(_workspace(tmp_path / "b", 1, sft=("Solved", "Solved")), tmp_path / "p/s1")
    assert a and b
    with pytest.raises(SteptoolError, match="sft-cot's judged answers differ"):
        merge_pieces([tmp_path / "p/s0", tmp_path / "p/s1"], tmp_path / "merged")
    with pytest.raises(SteptoolError, match="not been evaluated"):
        save_piece(tmp_path / "nothing", tmp_path / "p/s9")


def test_one_seed_split_by_variant(tmp_path):
    """Two pieces of seed 0 with different variants merge into one run: each variant's rounds and evaluation once,
    the seed's collection metrics from the first piece, its greedy replay before training only if both agree."""
    a = tmp_path / "p/s0-steptool"
    b = tmp_path / "p/s0-ppo_outcome"
    save_piece(_workspace(tmp_path / "a", 0), a)
    save_piece(_workspace(tmp_path / "bb", 0, variant="ppo_outcome"), b)
    seeds = merge_pieces([a, b], tmp_path / "merged")
    assert seeds == {"sft-cot": [], "steptool-cot": [0], "ppo_outcome-cot": [0]}
    for v in ("steptool", "ppo_outcome"):
        assert (tmp_path / "merged" / layout.round_dir(v, 0, 1) / "metrics.json").exists()
    collect = json.loads((tmp_path / "merged" / layout.metrics_file("collect", layout.seed_dir(0))).read_text())
    assert collect == {"trajectories_per_min": len(str(tmp_path / "a"))}  # the first piece's (timings differ)
    c = tmp_path / "p/s0-ppo_outcome-again"
    save_piece(_workspace(tmp_path / "c", 0, variant="ppo_outcome"), c)
    with pytest.raises(SteptoolError, match="same seed and variant"):
        merge_pieces([a, b, c], tmp_path / "thrice")
    d = tmp_path / "p/s0-no_step_opt"
    save_piece(_workspace(tmp_path / "d", 0, variant="no_step_opt", before=("Solved", "Solved")), d)
    with pytest.raises(SteptoolError, match="replay.*judged answers differ"):
        merge_pieces([a, d], tmp_path / "disagree")


def test_a_piece_on_a_machine_of_another_precision_is_refused_before_it_runs(tmp_path, monkeypatch, capsys):
    """`make study-piece` runs `steptool study-check` first: a piece records the precision its run resolved to (the
    RUN.md line), an older piece the AMX flag of its machine line (auto is bf16 with AMX, fp32 without); a machine
    that resolves otherwise is refused naming the piece, before hours of work the merge would refuse."""
    from pipeline import devices
    from pipeline.study import check_machine, piece_precision
    from steptool.cli import main
    from tests.conftest import REPO

    pieces = tmp_path / "pieces"
    old, new, bare = pieces / "s0", pieces / "s1-steptool", pieces / "s2"
    for p in (old, new, bare):
        p.mkdir(parents=True)
    (old / "RUN.md").write_text("# How\n\n- machine: 2 cores, Intel(R) Xeon(R) Processor, AMX: yes\n- torch 2.13.0\n")
    (new / "RUN.md").write_text("- machine: 2 cores, Intel(R) Xeon(R) Platinum, AMX: yes\n- precision: agent bf16, "
                                "warmstart bf16, train bf16\n")
    (tmp_path / "fp32").mkdir()
    (tmp_path / "fp32" / "RUN.md").write_text("- machine: 2 cores, AMD EPYC, AMX: no\n")
    assert piece_precision(old) == piece_precision(new) == "agent bf16, warmstart bf16, train bf16"
    assert piece_precision(tmp_path / "fp32") == "agent fp32, warmstart fp32, train fp32"
    assert piece_precision(bare) is None  # no RUN.md: nothing to compare
    check_machine(pieces, "agent bf16, warmstart bf16, train bf16")
    with pytest.raises(SteptoolError, match="s0: made with precision agent bf16, warmstart bf16, train bf16, this "
                                            "machine gives agent fp32, warmstart fp32, train fp32"):
        check_machine(pieces, "agent fp32, warmstart fp32, train fp32")
    # bf16 set explicitly on a CPU without AMX: the same words, other kernels (another sft)
    check_machine(pieces, "agent bf16, warmstart bf16, train bf16", amx=True)
    check_machine(pieces, "agent bf16, warmstart bf16, train bf16", amx=None)  # a GPU: the CPU's kernels do not apply
    with pytest.raises(SteptoolError, match="s0: made in bf16 on a CPU with AMX, this machine's bf16 runs without it"):
        check_machine(pieces, "agent bf16, warmstart bf16, train bf16", amx=False)
    fp32_only = tmp_path / "fp32-pieces"
    (fp32_only / "s0").mkdir(parents=True)
    (fp32_only / "s0" / "RUN.md").write_text("- machine: 2 cores, Intel(R) Xeon(R) Platinum, AMX: yes\n"
                                              "- precision: agent fp32, warmstart fp32, train fp32\n")
    check_machine(fp32_only, "agent fp32, warmstart fp32, train fp32", amx=False)  # fp32 does not use AMX
    # the command: this machine's precision from the params, refused or printed as RUN.md's line
    monkeypatch.setattr(devices, "_cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(devices, "cpu_amx_kernels", lambda: False)
    assert main(["study-check", str(pieces), "--params", str(REPO / "params.yaml")]) == 2
    assert "s0: made with precision agent bf16" in capsys.readouterr().err
    monkeypatch.setattr(devices, "_cpu_has_fast_bf16", lambda: True)
    assert main(["study-check", str(pieces), "--params", str(REPO / "params.yaml")]) == 2  # bf16 without AMX
    assert "made in bf16 on a CPU with AMX" in capsys.readouterr().err
    monkeypatch.setattr(devices, "cpu_amx_kernels", lambda: True)
    assert main(["study-check", str(pieces), "--params", str(REPO / "params.yaml")]) == 0
    assert capsys.readouterr().out == "- precision: agent bf16, warmstart bf16, train bf16\n"


def _half_made(root, seed, sft=("Solved", "Unsolved"), before=("Solved", "Unsolved")):
    """A piece's workspace after `dvc repro evaluate@sft-cot collect@<seed>`: sft's evaluation and the seed's greedy
    replay before training, nothing trained yet."""
    write_table(_results("sft", None, sft), root / layout.table(layout.eval_dir("sft", "cot"), "results"), EVAL_RESULTS)
    write_table(_results("sft", seed, before),
                root / layout.table(layout.replay_dir(layout.trajectories_dir(seed)), "results"), EVAL_RESULTS)
    return root


def test_a_half_made_piece_whose_shared_answers_differ_is_refused_before_training(tmp_path, capsys):
    """`make study-piece` compares what a piece shares with the others (sft's evaluation; the seed's greedy replay
    before training, when a piece of that seed exists) once they are made, before the training stages: a piece whose
    machine or generation code answers otherwise stops there instead of hours later at the merge."""
    from pipeline.study import check_answers
    from steptool.cli import main

    pieces = tmp_path / "pieces"
    save_piece(_workspace(tmp_path / "a", 0), pieces / "s0-steptool")
    save_piece(_workspace(tmp_path / "b", 1, before=("Unsolved", "Unsolved")), pieces / "s1-steptool")
    made = sorted(pieces.iterdir())
    sft = str(layout.table(layout.eval_dir("sft", "cot"), "results"))
    replay1 = str(layout.table(layout.replay_dir(layout.trajectories_dir(1)), "results"))
    # seed 1's other variants: sft against both pieces, the replay against seed 1's piece only
    assert check_answers(_half_made(tmp_path / "ok", 1, before=("Unsolved", "Unsolved")), made) == [
        f"{sft}: 2 pieces", f"{replay1}: 1 pieces"]
    # a new seed: its replay has nothing to compare with
    assert check_answers(_half_made(tmp_path / "new", 2), made) == [f"{sft}: 2 pieces"]
    with pytest.raises(SteptoolError, match="sft-cot/results.parquet's judged answers differ from .*other-sft"):
        check_answers(_half_made(tmp_path / "other-sft", 2, sft=("Unsolved", "Unsolved")), made)
    with pytest.raises(SteptoolError, match="s1-steptool: .*s1/replay/results.parquet's judged answers differ"):
        check_answers(_half_made(tmp_path / "other-replay", 1), made)
    assert main(["study-check", str(pieces), "--answers", str(tmp_path / "ok")]) == 0
    assert "judges the same answers as the pieces" in capsys.readouterr().out
    assert main(["study-check", str(pieces), "--answers", str(tmp_path / "other-sft")]) == 2
    assert "judged answers differ" in capsys.readouterr().err
