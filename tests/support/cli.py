"""Running the command line as a user would (a subprocess), and reading its one-line errors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def steptool(*args, cwd=REPO, timeout=120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "steptool", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(proc) -> str:
    """The single 'steptool: error: ...' line of a failed run (exit 2, no traceback)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("steptool: error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]
