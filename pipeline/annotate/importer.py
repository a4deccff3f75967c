"""Import step-grained annotations made elsewhere: the StepTool reference's reward-annotation JSON
(`{query_id: {query, tool_names, answer_steps, final_step, process_reward: {run: {succeed_tool_calling,
contributions}}, is_solved: {run: "AnswerStatus.X"}}}`) into our trajectories and annotated-steps schemas.

Votes (the reference's runs) are averaged as the openai annotator averages its own; every vote is kept in
`vote_details`. A record whose lists do not match its steps is an error that names the file, the record
and the field: nothing is padded or dropped silently.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.annotate.base import status_of
from pipeline.annotate.succ_calling import succ_calling
from pipeline.errors import SchemaError
from pipeline.formats.stabletoolbench import (STATUS_VALUE, answer_status, load_json_records, parse_answer_steps,
                                              parse_step_line)

PROMPT_VERSION = "steptool-reference"


def _finish(final_step: str, where: str) -> tuple[str, str, str]:
    """(arguments, finish_type, final_answer) of the reference's `Final step: {...}` line."""
    step = parse_step_line(final_step, f"{where} field final_step")
    try:
        args = json.loads(step.arguments, strict=False)
    except json.JSONDecodeError:
        args = {}
    args = args if isinstance(args, dict) else {}
    rt = args.get("return_type", "give_answer" if "final_answer" in args else "")
    finish_type = "give_up" if rt == "give_up_and_restart" else ("give_answer" if rt == "give_answer" else "none")
    return step.arguments, finish_type, str(args.get("final_answer", "")) if finish_type == "give_answer" else ""


def _literal(value, where: str):
    """A field as stored: JSON already parsed, or a Python literal in a string (read with ast.literal_eval)."""
    if not isinstance(value, str):
        return value
    import ast

    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
        raise SchemaError(f"{where} is neither JSON nor a Python literal ({type(e).__name__})") from None


def import_reference_annotations(path: str | Path, policy: str = "reference") -> tuple[list[dict], list[dict]]:
    """(trajectory rows, annotated step rows) for every record of `path`."""
    path = Path(path)
    data = load_json_records(path)
    trajs, rows = [], []
    for qid, rec in data.items():
        where = f"{path}: record {qid}"
        for key in ("query", "answer_steps", "final_step", "process_reward", "is_solved"):
            if key not in rec:
                raise SchemaError(f"{where}: missing field {key!r}")
        steps = parse_answer_steps(rec["answer_steps"], f"{where} field answer_steps")
        runs = _literal(rec["process_reward"], f"{where}: field process_reward")  # some dumps store literals
        statuses = _literal(rec["is_solved"], f"{where}: field is_solved")
        if not isinstance(runs, dict) or not runs or not all(isinstance(pr, dict) for pr in runs.values()):
            raise SchemaError(f"{where}: field process_reward must map each judge run to its values, got "
                              f"{json.dumps(runs)[:80]}")
        if not isinstance(statuses, dict) or not statuses:
            raise SchemaError(f"{where}: field is_solved must map each judge run to a status, got "
                              f"{json.dumps(statuses)[:80]}")
        sc_votes, con_votes = [], []
        for run, pr in sorted(runs.items()):
            for field, store in (("succeed_tool_calling", sc_votes), ("contributions", con_votes)):
                values = pr.get(field)
                if not isinstance(values, list) or len(values) != len(steps):
                    raise SchemaError(f"{where}: field process_reward.{run}.{field} has "
                                      f"{len(values) if isinstance(values, list) else 'no'} values for {len(steps)} steps")
                bad = next((v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))), None)
                if bad is not None:
                    raise SchemaError(f"{where}: field process_reward.{run}.{field} holds {bad!r}, not a number")
                store.append(values)
        try:
            scores = [STATUS_VALUE[answer_status(s)] for s in statuses.values()]
        except SchemaError as e:
            raise SchemaError(f"{where}: field is_solved: {e}") from None
        score = sum(scores) / len(scores)
        finish_args, finish_type, final_answer = _finish(rec["final_step"], where)
        traj_id = hashlib.sha256(f"{path.name}|{qid}".encode()).hexdigest()[:16]
        n_votes = len(sc_votes)
        trajs.append({"traj_id": traj_id, "task_id": str(qid), "policy": policy, "strategy": None, "sample_idx": 0,
                      "seed": None, "n_steps": len(steps) + 1, "finish_type": finish_type,
                      "final_answer": final_answer or None, "split": "test", "level": None,
                      "actions_generated": len(steps) + 1, "tree_json": None})
        common = {"traj_id": traj_id, "task_id": str(qid), "prompt_text": None, "action_text": None, "thought": None,
                  "prompt_tokens": None, "action_tokens": None, "behaviour_logprob": None, "parse_error": "",
                  "annotator": "imported", "judge_model": None, "prompt_version": PROMPT_VERSION,
                  "votes": n_votes, "cache_hits": 0}
        for i, st in enumerate(steps):
            sc = [v[i] for v in sc_votes]
            con = [v[i] for v in con_votes]
            sc_rule, reason = succ_calling(st.name, True, st.response)
            rows.append({**common, "step_idx": i, "api_name": st.name, "arguments_json": st.arguments,
                         "parse_ok": True, "observation": st.response, "is_finish": False, "finish_type": "none",
                         "final_answer": None, "env_status": "ok",
                         "succ_calling": sum(sc) / n_votes, "contribution": sum(con) / n_votes,
                         "progress": None, "is_solved": None, "is_solved_score": None, "sc_rule": sc_rule, "sc_reason": reason,
                         "vote_details": json.dumps([{"succeed_tool_calling": a, "contribution": b}
                                                     for a, b in zip(sc, con)])})
        rows.append({**common, "step_idx": len(steps), "api_name": "Finish", "arguments_json": finish_args,
                     "parse_ok": True, "observation": "", "is_finish": True, "finish_type": finish_type,
                     "final_answer": final_answer or None, "env_status": "finish", "succ_calling": None,
                     "contribution": None, "progress": None, "is_solved": status_of(score), "is_solved_score": score,
                     "sc_rule": None, "sc_reason": "finish", "vote_details": json.dumps(
                         [answer_status(s) for _, s in sorted(statuses.items())])})
    return trajs, rows
