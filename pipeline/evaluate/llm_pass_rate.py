"""The `openai` pass-rate judge, with StableToolBench's protocol (SoPR).

Per answer and judging run, as StableToolBench's evaluator does it (`eval_pass_rate.py`, `rtl.py`), with its
criteria text verbatim (below):
1. no Finish, a give-up or an empty final answer -> Unsolved, with no call;
2. else `check_answer_status` sees the query and the final answer only and says Solved, Unsure or Unsolved;
3. only when it says Unsure, `parse_answer_status` sees the whole converted answer (every call and response
   as StableToolBench's `answer_details` JSON) and decides whether the answer is backed by the tools' results.
Runs differ by their seed (at `evaluate.judge_temperature`, 0 as in StableToolBench), so n runs give n
judgings as StableToolBench's `evaluate_times`. The client, cache, retries, concurrency and key handling are the annotate stage's
(`JudgeClient`); an answer that stays invalid after `max_invalid_retries` new requests is recorded as
Unsolved with the reason in the stats, never guessed.
"""
from __future__ import annotations

import json
from collections import defaultdict

from pipeline.annotate.cache import JudgeCache
from pipeline.annotate.llm_judge import InvalidAnswer, JudgeClient, answer_status, function_arguments
from pipeline.config import Params
from pipeline.formats.stabletoolbench import converted_answer_body
from pipeline.task import Task

PROMPT_VERSION = "stabletoolbench-tooleval-v1"

# StableToolBench's pass-rate criteria, verbatim: the <description> of `check_answer_status` and of
# `parse_answer_status` in toolbench/tooleval/evaluators/tooleval_gpt-3.5-turbo_default/template.txt
# (THUNLP-MT/StableToolBench, Apache-2.0; the copy vendored by yuyq18/StepTool at commit
# 121a6acd11a899d947a5d3fa7269cf76624c1df3, under stabletoolbench/). Its evaluator
# (evaluators/registered_cls/tooleval.py `function_call`, rtl.py `check_is_solved`) formats the description
# (newlines around it included) into the only message, a user message, and forces the function, whose
# parameters are those of config.yaml beside the template. {answer} is the converted answer's `final_answer`
# (Finish's arguments, JSON text) for the first and `json.dumps` of the whole converted answer for the second.
CHECK_TEMPLATE = """
Giving the query and answer, you need give `answer_status` of the answer by following rules:
1. If the answer is a sorry message or not a positive/straight response for the given query, return "Unsolved".
2. If the answer is a positive/straight response for the given query, you have to further check.
2.1 If the answer is not sufficient to determine whether the solve the query or not, return "Unsure".
2.2 If you are confident that the answer is sufficient to determine whether the solve the query or not, return "Solved" or "Unsolved".

Query:
{query}
Answer:
{answer}

Now give your reason in "content" and `answer_status` of JSON to `check_answer_status`.
"""
PARSE_TEMPLATE = """
Giving the query and the correspond execution detail of an answer, you need give `answer_status` of the answer by following rules:
1. If all 'tool' nodes' message indicate that there are errors happened, return "Unsolved"
2. If you find the information in the "final_answer" is not true/valid according to the messages in 'tool' nodes, return "Unsolved"
3. If you are unable to verify the authenticity and validity of the information, return "Unsure"
4. If there are 'tool' node in the chain contains successful func calling and those calling indeed solve the query, return "Solved"

Query:
{query}
Answer:
{answer}

Now you are requested to give reason in "content" and `answer_status` of JSON to `parse_answer_status`.
"""


def _tool(name: str) -> dict:
    """The function as config.yaml declares it (the evaluator's pass-rate run asks for no `reason`)."""
    return {"type": "function", "function": {
        "name": name, "description": "Parse the json answer with layerd nodes and return the answer_status about the answer",
        "parameters": {"type": "object", "properties": {
            "answer_status": {"type": "string", "enum": ["Unsure", "Unsolved", "Solved"]}},
            "required": ["answer_status"]}}}


CHECK_TOOL = _tool("check_answer_status")
PARSE_TOOL = _tool("parse_answer_status")


def parse_status(body: dict, name: str) -> tuple[str, str]:
    """(status, reason) from a forced `name` call (the reason is the message's content, where the criteria ask
    for it, or an argument); InvalidAnswer when the body is not one."""
    args, message = function_arguments(body, name)
    try:
        status = answer_status(args.get("answer_status"))
    except InvalidAnswer as e:
        raise InvalidAnswer(f"answer_status: {e}") from None
    return status, str(args.get("reason") or message.get("content") or "")[:300]


def check_messages(query: str, answer: dict) -> list[dict]:
    """`answer`: the converted answer (`converted_answer_body`); the check sees its final_answer only."""
    return [{"role": "user", "content": CHECK_TEMPLATE.format(query=query, answer=answer["final_answer"])}]


