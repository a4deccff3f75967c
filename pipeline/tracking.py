"""Experiment tracking of the two trainers (warm start, PPO) through the Trainer's own integrations
(`warmstart.report_to`, `train.report_to`): tensorboard, trackio and wandb are passed to TrainingArguments as
they are; dvclive gets its own callback, writing to dvclive/<stage>/<item> with a dvc.yaml there (not the
repository's), so `dvc exp show` and `dvc plots show` find every run's curves and the pipeline's dvc.yaml is
never rewritten during a stage."""
from __future__ import annotations

from pathlib import Path

from pipeline import layout
from pipeline.errors import SteptoolError


def reporting(report_to: list[str], root: Path, stage: str, item: str | None = None, *, main: bool = True,
              resume: bool = False) -> tuple[dict, list]:
    """(keyword arguments for TrainingArguments, callbacks to add) for the trackers in `report_to`.
    `main`: this process writes (the others of a multi-process run log nothing); `resume`: a resumed run
    appends to its curves instead of starting them over. TensorBoard writes under data/logs/<stage>/<item>."""
    import os

    from transformers import TrainingArguments

    integrations = [r for r in report_to if r not in ("none", "dvclive")]
    kwargs: dict = {"report_to": integrations or "none"}
    if "tensorboard" in integrations:
        logs = str(root / layout.logs_dir(stage, item))
        if "logging_dir" in TrainingArguments.__dataclass_fields__:  # transformers 4.x
            kwargs["logging_dir"] = logs
        else:  # transformers 5 reads it from the environment
            os.environ["TENSORBOARD_LOGGING_DIR"] = logs
    callbacks: list = []
    if "dvclive" in report_to and main:
        try:
            from dvclive import Live
        except ImportError:
            raise SteptoolError("report_to dvclive needs the dvclive package: pip install dvclive") from None
        from transformers.integrations import DVCLiveCallback

        d = root / layout.dvclive_dir(stage, item)
        callbacks.append(DVCLiveCallback(live=Live(dir=str(d), dvcyaml=str(d / "dvc.yaml"), save_dvc_exp=False,
                                                   resume=resume)))
    return kwargs, callbacks
