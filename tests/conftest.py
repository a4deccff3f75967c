"""Shared fixtures: the real external data (skipped when absent), a small world, a tiny model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import pipeline  # noqa: F401  (sets the offline environment variables before transformers loads)

REPO = Path(__file__).resolve().parents[1]

# `make test` runs two pytest-xdist workers on CI's two cores: one intra-op thread each (and in the stage
# subprocesses they start), so the workers do not fight over the cores. The tiny models gain nothing from
# a second thread.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

EXTERNAL = Path(os.environ.get("STEPTOOL_EXTERNAL", REPO.parent / "shared" / "external"))


@pytest.fixture(scope="session")
def external() -> Path:
    """`../shared/external/` with the real StableToolBench and StepTool files; skips when absent."""
    if not (EXTERNAL / "README.md").exists():
        pytest.skip(f"real external data not found at {EXTERNAL} (set STEPTOOL_EXTERNAL to its folder)")
    return EXTERNAL


@pytest.fixture(scope="session")
def world():
    from pipeline.toolworld.world import ToolWorld

    return ToolWorld(seed=1234, entities_per_tool=60, rate_limit_prob=0.03)


@pytest.fixture(scope="session")
def splits(world):
    from pipeline.toolworld.tasks import generate_tasks

    return generate_tasks(world, seed=7, sizes={"train": {"I1": 120, "I2": 60, "I3": 60},
                                                "val": {"I1": 20, "I2": 15, "I3": 15},
                                                "test": {"I1": 40, "I2": 30, "I3": 30}})


@pytest.fixture(scope="session")
def tokenizer():
    from pipeline.models import SMOLLM2, load_tokenizer

    return load_tokenizer(SMOLLM2)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    from tests.support.tiny_model import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", tokenizer)


# The files that take longest (seconds on 2 AVX2 cores under `make test`, measured 2026-12-02: the DVC integration
# test ~200 s, the StableToolBench `dvc repro` ~105 s where ../shared/external exists, then 55 s and less), longest first.
LONGEST_FILES = ("test_dvc_pipeline.py", "test_stabletoolbench.py", "test_trainer.py", "test_models.py",
                 "test_trainer_scale.py", "test_replay.py", "test_collect.py", "test_annotate.py", "test_rounds.py",
                 "test_evaluate.py", "test_registry.py", "test_bad_inputs.py", "test_cli.py", "test_agreement.py",
                 "test_warmstart.py", "test_agent.py")


def pytest_collection_modifyitems(config, items):
    """Longest files first: `make test` runs `pytest -n 2 --dist loadfile --no-loadscope-reorder`, which hands out
    files in collection order (the default reorder puts files with many tests first). With the long ones first
    (the DVC integration test at once on one worker) the short files fill the end on both workers, and the two
    finish close together instead of one waiting on a long file handed out last."""
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0].rsplit("/", 1)[-1], len(rank)))
