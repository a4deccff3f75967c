"""What every annotator returns: one label per trajectory, one entry per step (the Finish step included)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from pipeline.toolworld.fact_judge import UNSOLVED, pass_score


@dataclass
class StepLabel:
    succ_calling: float | None  # [0, 1]; None on Finish
    contribution: float | None  # [0, 5]; None on Finish
    votes: list | None = None  # raw per-vote values, judge annotators only
    progress: float | None = None  # share of the needed facts known after this step (oracle only)


@dataclass
class TrajLabel:
    traj_id: str
    steps: list[StepLabel]
    is_solved: str  # Solved | Unsure | Unsolved (majority over votes; ties -> the lower status)
    is_solved_score: float  # mean over votes of 1 / 0.5 / 0
    annotator: str
    prompt_version: str
    judge_model: str = ""
    votes: int = 1
    cache_hits: int = 0
    failed: str = ""  # why no label could be made ('' when labelled)
    vote_failures: str = ""  # why some votes failed when the others labelled it ('' when all came back)
    usage: dict = field(default_factory=dict)


def status_of(score: float) -> str:
    """The status whose value is nearest to a mean score (ties go down: 0.75 -> Unsure, 0.25 -> Unsolved)."""
    if score > 0.75:
        return "Solved"
    if score > 0.25:
        return "Unsure"
    return UNSOLVED


def call_key(api_name: str | None, arguments: str | None) -> tuple[str, str]:
    """A call's identity for "was it made before": the function and its arguments as canonical JSON (keys
    sorted, values stripped and case-folded); arguments that are not a JSON object as their raw text."""
    try:
        obj = json.loads(arguments) if (arguments or "").strip() else {}
    except (json.JSONDecodeError, TypeError, RecursionError):
        obj = None
    if not isinstance(obj, dict):
        return (api_name or "", "raw:" + str(arguments or ""))
    return (api_name or "", json.dumps({k: str(v).strip().casefold() for k, v in obj.items()}, sort_keys=True))


def step_is_call(step: dict) -> bool:
    return not step.get("is_finish") and step.get("api_name") != "Finish"


__all__ = ["StepLabel", "TrajLabel", "call_key", "status_of", "step_is_call", "pass_score"]
