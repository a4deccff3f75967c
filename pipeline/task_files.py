"""The task splits written by the `tasks` stage (data/tasks/<split>.parquet), read back as `Task`s."""
from __future__ import annotations

import json
import random
from pathlib import Path

from pipeline import layout, untrusted
from pipeline.errors import SchemaError
from pipeline.schema import TASKS, read_table
from pipeline.task import Task


def load_tasks(root: Path, split: str, max_tasks: int = 0, sample_key: str | None = None) -> list[Task]:
    """The tasks of `split`; with `max_tasks`, a seeded sample keyed by `sample_key` (or the first `max_tasks`
    when no key is given)."""
    return load_task_file(root / layout.tasks_file(split), max_tasks, sample_key)


def load_task_file(path: Path, max_tasks: int = 0, sample_key: str | None = None) -> list[Task]:
    """The tasks of one TASKS file (a split, or data/tasks/warmstart.parquet); `max_tasks` as in `load_tasks`."""
    tasks = [_task(r, path, i) for i, r in enumerate(read_table(path, TASKS).to_pylist())]
    if max_tasks and len(tasks) > max_tasks:
        tasks = random.Random(sample_key).sample(tasks, max_tasks) if sample_key else tasks[:max_tasks]
    return tasks


def _task(row: dict, path: Path, i: int) -> Task:
    """Task.from_row, with a hand-edited or foreign row refused in one line naming the file, record and field."""
    try:
        api_list = untrusted.loads(row["api_list"])
    except (json.JSONDecodeError, TypeError):
        raise SchemaError(f"{path}: record {i} field 'api_list' is not JSON text") from None
    if not isinstance(api_list, list) or not all(isinstance(a, dict) for a in api_list):
        raise SchemaError(f"{path}: record {i} field 'api_list' must be a JSON list of API objects")
    gold = row.get("gold")
    if gold is not None and not (isinstance(gold.get("calls"), list) and isinstance(gold.get("facts"), list)):
        raise SchemaError(f"{path}: record {i} field 'gold' must hold the lists 'calls' and 'facts' (or be null)")
    try:
        return Task.from_row({**row, "api_list": json.dumps(api_list)})
    except (TypeError, KeyError) as e:
        raise SchemaError(f"{path}: record {i} ({row.get('task_id')!r}) is not a task: {e}") from None


def first_per_level(tasks: list[Task], per_level: int) -> list[Task]:
    """The first `per_level` tasks of each level (all with 0), in split order: the evaluated test tasks."""
    if not per_level:
        return tasks
    seen: dict[str, int] = {}
    out = []
    for t in tasks:
        if seen.get(t.level, 0) < per_level:
            seen[t.level] = seen.get(t.level, 0) + 1
            out.append(t)
    return out
