"""A task: a query, the APIs the agent may call, and (for ToolWorld) the gold plan and facts."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class GoldCall:
    """One call of a gold plan; `arguments` is canonical JSON text."""

    category: str
    tool_name: str
    api_name: str
    function_name: str
    arguments: str


# train: what the policy learns from; val: what anything tuned is tuned on; test: read for the final tables
# only. ToolWorld gives each its own entities (docs/architecture.md, "Data flow").
SPLITS = ("train", "val", "test")


@dataclass
class Task:
    task_id: str
    split: str  # one of SPLITS
    level: str  # I1 | I2 | I3
    query: str
    api_list: list[dict]  # ToolBench api docs
    gold_calls: list[GoldCall] | None = None  # None for imported benchmarks: no gold
    gold_facts: list[str] | None = None
    source: str = "toolworld"
    intent: str = ""
    tools: list[str] = field(default_factory=list)

    @property
    def has_gold(self) -> bool:
        return self.gold_facts is not None

    def to_row(self) -> dict[str, Any]:
        """The row of `data/tasks/<split>.parquet` (see `pipeline.schema.TASKS`)."""
        gold = None
        if self.has_gold:
            gold = {"calls": [asdict(c) for c in self.gold_calls or []], "facts": list(self.gold_facts or [])}
        return {
            "task_id": self.task_id,
            "split": self.split,
            "level": self.level,
            "query": self.query,
            "api_list": json.dumps(self.api_list, ensure_ascii=False),
            "gold": gold,
            "source": self.source,
            "intent": self.intent,
            "tools": list(self.tools),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Task":
        gold = row.get("gold")
        return cls(
            task_id=row["task_id"],
            split=row["split"],
            level=row["level"],
            query=row["query"],
            api_list=json.loads(row["api_list"]),
            gold_calls=[GoldCall(**c) for c in gold["calls"]] if gold else None,
            gold_facts=list(gold["facts"]) if gold else None,
            source=row.get("source") or "",
            intent=row.get("intent") or "",
            tools=list(row.get("tools") or []),
        )
