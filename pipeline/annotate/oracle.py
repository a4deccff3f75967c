"""The `oracle` annotator (ToolWorld default): Contribution and IsSolved from the task's gold plan and
gold facts. Exact, free and deterministic, so the whole pipeline runs offline.

Contribution of a call (SuccCalling from the rule), judged against what the answer needs, as the paper's
Contribution is ("minimal actions receive lower rewards"; docs/architecture.md, "Rewards"):
- 5: it succeeded and brought something the answer needs for the first time: a gold fact, or a value
  that a gold call takes and the query does not give (an id found by a search), or it executed a gold
  call (same function, same arguments) not executed before;
- 0: anything else: failed calls, functions the task does not need, and calls that bring nothing new (a
  repeat of an earlier call, a gold function with other arguments that found nothing needed). Paying a
  repeat (this annotator gave it 1 before) made padding a trajectory with calls out-earn answering.
Progress after each step: the share of the needed items seen so far (the potential of the `progress` shaping).
IsSolved: the rule judge on the final answer (all facts Solved, some Unsure, none or no Finish Unsolved).
"""
from __future__ import annotations

import json

from pipeline.annotate.base import StepLabel, TrajLabel, call_key, step_is_call
from pipeline.annotate.succ_calling import succ_calling
from pipeline.task import Task
from pipeline.toolworld.fact_judge import fact_stated, pass_score, rule_judge

PROMPT_VERSION = "oracle-v2"  # v2: no credit for calls that bring nothing new; progress


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
    gold_calls = {call_key(c.function_name, c.arguments) for c in task.gold_calls or []}
    seen: set[str] = set()
    done_calls: set[tuple] = set()
    labels = []
    for st in steps:
        progress = len(seen) / len(items) if items else 1.0
        if not step_is_call(st):
            labels.append(StepLabel(None, None, progress=progress))
            continue
        sc, _ = succ_calling(st["api_name"], st["parse_ok"], st["observation"], env_status=st.get("env_status"))
        con = 0.0
        if sc:
            obs = st["observation"] or ""
            new = [x for x in items if x not in seen and fact_stated(x, obs)]
            call = call_key(st["api_name"], st["arguments_json"])
            if new or (call in gold_calls and call not in done_calls):
                con = 5.0
            seen.update(new)
            done_calls.add(call)
        labels.append(StepLabel(float(sc), con, progress=len(seen) / len(items) if items else 1.0))
    status = rule_judge(task.gold_facts or [], traj.get("final_answer"), traj.get("finish_type") or "none")
    return TrajLabel(traj["traj_id"], labels, status, pass_score(status), "oracle", PROMPT_VERSION)


def annotate(trajs: list[dict], steps_by_traj: dict[str, list[dict]], tasks: dict[str, Task], cfg,
             cache_path: str | None = None, progress: bool = True) -> tuple[list[TrajLabel], dict]:
    """The oracle as a registered annotator (pipeline/registry.py): one label per trajectory, no statistics."""
    return [oracle_label(t, steps_by_traj[t["traj_id"]], tasks[t["task_id"]]) for t in trajs], {}
