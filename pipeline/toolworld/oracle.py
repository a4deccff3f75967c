"""The oracle agent: executes a task's gold plan (retrying transient failures) and states the gold facts.

It proves that every task is solvable through the environment and gives the expert paths that the
warm start learns from.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from pipeline.envs import ApiListEnv, StepResult
from pipeline.task import Task
from pipeline.toolworld.world import RATE_LIMIT_ERROR

MAX_RETRIES = 5


@dataclass
class OracleRun:
    steps: list[tuple[str, str, StepResult]] = field(default_factory=list)  # (function, arguments, result)
    final: StepResult | None = None


def run_oracle(env: ApiListEnv, task: Task, episode: str = "oracle") -> OracleRun:
    if not task.has_gold:
        raise ValueError(f"task {task.task_id} has no gold plan")
    env.reset(task, episode)
    run = OracleRun()
    for call in task.gold_calls or []:
        for _ in range(MAX_RETRIES):
            result = env.step(call.function_name, call.arguments)
            run.steps.append((call.function_name, call.arguments, result))
            if (result.envelope or {}).get("error") != RATE_LIMIT_ERROR:
                break
    answer = "Here is what I found: " + "; ".join(task.gold_facts or []) + "."
    run.final = env.step("Finish", json.dumps({"return_type": "give_answer", "final_answer": answer}))
    return run
