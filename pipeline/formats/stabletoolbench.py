"""Readers for StableToolBench / StepTool reference files (see ../shared/external/README.md).

`answer_steps` are written by the reference code as one line per step, ``Step k: {python literal}``,
where the literal is a dict with `name`, `arguments` (JSON text) and `response` (JSON text of the
tool server's envelope ``{"error": ..., "response": ...}``). The lines are Python literals, so they go
through `ast.literal_eval`, never `eval`. A line that cannot be read is reported with its file, record
and step, never guessed at.
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline import untrusted
from pipeline.errors import SchemaError
from pipeline.registry import STRATEGIES

_STEP = re.compile(r"^\s*(?:Step \d+|Final step):\s*(\{.*\})\s*$", re.S)
STATUS_VALUE = {"Solved": 1.0, "Unsure": 0.5, "Unsolved": 0.0}


@dataclass(frozen=True)
class RefStep:
    name: str
    arguments: str  # JSON text as the agent wrote it
    response: str  # the tool server's envelope, JSON text ("" when absent)


def parse_step_line(line: str, where: str = "") -> RefStep:
    """One ``Step k: {...}`` or ``Final step: {...}`` line."""
    m = _STEP.match(line)
    if not m:
        raise SchemaError(f"{where}: not a 'Step k: {{...}}' line: {line[:80]!r}")
    try:
        d = ast.literal_eval(m.group(1))
    except (ValueError, SyntaxError) as e:
        raise SchemaError(f"{where}: step is not a Python literal ({e.__class__.__name__}): {line[:80]!r}") from None
    if not isinstance(d, dict) or "name" not in d:
        raise SchemaError(f"{where}: step has no 'name': {line[:80]!r}")
    args = d.get("arguments", "")
    return RefStep(str(d["name"]), args if isinstance(args, str) else json.dumps(args), str(d.get("response", "")))


def split_step_lines(answer_steps: str | list[str]) -> list[str]:
    """`answer_steps` is one string (pass_rate_results) or a list of strings (reward_annotation); a step's
    literal may span lines, so a new step starts only at a ``Step k:`` line."""
    if isinstance(answer_steps, list):
        return [s for s in answer_steps if s.strip()]
    lines: list[str] = []
    for line in answer_steps.split("\n"):
        if re.match(r"^Step \d+: \{", line) or not lines:
            lines.append(line)
        else:
            lines[-1] += "\n" + line
    return [s for s in lines if s.strip()]


def parse_answer_steps(answer_steps: str | list[str], where: str = "") -> list[RefStep]:
    return [parse_step_line(s, f"{where} step {i + 1}") for i, s in enumerate(split_step_lines(answer_steps))]


def answer_status(value: str) -> str:
    """'AnswerStatus.Solved' -> 'Solved' (plain names pass through)."""
    s = str(value).split(".")[-1]
    if s not in STATUS_VALUE:
        raise SchemaError(f"unknown answer status {value!r} (Solved, Unsure or Unsolved)")
    return s


def load_json(path: str | Path, kind: type, what: str):
    """The JSON value of `path`, which must be a `kind`; SchemaError naming the file otherwise."""
    path = Path(path)
    try:
        data = untrusted.loads(path.read_text(encoding="utf-8"))  # any failure is a JSONDecodeError
    except UnicodeDecodeError as e:
        raise SchemaError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except (OSError, json.JSONDecodeError) as e:
        raise SchemaError(f"{path}: cannot read JSON: {e}") from None
    if not isinstance(data, kind):
        raise SchemaError(f"{path}: expected {what}, got {type(data).__name__}")
    return data


def load_json_records(path: str | Path) -> dict:
    return load_json(path, dict, "an object keyed by query id")


# --- solvable queries -------------------------------------------------------------------------------

def subset_level(subset: str) -> str:
    """'G1_instruction' -> 'I1' (the paper's groups)."""
    m = re.match(r"^G([123])_", subset)
    if not m:
        raise SchemaError(f"subset {subset!r}: expected a name like G1_instruction, G2_category or G3_instruction")
    return f"I{m.group(1)}"


def load_solvable_queries(path: str | Path, max_tasks: int = 0):
    """Tasks of one `solvable_queries/test_instruction/<subset>.json` file (no gold: judge with openai)."""
    from pipeline.task import Task

    path = Path(path)
    data = load_json(path, list, "a list of query records")
    level = subset_level(path.stem)
    tasks = []
    for i, rec in enumerate(data[:max_tasks or None]):
        for key in ("query_id", "query", "api_list"):
            if not isinstance(rec, dict) or key not in rec:
                raise SchemaError(f"{path}: record {i} lacks field '{key}'")
        for j, doc in enumerate(rec["api_list"]):
            missing = [k for k in ("category_name", "tool_name", "api_name") if k not in doc]
            if missing:
                raise SchemaError(f"{path}: record {i} (query {rec['query_id']}) api_list[{j}] lacks {missing}")
        tasks.append(Task(task_id=str(rec["query_id"]), split="test", level=level, query=rec["query"],
                          api_list=rec["api_list"], source=f"stabletoolbench:{path.stem}",
                          tools=sorted({d["tool_name"] for d in rec["api_list"]})))
    return tasks


SUBSETS = ("G1_instruction", "G1_category", "G1_tool", "G2_instruction", "G2_category", "G3_instruction")


def split_solvable_queries(folder: str | Path, subsets: list[str], sizes: dict[str, dict[str, int]],
                           seed: int) -> dict[str, list]:
    """`{split: tasks}` from the solvable queries of `subsets` under `folder` (a `solvable_queries/test_instruction`
    directory), `sizes[split][level]` queries each. A level's queries (its subsets' files, in the order given) are
    shuffled once with `seed`; test takes the first ones, then val, then train, so the splits share no query and
    a larger train split never changes the test split. Asking a level for more queries than its subsets hold is
    a SchemaError naming the level, the subsets and both numbers. Every task carries its split."""
    import dataclasses
    import random

    folder = Path(folder)
    if not folder.is_dir():
        raise SchemaError(f"{folder}: no such folder (tasks.stabletoolbench_path: StableToolBench's "
                          "solvable_queries/test_instruction)")
    pools: dict[str, list] = {}
    used: dict[str, list[str]] = {}
    for subset in subsets:
        f = folder / f"{subset}.json"
        if not f.exists():
            raise SchemaError(f"{f}: no such file (tasks.stabletoolbench_subsets names {subset!r})")
        level = subset_level(subset)
        pools.setdefault(level, []).extend(load_solvable_queries(f))
        used.setdefault(level, []).append(subset)
    out: dict[str, list] = {split: [] for split in sizes}
    order = [s for s in ("test", "val", "train") if s in sizes] + [s for s in sizes if s not in ("test", "val", "train")]
    for level in sorted({lv for per in sizes.values() for lv, n in per.items() if n}):
        pool = list(pools.get(level, []))
        wanted = {split: sizes[split].get(level, 0) for split in order}
        if sum(wanted.values()) > len(pool):
            asks = " + ".join(f"{n} {split}" for split, n in wanted.items() if n)
            have = f"{', '.join(used[level])} hold {len(pool)}" if level in used else "no subset of tasks.stabletoolbench_subsets is of this level"
            raise SchemaError(f"{folder}: {level} asks for {asks} = {sum(wanted.values())} StableToolBench queries; {have}")
        random.Random(f"stabletoolbench:{seed}:{level}").shuffle(pool)
        start = 0
        for split in order:
            out[split] += [dataclasses.replace(t, split=split) for t in pool[start:start + wanted[split]]]
            start += wanted[split]
    return out


# --- converted answers (what StableToolBench's evaluator reads) --------------------------------------

def _finish_arguments(finish_type: str, final_answer: str | None) -> str:
    if finish_type == "give_answer":
        return json.dumps({"return_type": "give_answer", "final_answer": final_answer or ""}, ensure_ascii=False)
    if finish_type == "give_up":
        return json.dumps({"return_type": "give_up_and_restart"})
    return ""


def converted_answer(task, trajectory: dict, steps: list[dict], method: str | None = None) -> dict:
    """One query's record in StableToolBench's converted-answer format: `query`, `available_tools` (the
    function specs the agent saw, Finish included) and `answer` with `method`, `total_steps`, `final_answer`
    (Finish's arguments as JSON text, "" without Finish) and `answer_details`, the chain
    system -> user -> one `tool` node per action ({name, arguments, response}) nested through `next`."""
    from pipeline.apidoc import function_specs

    return {"query": task.query,
            "available_tools": [{"type": "function", "function": f} for f in function_specs(task.api_list)],
            "answer": converted_answer_body(trajectory, steps, method)}


def converted_answer_body(trajectory: dict, steps: list[dict], method: str | None = None) -> dict:
    """The `answer` of a converted-answer record (what StableToolBench's evaluator reads and its
    parse_answer_status prompt shows as JSON): `method`, `total_steps`, `final_answer`, `answer_details`."""
    method = method or ("DFS_woFilter_w2" if STRATEGIES.has(trajectory.get("strategy"), "tree") else "CoT@1")
    nodes = [{"role": "system", "message": "", "next": []}, {"role": "user", "message": "", "next": []}]
    for s in sorted(steps, key=lambda s: s["step_idx"]):
        name = s.get("api_name") or "(unparsed action)"
        if s.get("is_finish"):
            node = {"name": "Finish", "arguments": s.get("arguments_json") or "", "response": ""}
        else:
            node = {"name": name, "arguments": s.get("arguments_json") or "", "response": s.get("observation") or ""}
        nodes.append({"role": "tool", "message": node, "next": []})
    for parent, child in zip(nodes, nodes[1:]):
        parent["next"].append(child)
    return {"method": method, "total_steps": len(nodes),
            "final_answer": _finish_arguments(trajectory.get("finish_type") or "none", trajectory.get("final_answer")),
            "answer_details": [nodes[0]]}


def converted_answers(tasks: dict, trajectories: list[dict], steps: list[dict]) -> dict:
    """`{query_id: record}` for every trajectory (the first sample of a task when there are several)."""
    by: dict[str, list[dict]] = {}
    for s in steps:
        by.setdefault(s["traj_id"], []).append(s)
    out: dict = {}
    for t in sorted(trajectories, key=lambda t: t.get("sample_idx") or 0):
        if t["task_id"] not in out:
            out[t["task_id"]] = converted_answer(tasks[t["task_id"]], t, by.get(t["traj_id"], []))
    return out


def read_converted_answers(path: str | Path) -> dict[str, dict]:
    """`{query_id: {query, method, final_answer, finish_type, steps: [{name, arguments, response}]}}` from a
    converted-answer file; the chain is followed through its first `next` at every node."""
    records = load_json_records(path)
    out = {}
    for qid, rec in records.items():
        try:
            ans = rec["answer"]
            node = ans["answer_details"][0]
        except (KeyError, IndexError, TypeError):
            raise SchemaError(f"{path}: query {qid}: needs answer.answer_details[0]") from None
        steps = []
        while node is not None:
            if node.get("role") == "tool":
                m = node.get("message")
                if not isinstance(m, dict) or "name" not in m:
                    raise SchemaError(f"{path}: query {qid}: a tool node's message needs a 'name'")
                steps.append({"name": m["name"], "arguments": m.get("arguments", ""), "response": m.get("response", "")})
            nxt = node.get("next") or []
            node = nxt[0] if nxt else None
        finish = {}
        if ans.get("final_answer"):
            try:
                finish = json.loads(ans["final_answer"], strict=False)
            except json.JSONDecodeError:
                finish = {}
        rtype = finish.get("return_type") if isinstance(finish, dict) else None
        out[str(qid)] = {"query": rec.get("query", ""), "method": ans.get("method", ""), "steps": steps,
                         "final_answer": finish.get("final_answer", "") if isinstance(finish, dict) else "",
                         "finish_type": {"give_answer": "give_answer", "give_up_and_restart": "give_up"}.get(rtype, "none")}
    return out
