"""A copy of this repository in a temporary git repository, for tests that run the real `dvc repro`
(tests/test_dvc_pipeline.py, tests/test_stabletoolbench.py): every tracked or untracked-but-not-ignored file but
the tests and dvc.lock, a git identity, DVC analytics off, and this interpreter's tools first on PATH."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

DVC = [sys.executable, "-m", "dvc"]


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 600) -> str:
    """stdout + stderr of `cmd`; a failure shows both."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def copy_repo(src: Path, dest: Path) -> dict:
    """Copy `src`'s files to `dest` (tests and dvc.lock left out: the copy reproduces from nothing) and return
    the environment to run git and DVC there with (commit with `commit`)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=src,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if f.startswith("tests/") or f == "dvc.lock":
            continue
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / f, dest / f)
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                PYTHONPATH=str(dest), GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                GIT_COMMITTER_EMAIL="t@t", DVC_NO_ANALYTICS="1")


def commit(dest: Path, env: dict, message: str, init: bool = False) -> None:
    if init:
        run(["git", "init", "-q"], dest, env)
    run(["git", "add", "-A"], dest, env)
    run(["git", "commit", "-qm", message], dest, env)
