"""Stage `tasks`: build ToolWorld and write data/tasks/{train,val,test}.parquet (no entity shared between
splits) and data/tools/catalog.json."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipeline import layout
from pipeline.config import Params, to_dict
from pipeline.fsutil import write_json
from pipeline.runner import run_stage
from pipeline.schema import TASKS, write_table
from pipeline.task import SPLITS
from pipeline.toolworld.tasks import generate_tasks
from pipeline.toolworld.world import ToolWorld

ARGS = ()


def run(params: Params, root: Path = Path(".")) -> str:
    tw, tc = params.toolworld, params.tasks
    world = ToolWorld.from_config(tw)
    splits = generate_tasks(world, tc.seed, {s: to_dict(getattr(tc, s)) for s in SPLITS}, tc.max_gold_calls,
                            tc.distractor_tools)
    for split, tasks in splits.items():
        write_table([t.to_row() for t in tasks], root / layout.tasks_file(split), TASKS)
    catalog = world.catalog()
    catalog["max_observation_length"] = tw.max_observation_length
    write_json(root / layout.CATALOG, catalog)
    sizes = catalog["sizes"]
    counts = {s: dict(sorted(Counter(t.level for t in ts).items())) for s, ts in splits.items()}
    return (f"tasks: world {sizes['categories']} categories, {sizes['tools']} tools, {sizes['apis']} APIs, "
            f"{sizes['entities']} entities; " + ", ".join(f"{s} {counts[s]}" for s in SPLITS))


def main(argv: list[str] | None = None) -> int:
    return run_stage("tasks", __doc__, run, argv, ARGS)


if __name__ == "__main__":
    raise SystemExit(main())
