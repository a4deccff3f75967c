"""Per-task evaluation results and their summary: pass rate, tool-invocation success, steps, give-ups.

One result row per trajectory (a task played by one checkpoint, its training seed, with one sample index);
`statuses` holds one judge status per judging run. The pass rate follows StableToolBench
(`pipeline.evaluate.passrate`): for every (seed, sample, judging run) the share (#Solved + 0.5 #Unsure) / #tasks of a level, then mean and population
std over those pairs; the overall figure is the mean of the levels present, as the paper averages
I1/I2/I3. Every test task counts: a trajectory that never finished is Unsolved, not left out.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from pipeline.annotate.succ_calling import succ_calling
from pipeline.errors import SteptoolError
from pipeline.formats.stabletoolbench import STATUS_VALUE
from pipeline.schema import EVAL_RESULTS, read_table
from pipeline.task import Task
from pipeline.toolworld.fact_judge import UNSOLVED, fact_stated, rule_judge


def rule_statuses(trajectories: list[dict], steps: list[dict], tasks: dict[str, Task],
                  params=None) -> tuple[dict[str, list[str]], dict]:
    """The `rule` pass-rate judge (pipeline/registry.py, JUDGES): traj_id -> [the rule judge's status on the task's
    gold facts], judged once; no counters. A task without gold facts is refused (it cannot be judged by rule)."""
    statuses = {}
    for t in trajectories:
        task = tasks[t["task_id"]]
        if not task.has_gold:
            raise SteptoolError(f"task {task.task_id} has no gold facts: the rule judge needs them (use judge: "
                                "openai)")
        statuses[t["traj_id"]] = [rule_judge(task.gold_facts, t["final_answer"] or "", t["finish_type"])]
    return statuses, {}


def result_rows(model: str, strategy: str, trajectories: list[dict], steps: list[dict], tasks: dict[str, Task],
                statuses: dict[str, list[str]] | None = None, seed: int | None = None,
                judge: str = "rule") -> list[dict]:
    """Rows of EVAL_RESULTS. `statuses`: traj_id -> what `judge` gave per judging run (a JUDGES entry's output):
    a status, or (status, reason) from a judge that says why (the row's `reasons`; null when it gives none); None:
    the rule judge's (`rule_statuses`). `seed`: the checkpoint's training seed (None for base and sft)."""
    if statuses is None:
        statuses, _ = rule_statuses(trajectories, steps, tasks)
        judge = "rule"
    by_traj: dict[str, list[dict]] = defaultdict(list)
    for s in steps:
        by_traj[s["traj_id"]].append(s)
    rows = []
    for t in trajectories:
        task = tasks[t["task_id"]]
        calls = [s for s in by_traj[t["traj_id"]] if not s["is_finish"]]
        ok = sum(succ_calling(s["api_name"] or "", s["parse_ok"], s["observation"], env_status=s["env_status"])[0] == 1
                 for s in calls)
        answer = t["final_answer"] or ""
        facts = task.gold_facts if task.has_gold else None
        st, reasons = split_judgings(statuses.get(t["traj_id"]) or [UNSOLVED])
        rows.append({
            "model": model, "strategy": strategy, "task_id": t["task_id"], "level": task.level, "seed": seed,
            "sample_idx": t["sample_idx"], "traj_id": t["traj_id"], "judge": judge,
            "statuses": st, "reasons": reasons, "pass_score": statistics.fmean(STATUS_VALUE[s] for s in st),
            "finish_type": t["finish_type"], "final_answer": t["final_answer"], "n_steps": t["n_steps"],
            "n_calls": len(calls), "n_calls_ok": ok,
            "facts_stated": _facts_stated(facts, answer, t["finish_type"]),
            "n_facts": None if facts is None else len(facts),
            "actions_generated": t["actions_generated"],
        })
    return rows


def split_judgings(judged: list) -> tuple[list[str], list[str] | None]:
    """(statuses, reasons) of one trajectory's judging runs, each a status or (status, reason); reasons None when
    no run gives one."""
    pairs = [(j, None) if isinstance(j, str) else (str(j[0]), None if j[1] is None else str(j[1])) for j in judged]
    reasons = [r for _, r in pairs]
    return [s for s, _ in pairs], None if all(r is None for r in reasons) else [r or "" for r in reasons]


def _facts_stated(facts: list[str] | None, answer: str, finish_type: str) -> int | None:
    if facts is None:
        return None
    return sum(fact_stated(f, answer) for f in facts) if finish_type == "give_answer" else 0


def _rates(rows: list[dict]) -> list[float]:
    """Pass rate in percent for every (seed, sample, judging run)."""
    cells: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        for run, s in enumerate(r["statuses"]):
            cells[(r.get("seed"), r["sample_idx"], run)].append(STATUS_VALUE[s])
    return [100.0 * statistics.fmean(v) for v in cells.values()]


def _mean_std(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": round(statistics.fmean(values), 3), "std": round(statistics.pstdev(values), 3), "n": len(values)}


def summarize(rows: list[dict]) -> dict:
    """Metrics of one model x strategy: pass rate per level and overall, tool success, steps, give-ups."""
    by_level: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_level[r["level"]].append(r)
    levels = {lv: _mean_std(_rates(rs)) for lv, rs in sorted(by_level.items())}
    means = [v["mean"] for v in levels.values() if v["mean"] is not None]
    stds = [v["std"] for v in levels.values() if v["std"] is not None]
    calls = sum(r["n_calls"] for r in rows)
    n = max(len(rows), 1)
    return {
        "tasks": len({r["task_id"] for r in rows}),
        "trajectories": len(rows),
        "samples": len({r["sample_idx"] for r in rows}),
        "seeds": sorted({r["seed"] for r in rows if r.get("seed") is not None}),
        "judge_runs": max((len(r["statuses"]) for r in rows), default=0),
        "pass_rate": {**levels, "average": {"mean": round(statistics.fmean(means), 3) if means else None,
                                            "std": round(statistics.fmean(stds), 3) if stds else None}},
        "solved_rate": round(sum(s == "Solved" for r in rows for s in r["statuses"])
                             / max(sum(len(r["statuses"]) for r in rows), 1), 4),
        "tool_success_rate": round(sum(r["n_calls_ok"] for r in rows) / calls, 4) if calls else None,
        "avg_steps": round(sum(r["n_steps"] for r in rows) / n, 3),
        "calls_per_task": round(calls / n, 3),
        "avg_actions_generated": round(sum(r["actions_generated"] or 0 for r in rows) / n, 3),
        "give_up_rate": round(sum(r["finish_type"] == "give_up" for r in rows) / n, 4),
        "no_finish_rate": round(sum(r["finish_type"] not in ("give_answer", "give_up") for r in rows) / n, 4),
    }


_RANK = {"Solved": 2, "Unsure": 1, "Unsolved": 0}


def compare_round(cand: dict, ref: dict, run: int) -> int:
    """+1 when the candidate's answer wins judging run `run`, -1 when it loses, 0 for a tie.

    StableToolBench's order: the better status wins (Solved > Unsure > Unsolved); with equal status the
    more informative answer (with gold: more facts stated), then the cheaper one (fewer tool calls)."""
    a, b = _RANK[cand["statuses"][run]], _RANK[ref["statuses"][run]]
    if a != b:
        return 1 if a > b else -1
    fa, fb = cand.get("facts_stated"), ref.get("facts_stated")
    if fa is not None and fb is not None and fa != fb:
        return 1 if fa > fb else -1
    if a > 0 and cand["n_calls"] != ref["n_calls"]:  # cost only between answers worth having
        return 1 if cand["n_calls"] < ref["n_calls"] else -1
    return 0


def win_rate(cand_rows: list[dict], ref_rows: list[dict]) -> dict:
    """Win / tie / loss shares of the candidate against the reference over the tasks (and seeds and samples)
    both played; a candidate's seed meets the reference's same seed, or its only checkpoint (sft). A task is
    won when the candidate wins more judging rounds than it loses; ties are their own share, never counted as
    half wins."""
    ref = {(r["task_id"], r.get("seed"), r["sample_idx"]): r for r in ref_rows}
    wins = ties = losses = 0
    for c in cand_rows:
        r = ref.get((c["task_id"], c.get("seed"), c["sample_idx"])) or ref.get((c["task_id"], None, c["sample_idx"]))
        if r is None:
            continue
        runs = min(len(c["statuses"]), len(r["statuses"]))
        score = sum(compare_round(c, r, k) for k in range(runs))
        wins += score > 0
        losses += score < 0
        ties += score == 0
    n = wins + ties + losses
    return {"tasks": n, "win": round(wins / n, 4) if n else None, "tie": round(ties / n, 4) if n else None,
            "loss": round(losses / n, 4) if n else None}


def replay_summary(rows: list[dict]) -> dict:
    """Of a greedy replay's EVAL_RESULTS rows: pass rate in % (Solved 1, Unsure 0.5), the share of tool calls
    that failed (SuccCalling 0 by the rule) and tool calls per task."""
    calls = sum(r["n_calls"] for r in rows)
    return {"tasks": len(rows),
            "pass_rate": round(100.0 * sum(r["pass_score"] for r in rows) / len(rows), 3) if rows else None,
            "failed_call_rate": round(1 - sum(r["n_calls_ok"] for r in rows) / calls, 4) if calls else None,
            "calls_per_task": round(calls / len(rows), 3) if rows else None}


def replay_behaviour(results: Path) -> dict | None:
    """A greedy replay's readouts from its results.parquet (None when there is none): `replay_summary`'s plus the
    no-answer rate (no Finish at all)."""
    if not results.exists():
        return None
    rows = read_table(results, EVAL_RESULTS).to_pylist()
    out = replay_summary(rows)
    out["no_finish_rate"] = (round(sum(r["finish_type"] not in ("give_answer", "give_up") for r in rows) / len(rows), 4)
                             if rows else None)
    return out
