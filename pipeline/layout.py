"""Where every artifact lives, relative to the directory that holds `data/` (the stages' `--root`).

This module is the only owner of data paths in the code: stages, the CLI, benchmarks and tests build
their paths from it. `dvc.yaml` states the same paths for DVC (deps and outs cannot be computed there);
`tests/test_architecture.py` checks that every data path of `dvc.yaml` is one of these and that every path
here is in `dvc.yaml`. The artifacts and their schemas are described in docs/architecture.md.
"""
from __future__ import annotations

from pathlib import Path

DATA = Path("data")
REPORTS = Path("reports")

# stage `tasks`
TASKS = DATA / "tasks"
CATALOG = DATA / "tools" / "catalog.json"
# stages `base_model`, `warmstart`, `train@<variant>`: one checkpoint directory per model name
MODELS = DATA / "models"
# stage `collect`
TRAJECTORIES = DATA / "trajectories"
# stage `annotate`
ANNOTATED = DATA / "annotated"
# stage `advantages@<variant>`
ADVANTAGES = DATA / "advantages"
# stage `train@<variant>`: checkpoints while it runs (removed at the end), training curves
CHECKPOINTS = DATA / "checkpoints"
TRAIN_PLOTS = DATA / "plots" / "train"
ROUNDS = DATA / "rounds"  # per variant: what the round trained on, step by step
# stage `evaluate@<model>-<strategy>`
EVAL = DATA / "eval"
# every stage's metrics (`dvc metrics show`)
METRICS = DATA / "metrics"
# `steptool build-replay` (not a DVC stage): the indexed real StableToolBench responses
REPLAY_TABLE = DATA / "replay" / "responses.parquet"


def tasks_file(split: str) -> Path:
    """data/tasks/<split>.parquet (split: one of pipeline.task.SPLITS)."""
    return TASKS / f"{split}.parquet"


def round_table(variant: str) -> Path:
    """data/rounds/<variant>.parquet: per step, the baseline and advantage one PPO round trained with."""
    return table(ROUNDS, variant)


def model_dir(name: str) -> Path:
    """data/models/<name>: base, sft, or a training variant."""
    return MODELS / name


BASE_MODEL = model_dir("base")
SFT_MODEL = model_dir("sft")


def table(folder: Path, name: str) -> Path:
    """<folder>/<name>.parquet, e.g. table(TRAJECTORIES, "steps")."""
    return folder / f"{name}.parquet"


def advantages_file(variant: str) -> Path:
    return table(ADVANTAGES, variant)


def eval_dir(model: str, strategy: str) -> Path:
    """data/eval/<model>-<strategy>: the trajectories, steps, tokens and results of one evaluation."""
    return EVAL / f"{model}-{strategy}"


def metrics_file(stage: str, item: str | None = None) -> Path:
    """data/metrics/<stage>.json, or data/metrics/<stage>/<item>.json for a foreach/matrix stage."""
    return METRICS / f"{stage}.json" if item is None else metrics_dir(stage) / f"{item}.json"


def metrics_dir(stage: str) -> Path:
    """data/metrics/<stage>: the metrics of every item of a foreach/matrix stage."""
    return METRICS / stage


def train_plot(variant: str) -> Path:
    return TRAIN_PLOTS / f"{variant}.json"


# what the `report` stage writes
RESULTS_MD = REPORTS / "results.md"
FIGURES = REPORTS / "figures"
REPORT_METRICS = REPORTS / "metrics.json"
PASS_RATE_CSV = REPORTS / "pass_rate.csv"
WIN_RATE_CSV = REPORTS / "win_rate.csv"


def dvc_paths(variants: list[str], models: list[str], strategies: list[str]) -> set[str]:
    """Every path the DVC stages read or write, for the given foreach/matrix items (the layout test compares
    this with dvc.yaml)."""
    paths = {tasks_file("train"), tasks_file("val"), tasks_file("test"), CATALOG, TRAJECTORIES, ANNOTATED,
             table(ANNOTATED, "steps"), EVAL, TRAIN_PLOTS, ROUNDS, metrics_dir("train"), RESULTS_MD, FIGURES, REPORT_METRICS, PASS_RATE_CSV,
             WIN_RATE_CSV}
    paths |= {BASE_MODEL, SFT_MODEL, *(metrics_file(s) for s in ("warmstart", "collect", "annotate"))}
    for v in variants:
        paths |= {advantages_file(v), model_dir(v), metrics_file("advantages", v), metrics_file("train", v),
                  train_plot(v), round_table(v)}
    for m in models:
        paths.add(model_dir(m))
        for s in strategies:
            paths |= {eval_dir(m, s), metrics_file("eval", f"{m}-{s}")}
    return {p.as_posix() for p in paths}
