"""Every CLI command that writes, given every kind of output path a user could type (docs/architecture.md,
"Nothing lost"): a new name, a new name under missing folders, an empty folder, a folder of the user's files, a
file of the user's, a link to the user's folder, a name under a file, a FIFO; names with spaces, dots and non-ASCII
letters. Whatever the combination: no traceback (exit 0, or exit 2 with one error line), the user's files intact,
and a refusal leaves the whole tree as it was (no temporary, no half-written output). Every combination, in this
process through `steptool.cli.main` (seconds for all). `play` and `judge-agreement` also take --out, through the
same atomic writes (pipeline/fsutil.py); they need a model or an endpoint, so are not in the grid.

Before: a name under a file (every command) and study-val's OUT as a file ended in a traceback
(FileExistsError / NotADirectoryError from the parent's mkdir)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline import layout
from pipeline.schema import EVAL_RESULTS, write_table
from steptool.cli import main
from tests.conftest import REPO

KEEP = "keep me"
KINDS = ("new", "nested_new", "empty_dir", "user_dir", "user_file", "link_to_user_dir", "under_file", "fifo")


def _results(model, seed):
    return [{"model": model, "strategy": "cot", "task_id": "t0", "level": "I1", "seed": seed, "sample_idx": 0,
             "traj_id": f"{model}-0", "judge": "rule", "statuses": ["Solved"], "pass_score": 1.0,
             "finish_type": "give_answer", "final_answer": "x", "n_steps": 2, "n_calls": 1, "n_calls_ok": 1,
             "facts_stated": 1, "n_facts": 1, "actions_generated": 2}]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Valid inputs for each command, so that each gets as far as writing its output."""
    root = tmp_path_factory.mktemp("inputs")
    rec = root / "recordings" / "method"
    rec.mkdir(parents=True)
    (rec / "G1_instruction.json").write_text(
        '{"1": {"query": "q", "answer_steps": "Step 1: {\'name\': \'f\', \'arguments\': \'{}\', \'response\': '
        '\'{\\"error\\": \\"\\", \\"response\\": 1}\'}", "final_step": "", "is_solved": {}}}')
    annotations = root / "annotations.json"
    annotations.write_text(json.dumps({"q1": {
        "query": "x", "answer_steps": ["Step 1: {'name': 'a', 'arguments': '{}', 'response': '{}'}"],
        "final_step": "Final step: {'name': 'Finish', 'arguments': '{}', 'response': ''}",
        "process_reward": {"0": {"succeed_tool_calling": [1], "contributions": [5]}},
        "is_solved": {"0": "AnswerStatus.Solved"}}}))
    ws = root / "workspace"
    write_table(_results("sft", None), ws / layout.table(layout.eval_dir("sft", "cot"), "results"), EVAL_RESULTS)
    piece = root / "pieces" / "s0"
    assert main(["study-save", str(piece), "--root", str(ws)]) == 0
    return {"recordings": rec.parent, "annotations": annotations, "workspace": ws, "piece": piece}


# command -> (its arguments around OUT, what it writes at OUT: a file or a folder)
COMMANDS = {
    "params": (lambda i, out: ["params", "--params", str(REPO / "params.yaml"), "--write", out], "file"),
    "build-replay": (lambda i, out: ["build-replay", str(i["recordings"]), "--out", out], "file"),
    "import-annotations": (lambda i, out: ["import-annotations", str(i["annotations"]), "--out", out], "folder"),
    "study-save": (lambda i, out: ["study-save", out, "--root", str(i["workspace"])], "folder"),
    "study-merge": (lambda i, out: ["study-merge", str(i["piece"]), "--root", out], "folder"),
    "study-val": (lambda i, out: ["study-val", str(REPO / "configs" / "study-val.yaml"), "--table-only", "--out", out],
                  "folder"),
    "view": (lambda i, out: ["view", "--root", str(i["workspace"]), "--params", str(REPO / "params.yaml"), "--out", out],
             "folder"),
}


def _make(base: Path, kind: str, name: str) -> tuple[Path, Path]:
    """The output path of `kind` under `base` and the user's folder whose files must survive."""
    mine = base / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "sub" / "canary.txt").write_text(KEEP)
    if kind == "new":
        return base / name, mine
    if kind == "nested_new":
        return base / "a" / "b" / name, mine
    if kind == "empty_dir":
        (base / name).mkdir()
        return base / name, mine
    if kind == "user_dir":
        return mine, mine
    if kind == "user_file":
        (base / name).write_text(KEEP)
        return base / name, mine
    if kind == "link_to_user_dir":
        (base / name).symlink_to(mine, target_is_directory=True)
        return base / name, mine
    if kind == "under_file":
        (base / "afile").write_text(KEEP)
        return base / "afile" / name, mine
    os.mkfifo(base / name)
    return base / name, mine


def _tree(base: Path) -> dict[str, str]:
    """Every entry under `base` (links not followed) with its kind and, for files, its text."""
    out = {}
    for p in sorted(base.rglob("*")):
        rel = p.relative_to(base).as_posix()
        if p.is_symlink():
            out[rel] = f"link -> {os.readlink(p)}"
        elif p.is_dir():
            out[rel] = "folder"
        elif p.is_file():
            out[rel] = p.read_bytes().decode("utf-8", "replace")
        else:
            out[rel] = "other"
    return out


# awkward names, each (command, kind) pair given one: spaces, non-ASCII, a leading dot, a leading dash (argparse
# takes it for an option: its own one-line refusal)
NAMES = ("o ü.x", ".hidden", "with space", "-dash", "ünï", "a.b.c", "x")


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("kind", KINDS)
def test_no_command_loses_a_users_file_whatever_the_output_path(inputs, tmp_path, capsys, command, kind):
    name = NAMES[(sorted(COMMANDS).index(command) + KINDS.index(kind)) % len(NAMES)]
    out, mine = _make(tmp_path, kind, name)
    before = _tree(tmp_path)
    argv, writes = COMMANDS[command]
    capsys.readouterr()
    try:
        rc = main(argv(inputs, str(out)))
    except SystemExit as e:  # argparse's own refusal
        rc = e.code
    err = capsys.readouterr().err
    assert rc in (0, 2), (rc, err[-2000:])
    assert "Traceback" not in err
    if rc == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines and lines[-1].startswith("steptool") and ": error: " in lines[-1], err  # ours, or argparse's
        assert _tree(tmp_path) == before, f"a refusal changed the tree: {err}"
    assert (mine / "sub" / "canary.txt").read_text() == KEEP, "the user's folder lost a file"
    if kind == "user_file" and writes == "folder":
        assert out.read_text() == KEEP, "replaced the user's file with a folder"
    if kind == "link_to_user_dir":
        assert out.is_symlink(), "replaced the user's link"
    if kind == "under_file":
        assert (tmp_path / "afile").read_text() == KEEP and rc == 2
    if kind == "fifo":
        assert out.is_fifo() and rc == 2, "replaced the FIFO"
    if rc == 0 and kind in ("new", "nested_new"):
        assert out.is_file() if writes == "file" else out.is_dir()  # it did write
