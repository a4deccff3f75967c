"""Rollouts -> the rows of trajectories.parquet, steps.parquet and tokens.parquet (see pipeline.schema)."""
from __future__ import annotations

import json

from pipeline.agent.prompts import ChatRenderer
from pipeline.agent.rollout import Rollout


def rollout_rows(r: Rollout, renderer: ChatRenderer) -> tuple[dict, list[dict], list[dict]]:
    """(trajectory row, step rows, token rows) of one rollout."""
    tid = r.traj_id
    context = renderer.prefix(r.system, r.user)
    steps, tokens = [], []
    for i, st in enumerate(r.steps):
        g, p, res = st.generation, st.parsed, st.result
        steps.append({
            "traj_id": tid, "task_id": r.task.task_id, "step_idx": i, "prompt_text": context,
            "action_text": g.text, "thought": p.thought, "api_name": p.api_name, "arguments_json": p.arguments,
            "parse_ok": p.parse_ok, "observation": res.observation, "is_finish": p.api_name == "Finish",
            "finish_type": res.finish_type, "final_answer": res.final_answer, "prompt_tokens": st.prompt_len,
            "action_tokens": len(g.token_ids), "behaviour_logprob": float(sum(g.logprobs)),
            "parse_error": p.error, "env_status": res.status,
        })
        tokens.append({"traj_id": tid, "step_idx": i, "action_ids": list(g.token_ids),
                       "logprobs": [float(x) for x in g.logprobs], "ended": g.ended})
        context += renderer.tok.decode(g.token_ids, skip_special_tokens=False) \
            + renderer.observation_segment(res.observation, g.ended)
    traj = {
        "traj_id": tid, "task_id": r.task.task_id, "policy": r.policy, "strategy": r.strategy,
        "sample_idx": r.sample_idx, "seed": r.seed, "n_steps": len(r.steps), "finish_type": r.finish_type,
        "final_answer": r.final_answer, "split": r.task.split, "level": r.task.level,
        "actions_generated": r.actions_generated,
        "tree_json": json.dumps(r.tree, ensure_ascii=False) if r.tree is not None else None,
    }
    return traj, steps, tokens
