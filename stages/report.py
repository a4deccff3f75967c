"""Stage `report`: reports/results.md (the paper-style tables), figures, and DVC metrics and plots.

Reads every data/eval/<model>-<strategy>/results.parquet of the models and strategies in `evaluate`, and
the training logs data/plots/train/<variant>.json. Writes
- reports/results.md: pass rate per level and average with a 95% bootstrap CI over tasks for every
  model x strategy, tool-invocation success, average steps, give-up rate and win rate against
  `evaluate.reference_model`; the ablation table of the training variants with paired differences (CI,
  sign test, wins / ties / losses per task) against the reference model and the outcome-only baseline;
  sentences generated from those numbers; how many tasks each comparison would need (power); the
  split the numbers come from and the protocol used;
- reports/figures/{pass_rate,win_rate,training}.png;
- reports/metrics.json (`dvc metrics show`), reports/pass_rate.csv and reports/win_rate.csv (`dvc plots show`).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.config import Params
from pipeline.report import write_report
from pipeline.runner import run_stage

ARGS = ()


def run(params: Params, root: Path = Path(".")) -> str:
    return write_report(params, root)


def main(argv: list[str] | None = None) -> int:
    return run_stage("report", __doc__, run, argv, ARGS)


if __name__ == "__main__":
    raise SystemExit(main())
