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
# the ToolWorld train tasks the warm start imitates expert paths on, whatever tasks.source is (under toolworld
# the same tasks as train.parquet; StableToolBench queries have no gold plan to imitate)
WARMSTART_TASKS = TASKS / "warmstart.parquet"
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


def seed_dir(seed: int) -> str:
    """s<seed>: the folder of one training seed (`train.seeds`) under every per-seed artifact."""
    return f"s{seed}"


def run_name(variant: str, seed: int) -> str:
    """<variant>/s<seed>: one training run (a variant trained from one seed's collection)."""
    return f"{variant}/{seed_dir(seed)}"


def trajectories_dir(seed: int) -> Path:
    """data/trajectories/s<seed>: what `collect@<seed>` played (trajectories, steps, tokens; replay/)."""
    return TRAJECTORIES / seed_dir(seed)


def replay_dir(folder: Path) -> Path:
    """<folder>/replay: the same train tasks played greedily by the policy that collected or was trained there."""
    return folder / "replay"


ANNOTATION_FAILURES = "failed.json"  # beside annotated steps: every trajectory not labelled, and why


def annotated_dir(seed: int) -> Path:
    """data/annotated/s<seed>: `annotate@<seed>`'s steps.parquet and failed.json."""
    return ANNOTATED / seed_dir(seed)


# what a finished round leaves in its work folder and the train stage publishes in round_dir(variant, seed, k)
ROUND_FILES = ("round.parquet", "metrics.json", "history.json")
ROUND_DONE = "metrics.json"  # written last: its presence marks the round as finished
# a LoRA-trained checkpoint also holds its adapter (relative to the SFT model), which an OpenAI-compatible server
# (vLLM) loads at run time instead of serving every merged checkpoint (pipeline/agent/adapters.py)
LORA_ADAPTER = "lora_adapter"


def rounds_dir(variant: str, seed: int) -> Path:
    """data/rounds/<variant>/s<seed>: one folder per PPO round r<k> (round_dir)."""
    return ROUNDS / run_name(variant, seed)


def round_dir(variant: str, seed: int, k: int) -> Path:
    """data/rounds/<variant>/s<seed>/r<k>: round k's round.parquet (per step: reward, baseline, advantage as
    trained), metrics.json, history.json, replay/ and, from round 2, its own annotated steps.parquet."""
    return rounds_dir(variant, seed) / f"r{k}"


def checkpoint_dir(variant: str, seed: int) -> Path:
    """data/checkpoints/<variant>/s<seed>: the run's work while it trains (each round's data, model and trainer
    checkpoints); removed when the run is done."""
    return CHECKPOINTS / run_name(variant, seed)


def model_dir(name: str, seed: int | None = None) -> Path:
    """data/models/<name>: base or sft; data/models/<variant>/s<seed>: a training variant's run."""
    return MODELS / name if seed is None else MODELS / name / seed_dir(seed)


BASE_MODEL = model_dir("base")
SFT_MODEL = model_dir("sft")


def table(folder: Path, name: str) -> Path:
    """<folder>/<name>.parquet, e.g. table(trajectories_dir(0), "steps")."""
    return folder / f"{name}.parquet"


def advantages_file(variant: str, seed: int) -> Path:
    """data/advantages/<variant>/s<seed>.parquet."""
    return ADVANTAGES / variant / f"{seed_dir(seed)}.parquet"


def eval_dir(model: str, strategy: str) -> Path:
    """data/eval/<model>-<strategy>: results.parquet (every seed's rows) and the trajectories, steps and tokens
    of one evaluation (a trained variant's under s<seed>/, one folder per seed)."""
    return EVAL / f"{model}-{strategy}"


def metrics_file(stage: str, item: str | None = None) -> Path:
    """data/metrics/<stage>.json, or data/metrics/<stage>/<item>.json for a foreach/matrix stage (the item of
    a per-seed stage is s<seed>, of a per-run stage <variant>/s<seed>)."""
    return METRICS / f"{stage}.json" if item is None else metrics_dir(stage) / f"{item}.json"


def metrics_dir(stage: str) -> Path:
    """data/metrics/<stage>: the metrics of every item of a foreach/matrix stage."""
    return METRICS / stage


def train_plot(variant: str, seed: int) -> Path:
    """data/plots/train/<variant>/s<seed>.json: the run's training log, every round's updates in order."""
    return TRAIN_PLOTS / f"{run_name(variant, seed)}.json"


# experiment trackers (train.report_to / warmstart.report_to): outside data/, which git ignores, so that DVC finds
# the dvc.yaml DVCLive writes beside its files
DVCLIVE = Path("dvclive")
LOGS = DATA / "logs"


def dvclive_dir(stage: str, item: str | None = None) -> Path:
    """dvclive/<stage>[/<item>]: DVCLive's metrics.json, plots/metrics/*.tsv and dvc.yaml of one training run."""
    return DVCLIVE / stage if item is None else DVCLIVE / stage / item


def logs_dir(stage: str, item: str | None = None) -> Path:
    """data/logs/<stage>[/<item>]: the Trainer's logging_dir (tensorboard event files)."""
    return LOGS / stage if item is None else LOGS / stage / item


# what the `report` stage writes
RESULTS_MD = REPORTS / "results.md"
FIGURES = REPORTS / "figures"
REPORT_METRICS = REPORTS / "metrics.json"
PASS_RATE_CSV = REPORTS / "pass_rate.csv"
WIN_RATE_CSV = REPORTS / "win_rate.csv"
# what the `view` stage writes: the trajectory viewer, a static site
VIEWER = REPORTS / "viewer"
# the study (not a stage: make study-val / study-piece / study-report)
STUDY_REPORTS = REPORTS / "study"
STUDY_VAL = STUDY_REPORTS / "val"


def dvc_paths(variants: list[str], models: list[str], strategies: list[str], seeds: list[int]) -> set[str]:
    """Every path the DVC stages read or write, for the given foreach/matrix items (the layout test compares
    this with dvc.yaml)."""
    paths = {tasks_file("train"), tasks_file("val"), tasks_file("test"), WARMSTART_TASKS, CATALOG, EVAL, TRAIN_PLOTS, ROUNDS,
             metrics_dir("train"), metrics_dir("collect"), metrics_dir("advantages"), RESULTS_MD, FIGURES, REPORT_METRICS, PASS_RATE_CSV, WIN_RATE_CSV,
             VIEWER, TRAJECTORIES, ANNOTATED, ADVANTAGES}
    paths |= {BASE_MODEL, SFT_MODEL, metrics_file("warmstart")}
    for seed in seeds:
        paths |= {trajectories_dir(seed), annotated_dir(seed), table(annotated_dir(seed), "steps"),
                  metrics_file("collect", seed_dir(seed)), metrics_file("annotate", seed_dir(seed))}
        for v in variants:
            paths |= {advantages_file(v, seed), model_dir(v, seed), metrics_file("advantages", run_name(v, seed)),
                      metrics_file("train", run_name(v, seed)), train_plot(v, seed), rounds_dir(v, seed)}
    for m in models:
        paths.add(model_dir(m))
        for s in strategies:
            paths |= {eval_dir(m, s), metrics_file("eval", f"{m}-{s}")}
    return {p.as_posix() for p in paths}
