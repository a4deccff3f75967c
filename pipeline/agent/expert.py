"""Expert paths for the warm start: the ToolWorld gold plan played through the environment, with natural
thoughts, and now and then a recoverable mistake (a name passed as an id, a forgotten argument) followed
by its fix, so that the model also sees how to recover. Rate-limited calls are retried, as a careful
agent would.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

from pipeline.agent.prompts import format_action
from pipeline.envs import ApiListEnv
from pipeline.task import GoldCall, Task
from pipeline.toolworld.world import RATE_LIMIT_ERROR, ToolWorld

SEARCH_THOUGHTS = ("I need the id of {q} first, so I will search for it.",
                   "To look up {q} I first need its id; the search function gives it.",
                   "Let me search for {q} to get its id.")
BY_ID_THOUGHTS = ("The search returned the id {id}. Now I can call {fn} with it.",
                  "I have the id {id}, so I'll use {fn}.",
                  "With id {id} I can get what the user asked for from {fn}.")
LIST_THOUGHTS = ("I'll list them with {fn}, filtering on {arg}.", "{fn} can filter by {arg}; let me call it.")
CALC_THOUGHTS = ("{fn} computes this directly; I'll pass the numbers from the query.",
                 "I'll call {fn} with the values the user gave.")
RETRY_THOUGHTS = ("The API is rate-limited. I'll retry the same call.", "Too many requests; trying again.")
FIX_ID_THOUGHTS = ("That failed: {fn} needs the id from the search results, not the name. Using {id}.",
                   "The call returned not found, because I passed the name instead of the id {id}. Retrying.")
FIX_MISSING_THOUGHTS = ("I forgot the required argument. Calling {fn} again with it.",
                        "The call is missing an argument; let me add it.")
FINISH_THOUGHTS = ("I have everything the user asked for, so I'll give the final answer.",
                   "All the information is collected. Time to answer.")


@dataclass
class ExpertPath:
    task: Task
    actions: list[str] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)  # one per action but the last (Finish)
    mistakes: int = 0


def _kind(world: ToolWorld, call: GoldCall) -> str:
    api = world.api(call.tool_name, call.api_name)
    return api.kind if api else "unknown"


def expert_path(task: Task, env: ApiListEnv, world: ToolWorld, rng: random.Random, error_rate: float = 0.3,
                max_retries: int = 5, fmt: str = "compact") -> ExpertPath:
    """Play `task`'s gold plan in `env` (reset here) and write the actions an expert would."""
    if not task.has_gold:
        raise ValueError(f"task {task.task_id} has no gold plan")
    env.reset(task, episode=f"expert:{task.task_id}:{rng.random()}")
    path = ExpertPath(task)
    last_search: dict[str, str] = {}  # query -> id found

    def do(thought: str, call_fn: str, args: str) -> dict:
        path.actions.append(format_action(thought, call_fn, args, fmt))
        result = env.step(call_fn, args)
        path.observations.append(result.observation)
        return result.envelope or {}

    for call in task.gold_calls or []:
        kind = _kind(world, call)
        args = json.loads(call.arguments)
        fn = call.function_name
        if kind == "search":
            thought = rng.choice(SEARCH_THOUGHTS).format(q=args.get("query", ""))
        elif kind in ("details", "sub"):
            ident = next(iter(args.values()))
            thought = rng.choice(BY_ID_THOUGHTS).format(id=ident, fn=fn)
            if rng.random() < error_rate:  # a recoverable mistake, then its fix
                path.mistakes += 1
                if rng.random() < 0.5 and last_search:
                    wrong = {next(iter(args)): next(iter(last_search))}
                    do(f"I'll call {fn} for {next(iter(last_search))}.", fn, json.dumps(wrong))
                    thought = rng.choice(FIX_ID_THOUGHTS).format(fn=fn, id=ident)
                else:
                    do(f"Now I'll call {fn}.", fn, "{}")
                    thought = rng.choice(FIX_MISSING_THOUGHTS).format(fn=fn)
        elif kind == "list_by":
            thought = rng.choice(LIST_THOUGHTS).format(fn=fn, arg=", ".join(f"{k}={v}" for k, v in args.items()))
        else:
            thought = rng.choice(CALC_THOUGHTS).format(fn=fn)
        envelope = do(thought, fn, call.arguments)
        for _ in range(max_retries):
            if envelope.get("error") != RATE_LIMIT_ERROR:
                break
            envelope = do(rng.choice(RETRY_THOUGHTS), fn, call.arguments)
        if kind == "search":
            results = (envelope.get("response") or {}).get("results") or []
            if results:
                last_search = {args.get("query", ""): next(iter(results[0].values()))}
    answer = "Here is what I found: " + "; ".join(task.gold_facts or []) + "."
    path.actions.append(format_action(rng.choice(FINISH_THOUGHTS), "Finish",
                                      {"return_type": "give_answer", "final_answer": answer}, fmt))
    final = env.step("Finish", json.dumps({"return_type": "give_answer", "final_answer": answer}))
    assert final.done and final.finish_type == "give_answer"
    return path