def parse_messages(query: str, answer: dict) -> list[dict]:
    return [{"role": "user", "content": PARSE_TEMPLATE.format(query=query, answer=json.dumps(answer))}]


class PassRateJudge(JudgeClient):
    prompt_version = PROMPT_VERSION
    desc = "judge pass rate"

    def __init__(self, cfg, cache: JudgeCache, n_judgings: int, temperature: float = 0.0):
        super().__init__(cfg, cache)
        self.n_judgings = n_judgings
        self.temperature = temperature
        self.stats.update(no_call_unsolved=0, second_calls=0, failed_judgings=0)
        self.failures: list[str] = []

    def request(self, messages: list[dict], tool: dict, run: int, attempt: int) -> dict:
        # StableToolBench's evaluator samples at temperature 0 (its config.yaml); the runs differ by their seed
        return dict(super().request(messages, tool, run, attempt), temperature=self.temperature)

    def judge(self, items: list[tuple[dict, dict, str]], progress: bool = True) -> list[list[tuple[str, str]]]:
        """`items`: (trajectory row, its converted answer (`converted_answer_body`), query). Returns (status,
        reason) of every judging run, in order: the reason is what the deciding call said in its message (the
        criteria ask for it in "content"), prefixed by that call's function, or why no call decided. Stops before
        any call when the estimate is above `max_cost_usd` (check_budget)."""
        self.prepare(items)
        return self.run_all(items, lambda client, it: self._answer(client, *it), progress)

    @staticmethod
    def answered(traj: dict) -> bool:
        """Whether the answer goes to the judge: StableToolBench answers Unsolved without a call when there is
        no Finish or it gives up; an empty answer is Unsolved here too (the check would see no answer)."""
        return traj.get("finish_type") == "give_answer" and bool((traj.get("final_answer") or "").strip())

    def first_requests(self, items: list) -> list[dict]:
        """The answer check of every judging run of every answered trajectory (an Unsure answer's second call,
        on the whole trajectory, is not counted)."""
        return [self.request(check_messages(query, answer), CHECK_TOOL, r, 0)
                for traj, answer, query in items if self.answered(traj) for r in range(self.n_judgings)]

    async def _answer(self, client, traj: dict, answer: dict, query: str) -> list[tuple[str, str]]:
        import asyncio

        if not self.answered(traj):
            self.stats["no_call_unsolved"] += 1
            why = "gave up" if traj.get("finish_type") == "give_up" else "no final answer"
            return [("Unsolved", f"{why}: Unsolved without a call, as StableToolBench's evaluator does")] * self.n_judgings
        return list(await asyncio.gather(*(self._run(client, traj, answer, query, r) for r in range(self.n_judgings))))

    async def _ask_status(self, client, messages, tool, run: int) -> tuple[str | None, str, str]:
        """(status or None, the call's reason, failure)."""
        name = tool["function"]["name"]
        got, _, failure = await self.ask_valid(client, messages, tool, run, parse=lambda b: parse_status(b, name))
        if failure:
            return None, "", failure
        status, reason = got
        return status, f"{name}: {status}" + (f" ({reason})" if reason else ""), ""

    async def _run(self, client, traj, answer: dict, query: str, run: int) -> tuple[str, str]:
        status, reason, failure = await self._ask_status(client, check_messages(query, answer), CHECK_TOOL, run)
        if status == "Unsure":
            self.stats["second_calls"] += 1
            first = reason
            status, reason, failure = await self._ask_status(client, parse_messages(query, answer), PARSE_TOOL, run)
            reason = f"{first}; then {reason}"
        if status is None:
            self.stats["failed_judgings"] += 1
            self.failures.append(f"{traj['traj_id']} run {run}: {failure}")
            return "Unsolved", f"no valid judgement, counted Unsolved: {failure}"[:300]
        return status, reason


def judge_answers(trajs: list[dict], steps: list[dict], tasks: dict[str, Task], params: Params,
                  progress: bool = True) -> tuple[dict[str, list[tuple[str, str]]], dict]:
    """traj_id -> (status, reason) of each of `params.evaluate.n_judgings` runs, and the judge's counters."""

    by_traj: dict[str, list[dict]] = defaultdict(list)
    for s in steps:
        by_traj[s["traj_id"]].append(s)
    a = params.annotate
    cache = JudgeCache(a.cache_path)
    try:
        judge = PassRateJudge(a, cache, params.evaluate.n_judgings, params.evaluate.judge_temperature)
        items = [(t, converted_answer_body(t, by_traj[t["traj_id"]]), tasks[t["task_id"]].query) for t in trajs]
        statuses = judge.judge(items, progress)
    finally:
        cache.close()
    stats = dict(judge.stats, failures=judge.failures[:20])
    return {t["traj_id"]: st for t, st in zip(trajs, statuses)}, stats
