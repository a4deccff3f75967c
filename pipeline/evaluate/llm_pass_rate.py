"""The `openai` pass-rate judge, with StableToolBench's protocol (SoPR).

Per answer and judging run:
1. no Finish, a give-up or an empty final answer -> Unsolved, with no call;
2. else `check_answer_status` sees the query and the final answer only and says Solved, Unsure or Unsolved
   with a reason;
3. only when it says Unsure, `parse_answer_status` sees the whole trajectory (every call and response) and
   decides whether the answer is backed by the tools' results.
Runs differ by their seed (and the judge's temperature), so n runs give n independent judgings as in
StableToolBench. The client, cache, retries, concurrency and key handling are the annotate stage's
(`JudgeClient`); an answer that stays invalid after `max_invalid_retries` new requests is recorded as
Unsolved with the reason in the stats, never guessed.
"""
from __future__ import annotations

import json
from collections import defaultdict

from pipeline.annotate.cache import JudgeCache
from pipeline.annotate.llm_judge import InvalidAnswer, JudgeClient, _cut, judge_steps
from pipeline.config import Params
from pipeline.formats.stabletoolbench import STATUS_VALUE
from pipeline.task import Task

PROMPT_VERSION = "steptool-passrate-v1"

CHECK_SYSTEM = (
    "You judge whether an AI agent's final answer solves a user's query. Decide the answer_status:\n"
    "- Unsolved if the answer is an apology, a refusal, off topic, or does not respond to what was asked;\n"
    "- Solved if the answer responds directly to every part of the query with specific information;\n"
    "- Unsure if it responds, but you cannot tell from the answer alone whether it is sufficient or right.\n"
    "Call check_answer_status with the status and a short reason."
)
PARSE_SYSTEM = (
    "You judge whether an AI agent solved a user's query, from its whole execution: every tool call with the "
    "tool's response, then its final answer. Decide the answer_status:\n"
    "- Unsolved if every tool call failed, or the final answer states things the tool responses do not support;\n"
    "- Unsure if you cannot verify the answer against the responses;\n"
    "- Solved if successful tool calls gave the information the final answer uses and it answers the query.\n"
    "Call parse_answer_status with the status and a short reason."
)


def _tool(name: str, what: str) -> dict:
    return {"type": "function", "function": {
        "name": name, "description": what,
        "parameters": {"type": "object", "properties": {
            "answer_status": {"type": "string", "enum": ["Solved", "Unsure", "Unsolved"]},
            "reason": {"type": "string", "description": "Why, in one or two sentences."}},
            "required": ["answer_status", "reason"]}}}


CHECK_TOOL = _tool("check_answer_status", "Record whether the final answer solves the query.")
PARSE_TOOL = _tool("parse_answer_status", "Record whether the execution solves the query.")


def parse_status(body: dict, name: str) -> tuple[str, str]:
    """(status, reason) from a forced `name` call; InvalidAnswer when the body is not one."""
    try:
        call = body["choices"][0]["message"]["tool_calls"][0]["function"]
    except (KeyError, IndexError, TypeError):
        raise InvalidAnswer(f"no {name} call in the answer") from None
    if call.get("name") != name:
        raise InvalidAnswer(f"called {call.get('name')!r}, not {name}")
    try:
        args = json.loads(call.get("arguments") or "")
    except json.JSONDecodeError:
        raise InvalidAnswer(f"{name} arguments are not JSON") from None
    status = str(args.get("answer_status", "")).split(".")[-1] if isinstance(args, dict) else ""
    if status not in STATUS_VALUE:
        raise InvalidAnswer(f"answer_status must be Solved, Unsure or Unsolved, got {status!r}")
    return status, str(args.get("reason", ""))[:300]


def check_messages(query: str, answer: str) -> list[dict]:
    return [{"role": "system", "content": CHECK_SYSTEM},
            {"role": "user", "content": f"Query:\n{query}\n\nFinal answer:\n{answer}"}]


