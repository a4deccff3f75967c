"""The `oracle` annotator (ToolWorld default): Contribution and IsSolved from the task's gold plan and
gold facts. Exact, free and deterministic, so the whole pipeline runs offline.

Contribution of a call (SuccCalling from the rule):
- 5: it succeeded and brought something the answer needs for the first time: a gold fact, or a value
  that a gold call takes and the query does not give (an id found by a search), or it executed a gold
  call (same function, same arguments) not executed before;
- 1: it succeeded and called a function of the gold plan, but brought nothing new (a repeat, other
  arguments that found nothing useful);
- 0: anything else (failed calls, functions the task does not need).
IsSolved: the rule judge on the final answer (all facts Solved, some Unsure, none or no Finish Unsolved).
"""
from __future__ import annotations

import json

from pipeline.annotate.base import StepLabel, TrajLabel, step_is_call
from pipeline.annotate.succ_calling import succ_calling
from pipeline.task import Task
from pipeline.toolworld.fact_judge import fact_stated, pass_score, rule_judge

PROMPT_VERSION = "oracle-v1"


def _canonical(arguments: str) -> str | None:
    try:
        obj = json.loads(arguments) if arguments.strip() else {}
    except (json.JSONDecodeError, AttributeError):
        return None
    if not isinstance(obj, dict):
        return None
    return json.dumps({k: str(v).strip().casefold() for k, v in obj.items()}, sort_keys=True)


def needed_items(task: Task) -> list[str]:
    """What the answer needs to see in some observation: gold facts, and gold-call argument values the
    query does not contain (ids that only a previous call can reveal)."""
    items = list(task.gold_facts or [])
    query = task.query.casefold()
    for call in task.gold_calls or []:
        for v in json.loads(call.arguments).values():
            v = str(v).strip()
            if v and v.casefold() not in query and v not in items:
                items.append(v)
    return items


def oracle_label(traj: dict, steps: list[dict], task: Task) -> TrajLabel:
    """`traj` a trajectories row, `steps` its steps rows in order, `task` with gold."""
    if not task.has_gold:
        raise ValueError(f"task {task.task_id} has no gold plan: the oracle annotator needs ToolWorld tasks "
                         "(use annotate.annotator: heuristic or openai)")
    items = needed_items(task)
    gold_calls = {(c.function_name, _canonical(c.arguments)) for c in task.gold_calls or []}
    gold_functions = {c.function_name for c in task.gold_calls or []}
    seen: set[str] = set()
    done_calls: set[tuple] = set()
    labels = []
    for st in steps:
        if not step_is_call(st):
            labels.append(StepLabel(None, None))
            continue
        sc, _ = succ_calling(st["api_name"], st["parse_ok"], st["observation"], env_status=st.get("env_status"))
        con = 0.0
        if sc:
            obs = st["observation"] or ""
            new = [x for x in items if x not in seen and fact_stated(x, obs)]
            call = (st["api_name"], _canonical(st["arguments_json"] or ""))
            if new or (call in gold_calls and call not in done_calls):
                con = 5.0
            elif st["api_name"] in gold_functions:
                con = 1.0
            seen.update(new)
            done_calls.add(call)
        labels.append(StepLabel(float(sc), con))
    status = rule_judge(task.gold_facts or [], traj.get("final_answer"), traj.get("finish_type") or "none")
    return TrajLabel(traj["traj_id"], labels, status, pass_score(status), "oracle", PROMPT_VERSION)
