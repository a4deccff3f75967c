"""Readers for StableToolBench / StepTool reference files (see ../shared/external/README.md).

`answer_steps` are written by the reference code as one line per step, ``Step k: {python literal}``,
where the literal is a dict with `name`, `arguments` (JSON text) and `response` (JSON text of the
tool server's envelope ``{"error": ..., "response": ...}``). The lines are Python literals, so they go
through `ast.literal_eval`, never `eval`. A line that cannot be read is reported with its file, record
and step, never guessed at.
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import SchemaError

_STEP = re.compile(r"^\s*(?:Step \d+|Final step):\s*(\{.*\})\s*$", re.S)
STATUS_VALUE = {"Solved": 1.0, "Unsure": 0.5, "Unsolved": 0.0}


@dataclass(frozen=True)
class RefStep:
    name: str
    arguments: str  # JSON text as the agent wrote it
    response: str  # the tool server's envelope, JSON text ("" when absent)


def parse_step_line(line: str, where: str = "") -> RefStep:
    """One ``Step k: {...}`` or ``Final step: {...}`` line."""
    m = _STEP.match(line)
    if not m:
        raise SchemaError(f"{where}: not a 'Step k: {{...}}' line: {line[:80]!r}")
    try:
        d = ast.literal_eval(m.group(1))
    except (ValueError, SyntaxError) as e:
        raise SchemaError(f"{where}: step is not a Python literal ({e.__class__.__name__}): {line[:80]!r}") from None
    if not isinstance(d, dict) or "name" not in d:
        raise SchemaError(f"{where}: step has no 'name': {line[:80]!r}")
    args = d.get("arguments", "")
    return RefStep(str(d["name"]), args if isinstance(args, str) else json.dumps(args), str(d.get("response", "")))


def split_step_lines(answer_steps: str | list[str]) -> list[str]:
    """`answer_steps` is one string (pass_rate_results) or a list of strings (reward_annotation); a step's
    literal may span lines, so a new step starts only at a ``Step k:`` line."""
    if isinstance(answer_steps, list):
        return [s for s in answer_steps if s.strip()]
    lines: list[str] = []
    for line in answer_steps.split("\n"):
        if re.match(r"^Step \d+: \{", line) or not lines:
            lines.append(line)
        else:
            lines[-1] += "\n" + line
    return [s for s in lines if s.strip()]


def parse_answer_steps(answer_steps: str | list[str], where: str = "") -> list[RefStep]:
    return [parse_step_line(s, f"{where} step {i + 1}") for i, s in enumerate(split_step_lines(answer_steps))]


def answer_status(value: str) -> str:
    """'AnswerStatus.Solved' -> 'Solved' (plain names pass through)."""
    s = str(value).split(".")[-1]
    if s not in STATUS_VALUE:
        raise SchemaError(f"unknown answer status {value!r} (Solved, Unsure or Unsolved)")
    return s


def load_json_records(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SchemaError(f"{path}: cannot read JSON: {e}") from None
    if not isinstance(data, dict):
        raise SchemaError(f"{path}: expected an object keyed by query id, got {type(data).__name__}")
    return data