def parse_messages(query: str, steps: list[dict], answer: str, max_response_chars: int) -> list[dict]:
    lines = [f"Query:\n{query}\n", "Execution:"]
    for i, s in enumerate(judge_steps(steps), 1):
        lines.append(f"Step {i}: call {s['name']} with arguments {s['arguments']}\n"
                     f"Response: {_cut(s['response'], max_response_chars)}")
    lines.append(f"\nFinal answer:\n{answer}")
    return [{"role": "system", "content": PARSE_SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


class PassRateJudge(JudgeClient):
    prompt_version = PROMPT_VERSION
    desc = "judge pass rate"

    def __init__(self, cfg, cache: JudgeCache, n_judgings: int):
        super().__init__(cfg, cache)
        self.n_judgings = n_judgings
        self.stats.update(no_call_unsolved=0, second_calls=0, failed_judgings=0)
        self.failures: list[str] = []

    def judge(self, items: list[tuple[dict, list[dict], str]], progress: bool = True) -> list[list[str]]:
        """`items`: (trajectory row, its steps, query). Returns the statuses of every judging run, in order.
        Stops before any call when the estimate is above `max_cost_usd` (check_budget)."""
        self.prepare(items)
        return self.run_all(items, lambda client, it: self._answer(client, *it), progress)

    def first_requests(self, items: list) -> list[dict]:
        """The answer check of every judging run of every answered trajectory (an Unsure answer's second call,
        on the whole trajectory, is not counted)."""
        out = []
        for traj, _, query in items:
            answer = (traj.get("final_answer") or "").strip()
            if traj.get("finish_type") == "give_answer" and answer:
                out += [self.request(check_messages(query, answer), CHECK_TOOL, r, 0) for r in range(self.n_judgings)]
        return out

    async def _answer(self, client, traj: dict, steps: list[dict], query: str) -> list[str]:
        import asyncio

        answer = (traj.get("final_answer") or "").strip()
        if traj.get("finish_type") != "give_answer" or not answer:
            self.stats["no_call_unsolved"] += 1
            return ["Unsolved"] * self.n_judgings
        return list(await asyncio.gather(*(self._run(client, traj, steps, query, answer, r)
                                           for r in range(self.n_judgings))))

    async def _ask_status(self, client, messages, tool, run: int) -> tuple[str | None, str]:
        reasons = []
        for attempt in range(self.cfg.max_invalid_retries + 1):
            body, _, failure = await self.ask(client, self.request(messages, tool, run, attempt))
            if failure:
                return None, failure
            try:
                return parse_status(body, tool["function"]["name"])[0], ""
            except InvalidAnswer as e:
                self.stats["invalid_answers"] += 1
                reasons.append(str(e))
        return None, "invalid answers: " + " | ".join(reasons)

    async def _run(self, client, traj, steps, query, answer, run: int) -> str:
        status, failure = await self._ask_status(client, check_messages(query, answer), CHECK_TOOL, run)
        if status == "Unsure":
            self.stats["second_calls"] += 1
            status, failure = await self._ask_status(
                client, parse_messages(query, steps, answer, self.cfg.max_response_chars), PARSE_TOOL, run)
        if status is None:
            self.stats["failed_judgings"] += 1
            self.failures.append(f"{traj['traj_id']} run {run}: {failure}")
            return "Unsolved"
        return status


def judge_answers(trajs: list[dict], steps: list[dict], tasks: dict[str, Task], params: Params,
                  progress: bool = True) -> tuple[dict[str, list[str]], dict]:
    """traj_id -> statuses of `params.evaluate.n_judgings` runs, and the judge's counters."""

    by_traj: dict[str, list[dict]] = defaultdict(list)
    for s in steps:
        by_traj[s["traj_id"]].append(s)
    for v in by_traj.values():
        v.sort(key=lambda s: s["step_idx"])
    a = params.annotate
    cache = JudgeCache(a.cache_path)
    try:
        judge = PassRateJudge(a, cache, params.evaluate.n_judgings)
        items = [(t, by_traj[t["traj_id"]], tasks[t["task_id"]].query) for t in trajs]
        statuses = judge.judge(items, progress)
    finally:
        cache.close()
    stats = dict(judge.stats, failures=judge.failures[:20])
    return {t["traj_id"]: st for t, st in zip(trajs, statuses)}, stats
