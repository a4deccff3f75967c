"""The `heuristic` annotator, for environments without gold: the reference implementation's rule.
A successful call contributes (5) when the longest common subsequence of its response and the final
answer covers at least `threshold` of the response, else 0; a repeat of an earlier call (same function, same
arguments) brings nothing new and gets 0, as the paper's Contribution asks. IsSolved: the rule judge when the task has
gold facts; otherwise a given answer is Unsure (nobody checked it) and no answer is Unsolved."""
from __future__ import annotations

from pipeline.annotate.base import StepLabel, TrajLabel, call_key, step_is_call
from pipeline.annotate.succ_calling import read_envelope, succ_calling
from pipeline.task import Task
from pipeline.toolworld.fact_judge import pass_score, rule_judge

PROMPT_VERSION = "heuristic-lcs-v2"  # v2: a repeated call contributes 0
MAX_CHARS = 4000  # both texts are cut here: the bit-parallel LCS is O(n*m/64) and stays fast


def lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence of `a` and `b` (Hyyrö's bit-parallel algorithm: one big-int
    update per character of `b`)."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, ch in enumerate(a):
        masks[ch] = masks.get(ch, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for ch in b:
        u = v & masks.get(ch, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def lcs_ratio(response: str, answer: str) -> float:
    """LCS(response, answer) / len(response), both cut to MAX_CHARS."""
    response, answer = response[:MAX_CHARS], answer[:MAX_CHARS]
    return lcs_length(response, answer) / len(response) if response else 0.0


def heuristic_label(traj: dict, steps: list[dict], task: Task | None, threshold: float = 0.5) -> TrajLabel:
    answer = traj.get("final_answer") or ""
    labels = []
    made: set[tuple] = set()
    for st in steps:
        if not step_is_call(st):
            labels.append(StepLabel(None, None))
            continue
        sc, _ = succ_calling(st["api_name"], st["parse_ok"], st["observation"], env_status=st.get("env_status"))
        con = 0.0
        key = call_key(st.get("api_name"), st.get("arguments_json"))
        repeat = key in made
        made.add(key)
        if sc and answer and not repeat:
            _, response, _ = read_envelope(st["observation"] or "")
            text = response if isinstance(response, str) else str(response)
            con = 5.0 if lcs_ratio(text, answer) >= threshold else 0.0
        labels.append(StepLabel(float(sc), con))
    finish = traj.get("finish_type") or "none"
    if task is not None and task.gold_facts:
        status = rule_judge(task.gold_facts, answer, finish)
    else:
        status = "Unsure" if finish == "give_answer" and answer.strip() else "Unsolved"
    return TrajLabel(traj["traj_id"], labels, status, pass_score(status), "heuristic", PROMPT_VERSION)


def annotate(trajs: list[dict], steps_by_traj: dict[str, list[dict]], tasks: dict[str, Task], cfg,
             cache_path: str | None = None, progress: bool = True) -> tuple[list[TrajLabel], dict]:
    """The heuristic as a registered annotator (pipeline/registry.py), at `annotate.heuristic_threshold`."""
    return [heuristic_label(t, steps_by_traj[t["traj_id"]], tasks[t["task_id"]], cfg.heuristic_threshold)
            for t in trajs], {}
