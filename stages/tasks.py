"""Stage `tasks`: build ToolWorld and write data/tasks/{train,test}.parquet and data/tools/catalog.json."""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from pipeline.config import Params, to_dict
from pipeline.fsutil import write_json
from pipeline.schema import TASKS, read_table, write_table
from pipeline.task import Task
from pipeline.toolworld.tasks import generate_tasks
from pipeline.toolworld.world import ToolWorld

TASKS_DIR = Path("data/tasks")
CATALOG = Path("data/tools/catalog.json")


def load_tasks(root: Path, split: str, max_tasks: int = 0, sample_key: str | None = None) -> list[Task]:
    """The tasks of `split` written by this stage; with `max_tasks`, a seeded sample keyed by `sample_key`
    (or the first `max_tasks` when no key is given)."""
    tasks = [Task.from_row(r) for r in read_table(root / TASKS_DIR / f"{split}.parquet", TASKS).to_pylist()]
    if max_tasks and len(tasks) > max_tasks:
        tasks = random.Random(sample_key).sample(tasks, max_tasks) if sample_key else tasks[:max_tasks]
    return tasks


def run(params: Params, root: Path = Path(".")) -> str:
    tw, tc = params.toolworld, params.tasks
    world = ToolWorld.from_config(tw)
    splits = generate_tasks(world, tc.seed, to_dict(tc.train), to_dict(tc.test), tc.max_gold_calls, tc.distractor_tools)
    for split, tasks in splits.items():
        write_table([t.to_row() for t in tasks], root / TASKS_DIR / f"{split}.parquet", TASKS)
    catalog = world.catalog()
    catalog["max_observation_length"] = tw.max_observation_length
    write_json(root / CATALOG, catalog)
    sizes = catalog["sizes"]
    counts = {s: dict(sorted(Counter(t.level for t in ts).items())) for s, ts in splits.items()}
    return (f"tasks: world {sizes['categories']} categories, {sizes['tools']} tools, {sizes['apis']} APIs, "
            f"{sizes['entities']} entities; train {counts['train']}, test {counts['test']}")


def main(argv: list[str] | None = None) -> int:
    from pipeline.cli import run_stage

    return run_stage("tasks", __doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
