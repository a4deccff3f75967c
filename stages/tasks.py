"""Stage `tasks`: write data/tasks/{train,val,test}.parquet and data/tools/catalog.json.

tasks.source toolworld: ToolWorld's generated tasks (no entity shared between splits). stabletoolbench:
StableToolBench's solvable queries (tasks.stabletoolbench_path), split per level by tasks.seed (no query shared
between splits). Either way ToolWorld is built (its catalog) and its train tasks go to
data/tasks/warmstart.parquet: the warm start's expert paths need gold plans."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipeline import layout
from pipeline.config import Params, to_dict
from pipeline.formats.stabletoolbench import split_solvable_queries
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
    sizes = {s: to_dict(getattr(tc, s)) for s in SPLITS}
    if tc.source == "stabletoolbench":
        splits = split_solvable_queries(tc.stabletoolbench_path, tc.stabletoolbench_subsets, sizes, tc.seed)
        warm = generate_tasks(world, tc.seed, {"train": sizes["train"]}, tc.max_gold_calls, tc.distractor_tools)["train"]
    else:
        splits = generate_tasks(world, tc.seed, sizes, tc.max_gold_calls, tc.distractor_tools)
        warm = splits["train"]
    for split, tasks in splits.items():
        write_table([t.to_row() for t in tasks], root / layout.tasks_file(split), TASKS)
    write_table([t.to_row() for t in warm], root / layout.WARMSTART_TASKS, TASKS)
    catalog = world.catalog()
    catalog["max_observation_length"] = tw.max_observation_length
    write_json(root / layout.CATALOG, catalog)
    world_sizes = catalog["sizes"]
    counts = {s: dict(sorted(Counter(t.level for t in ts).items())) for s, ts in splits.items()}
    source = (f"StableToolBench {', '.join(tc.stabletoolbench_subsets)}" if tc.source == "stabletoolbench"
              else "ToolWorld")
    return (f"tasks ({source}): world {world_sizes['categories']} categories, {world_sizes['tools']} tools, "
            f"{world_sizes['apis']} APIs, {world_sizes['entities']} entities; " + ", ".join(f"{s} {counts[s]}" for s in SPLITS))


def main(argv: list[str] | None = None) -> int:
    return run_stage("tasks", __doc__, run, argv, ARGS)


if __name__ == "__main__":
    raise SystemExit(main())
