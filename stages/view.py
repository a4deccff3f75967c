"""Stage `view`: the trajectory viewer, a static site under reports/viewer/ (open reports/viewer/index.html from
disk; no server, no network).

Reads whatever the run has: the tasks, every collection seed's trajectories with their annotated steps (each
judge vote), every variant's round tables (reward, return-to-go, baseline and advantage per step) or advantages
table, later rounds' annotated steps, every evaluation's trajectories and judge verdicts, and the reward audit
in the advantages metrics. Writes an index of every trajectory (filters, sort, pages), one page per trajectory
(every step with its labels and rewards, the final answer with the judge's verdict and the gold facts), the same
test task side by side for two models, the mean advantage by step kind and the reward audit
(pipeline/viewer.py; docs/architecture.md, "Viewer"). `--out` writes elsewhere; only a folder the viewer wrote
is ever replaced.
"""
from __future__ import annotations

from pathlib import Path

from pipeline import layout
from pipeline.config import Params
from pipeline.runner import run_stage
from pipeline.viewer import build_viewer

ARGS = (("--out", dict(dest="out", default=None, help=f"the site's folder (default: {layout.VIEWER} under --root)")),)


def run(params: Params, root: Path = Path("."), out: str | None = None) -> str:
    dest = Path(out) if out else root / layout.VIEWER
    s = build_viewer(params, root, dest)
    return (f"view: {s['trajectories']} trajectories ({s['collected']} collected, {s['evaluated']} evaluated) in "
            f"{s['chunks']} data files, {s['bytes'] / 1e6:.2f} MB -> {dest / 'index.html'}")


def main(argv: list[str] | None = None) -> int:
    return run_stage("view", __doc__, run, argv, ARGS)


if __name__ == "__main__":
    raise SystemExit(main())
