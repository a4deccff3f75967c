"""Real trajectories for annotation tests: ToolWorld tasks played by a scripted agent through the same
rollout and record code as `collect` (expert paths, some cut short, some with a wrong call)."""
from __future__ import annotations

import json
import random

from pipeline.agent.backends import ScriptedPolicy
from pipeline.agent.expert import expert_path
from pipeline.agent.prompts import ChatRenderer, format_action
from pipeline.agent.records import rollout_rows
from pipeline.agent.rollout import run_cot
from pipeline.envs import ToolWorldEnv


def play_scripted(world, tasks, tokenizer, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(trajectory rows, step rows) for `tasks`: mostly expert paths; every 4th is cut before Finish,
    every 5th starts with a call to a function the task does not offer."""
    renderer = ChatRenderer(tokenizer)
    rng = random.Random(seed)
    trajs, steps = [], []
    for i, task in enumerate(tasks):
        path = expert_path(task, ToolWorldEnv(world), world, rng, error_rate=0.3)
        actions = list(path.actions)
        if i % 5 == 4:
            actions.insert(0, format_action("Let me try this.", "made_up_for_nothing", {"q": "x"}))
        max_steps = len(actions) - 1 if i % 4 == 3 and len(actions) > 1 else len(actions)
        it = iter(actions)
        policy = ScriptedPolicy(tokenizer, lambda p, s, it=it: next(it))
        (r,) = run_cot([(task, 0)], policy, renderer, lambda: ToolWorldEnv(world), max_steps=max_steps, seed=seed)
        traj, st, _ = rollout_rows(r, renderer)
        trajs.append(traj)
        steps.extend(st)
    return trajs, steps


def final_answer_of(steps: list[dict]) -> str:
    last = steps[-1]
    return json.loads(last["arguments_json"]).get("final_answer", "") if last["is_finish"] else ""
