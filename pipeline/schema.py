"""Arrow schemas of every artifact, with column descriptions stored in the Parquet file itself.

Writers go through `write_table` (validates, zstd, atomic rename); readers through `read_table`
(says which file lacks which column). Open any artifact with `polars.read_parquet(path)` or
`datasets.load_dataset("parquet", data_files=path)`; `describe(path)` prints what each column means.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import SchemaError
from pipeline.fsutil import atomic_path
from pipeline.task import SPLITS

LEVELS = ("I1", "I2", "I3")
FINITE = 1e12  # a range that only says "a finite number"


def _f(name: str, type_: pa.DataType, doc: str, nullable: bool = True, *, range: tuple | None = None,
       choices: tuple | None = None, added: str | None = None) -> pa.Field:
    """A column. `range` (lo, hi): every non-null value in [lo, hi] (floats also finite); `choices`: every
    non-null value one of them. Both are checked by `read_table` and `write_table` (`check_table`). `added`: the
    date a nullable column joined the schema; `read_table` reads a file written before it as all nulls there, so
    committed results (the study's pieces) stay readable, and `write_table` writes it null when left out."""
    meta = {"description": doc}
    if added is not None:
        if not nullable:
            raise ValueError(f"{name}: a column added later must be nullable (older files have none)")
        meta["added"] = added
    if range is not None:
        meta["range"] = json.dumps(list(range))
    if choices is not None:
        meta["choices"] = json.dumps(list(choices))
    return pa.field(name, type_, nullable=nullable, metadata=meta)


def _schema(doc: str, *fields: pa.Field, unique: tuple[str, ...] = (), steps_of: str = "",
            last_only: tuple[str, ...] = (), on_calls: tuple[str, ...] = ()) -> pa.Schema:
    """A table. `unique`: no two rows share these columns. `steps_of`: per value of this column (a trajectory),
    `step_idx` is 0..n−1; `last_only`: these columns are non-null on each trajectory's last step and null on
    every other (the outcome belongs to the final step: a missing Finish row would give it to a tool call);
    `on_calls`: these columns are non-null on every tool call (a step that is not a Finish: the rewards would
    read a call without labels as no call)."""
    meta = {"description": doc}
    if on_calls:
        meta["on_calls"] = json.dumps(list(on_calls))
    if unique:
        meta["unique"] = json.dumps(list(unique))
    if steps_of:
        meta["steps_of"] = steps_of
    if last_only:
        meta["last_only"] = json.dumps(list(last_only))
    return pa.schema(list(fields), metadata=meta)


GOLD_CALL = pa.struct([
    ("category", pa.string()), ("tool_name", pa.string()), ("api_name", pa.string()),
    ("function_name", pa.string()), ("arguments", pa.string()),
])

TASKS = _schema(
    "One row per task (data/tasks/<split>.parquet).",
    _f("task_id", pa.string(), "Unique id of the task.", False),
    _f("split", pa.string(), "train, val or test; no two share an entity.", False, choices=SPLITS),
    _f("level", pa.string(), "I1 (one tool), I2 (2-3 tools of one category), I3 (tools across categories).", False,
       choices=LEVELS),
    _f("query", pa.string(), "The user's request, in natural language.", False),
    _f("api_list", pa.string(), "JSON list of ToolBench api docs the agent may call (category_name, tool_name, "
                                "api_name, api_description, required_parameters, optional_parameters, method, "
                                "template_response).", False),
    _f("gold", pa.struct([("calls", pa.list_(GOLD_CALL)), ("facts", pa.list_(pa.string()))]),
       "The calls that solve the task and the facts its answer must state; null for imported benchmarks."),
    _f("source", pa.string(), "Where the task comes from: toolworld, stabletoolbench, ..."),
    _f("intent", pa.string(), "What the query asks, '+'-joined (attr, attr2, compare, list, sub, fx_convert, ...)."),
    _f("tools", pa.list_(pa.string()), "Tools the gold plan uses (the api_list may hold distractors too)."),
    unique=("task_id",),
)

TRAJECTORIES = _schema(
    "One row per trajectory (data/trajectories/s<seed>/trajectories.parquet).",
    _f("traj_id", pa.string(), "Stable hash of task, policy, strategy, sample index and seed.", False),
    _f("task_id", pa.string(), "The task this trajectory attempts.", False),
    _f("policy", pa.string(), "Model that acted."),
    _f("strategy", pa.string(), "cot or dfsdt."),
    _f("sample_idx", pa.int32(), "Index of the sample for this task."),
    _f("seed", pa.int64(), "Sampling seed."),
    _f("n_steps", pa.int32(), "Number of actions, the Finish included."),
    _f("finish_type", pa.string(), "give_answer, give_up or none (never finished)."),
    _f("final_answer", pa.string(), "The answer given with Finish, if any."),
    _f("split", pa.string(), "Split of the task (train or test)."),
    _f("level", pa.string(), "Level of the task (I1, I2, I3)."),
    _f("actions_generated", pa.int32(), "Actions sampled, dead ends of a DFSDT search included."),
    _f("tree_json", pa.string(), "DFSDT: JSON list of every node explored (node, parent, depth, action, "
                                 "observation, status); null for cot."),
    unique=("traj_id",),
)

STEPS = _schema(
    "One row per step, i.e. one action and what the environment answered (data/trajectories/s<seed>/steps.parquet).",
    _f("traj_id", pa.string(), "Trajectory id.", False),
    _f("task_id", pa.string(), "Task id.", False),
    _f("step_idx", pa.int32(), "0-based; the Finish step is the last.", False),
    _f("prompt_text", pa.string(), "Everything the model saw before this action."),
    _f("action_text", pa.string(), "The text the model generated for this action."),
    _f("thought", pa.string(), "The Thought part of the action."),
    _f("api_name", pa.string(), "Function called (StableToolBench function name) or Finish."),
    _f("arguments_json", pa.string(), "Arguments as the model wrote them."),
    _f("parse_ok", pa.bool_(), "Whether the action parsed into a function call."),
    _f("observation", pa.string(), "The environment's answer, as the model read it (truncated)."),
    _f("is_finish", pa.bool_(), "This step called Finish."),
    _f("finish_type", pa.string(), "give_answer, give_up or none."),
    _f("final_answer", pa.string(), "Answer given with Finish."),
    _f("prompt_tokens", pa.int32(), "Tokens of prompt_text."),
    _f("action_tokens", pa.int32(), "Tokens of action_text."),
    _f("behaviour_logprob", pa.float64(), "Sum of the sampling policy's log-probs over the action's tokens."),
    _f("parse_error", pa.string(), "Why the action did not parse ('' when it did)."),
    _f("env_status", pa.string(), "ok, no_such_function, finish, give_up, finish_error, env_error (the "
                                  "environment failed: the observation names the exception), replay_miss (the replay "
                                  "had no recording: an error observation) or simulated (env.on_miss simulate)."),
    unique=("traj_id", "step_idx"), steps_of="traj_id",
)

TOKENS = _schema(
    "Per-token side file of the actions (data/trajectories/s<seed>/tokens.parquet): exactly what was sampled.",
    _f("traj_id", pa.string(), "Trajectory id.", False),
    _f("step_idx", pa.int32(), "0-based step index.", False),
    _f("action_ids", pa.list_(pa.int32()), "Token ids the policy generated (end-of-turn token included if generated)."),
    _f("logprobs", pa.list_(pa.float32()), "Behaviour log-prob of each id: log_softmax(logits) at temperature 1, unmasked (every backend)."),
    _f("ended", pa.bool_(), "The action ended with the end-of-turn token (else max_new_tokens cut it)."),
    unique=("traj_id", "step_idx"),
)

# who answered a tool call, by its step's env_status (env.kind replay): a recording, the simulator, or nobody (a miss)
ANSWER_SOURCES = {"ok": "recorded", "simulated": "simulated", "replay_miss": "miss_error"}


def answer_counts(env_statuses) -> dict[str, int]:
    """{recorded, simulated, miss_error}: the tool calls (non-Finish env_statuses) each source answered."""
    counts = dict.fromkeys(ANSWER_SOURCES.values(), 0)
    for s in env_statuses:
        if s in ANSWER_SOURCES:
            counts[ANSWER_SOURCES[s]] += 1
    return counts


ANNOTATED_STEPS = _schema(
    "Steps with their step-grained rewards (data/annotated/s<seed>/steps.parquet).",
    *STEPS,
    _f("succ_calling", pa.float64(), "SuccCalling in [0, 1]: the rule's 0/1, or the mean of the judge's votes; "
       "null on Finish steps.", range=(0, 1)),
    _f("contribution", pa.float64(), "Contribution to the final answer, 0..5 (mean over votes); null on Finish steps.",
       range=(0, 5)),
    _f("progress", pa.float64(), "Share of the task's needed facts known after this step (oracle annotator; null "
       "for annotators that cannot tell): the potential of rewards.shaping progress.", range=(0, 1)),
    _f("is_solved", pa.string(), "Last step only: Solved, Unsure or Unsolved (a trajectory cut at max_steps is "
       "Unsolved); null elsewhere.", choices=("Solved", "Unsure", "Unsolved")),
    _f("is_solved_score", pa.float64(), "Last step only: mean over votes of Solved = 1, Unsure = 0.5, Unsolved = 0.",
       range=(0, 1)),
    _f("sc_rule", pa.int8(), "SuccCalling by the rule (pipeline/annotate/succ_calling.py), whatever the annotator."),
    _f("sc_reason", pa.string(), "Why the rule says the call failed ('' when it succeeded, 'finish' on Finish)."),
    _f("annotator", pa.string(), "oracle, heuristic, openai or imported."),
    _f("judge_model", pa.string(), "Judge model, when an LLM annotated."),
    _f("prompt_version", pa.string(), "Version of the judge prompt (or of the annotator's rules)."),
    _f("votes", pa.int32(), "Number of judge votes averaged."),
    _f("vote_details", pa.string(), "JSON: every vote's raw values for this step (judge annotators)."),
    _f("cache_hits", pa.int32(), "Judge answers for this trajectory that came from the cache instead of a paid call."),
    unique=("traj_id", "step_idx"), steps_of="traj_id", last_only=("is_solved_score",),
    on_calls=("succ_calling", "contribution"),
)

ADVANTAGES = _schema(
    "Per step, the reward and return-to-go one training variant trains on (data/advantages/<variant>/s<seed>.parquet; "
    "pipeline/rewards.py, params `rewards`). The baseline and advantage need the round's policy: they are in the "
    "round table (data/rounds/<variant>/s<seed>/r<k>/round.parquet), with the same reward and return.",
    _f("traj_id", pa.string(), "Trajectory id.", False),
    _f("step_idx", pa.int32(), "0-based step index.", False),
    _f("reward", pa.float64(), "r_t of the variant (rewards.shaping, step_scale, call costs; IsSolved on the last "
                               "step).", range=(-FINITE, FINITE)),
    _f("return", pa.float64(), "Return-to-go G_t = Σ γ^(k−t) r_k (rewards.gamma; γ = 0 for a variant without credit "
                               "across steps).", range=(-FINITE, FINITE)),
    _f("variant", pa.string(), "The training variant (pipeline/variants.py)."),
    unique=("traj_id", "step_idx"), steps_of="traj_id",
)

ROUND_STEPS = _schema(
    "Per step, what one PPO round trained on (data/rounds/<variant>/s<seed>/r<k>/round.parquet): the trainer's baseline and advantage.",
    _f("traj_id", pa.string(), "Trajectory id.", False),
    _f("task_id", pa.string(), "The task (samples of one task share the rloo baseline).", False),
    _f("step_idx", pa.int32(), "0-based step index.", False),
    _f("reward", pa.float64(), "r_t as trained (before the KL penalty).", False),
    _f("return", pa.float64(), "Return-to-go of r (rewards.gamma per step): the advantages table's `return`.", False),
    _f("baseline", pa.float64(), "b(s_t) at the step's value state (train.baseline; token level: the step's first "
                                 "token's).", False),
    _f("advantage", pa.float64(), "The advantage the step's action tokens were trained with, after the round's "
                                  "scaling (token level: the mean over the step's tokens).", False),
    _f("variant", pa.string(), "The training variant.", False),
    _f("ratio", pa.float64(), "PPO's ratio π_θ/π_old, the mean over the step's action tokens, as the round's last "
                              "update epoch saw it (before that batch's optimizer step).", added="2026-12-02"),
    _f("clipped", pa.float64(), "Share of the step's action tokens whose ratio was outside 1 ± train.cliprange in "
                                "that update (the logged clipfrac, per step).", range=(0, 1), added="2026-12-02"),
    _f("logp_old", pa.float64(), "Σ log π_old over the step's action tokens: the likelihood of the action under the "
                                 "policy the ratio divides by (train.old_logprobs).", added="2026-12-04"),
    _f("logp_new", pa.float64(), "Σ log π over the same tokens under the policy after the round: logp_new − "
                                 "logp_old is how far the update moved the action's likelihood.", added="2026-12-04"),
)


EVAL_RESULTS = _schema(
    "One row per evaluated trajectory (data/eval/<model>-<strategy>/results.parquet).",
    _f("model", pa.string(), "Checkpoint name (data/models/<model>).", False),
    _f("strategy", pa.string(), "cot or dfsdt.", False),
    _f("task_id", pa.string(), "Test task.", False),
    _f("level", pa.string(), "I1, I2 or I3."),
    _f("seed", pa.int32(), "Training seed of the checkpoint (train.seeds; data/models/<model>/s<seed>); null for "
                           "base and sft, which have one checkpoint."),
    _f("sample_idx", pa.int32(), "Sample index (the sampling axis of mean +- std)."),
    _f("traj_id", pa.string(), "The trajectory in trajectories.parquet / steps.parquet."),
    _f("judge", pa.string(), "rule (ToolWorld gold facts) or openai."),
    _f("statuses", pa.list_(pa.string()), "One answer status per judging run: Solved, Unsure or Unsolved."),
    _f("reasons", pa.list_(pa.string()), "Why, per judging run, as the judge said it (the openai judge: the deciding "
                                         "call's function, status and message); null for a judge that gives none "
                                         "(rule: the gold facts stated are in facts_stated).", added="2026-12-02"),
    _f("pass_score", pa.float64(), "Mean over runs of Solved = 1, Unsure = 0.5, Unsolved = 0.", range=(0, 1)),
    _f("finish_type", pa.string(), "give_answer, give_up or none."),
    _f("final_answer", pa.string(), "The answer given with Finish."),
    _f("n_steps", pa.int32(), "Actions, the Finish included."),
    _f("n_calls", pa.int32(), "Tool calls (non-Finish actions)."),
    _f("n_calls_ok", pa.int32(), "Tool calls with SuccCalling = 1 (the rule of the annotate stage)."),
    _f("facts_stated", pa.int32(), "Gold facts the final answer states (null without gold)."),
    _f("n_facts", pa.int32(), "Gold facts of the task (null without gold)."),
    _f("actions_generated", pa.int32(), "Actions sampled, DFSDT dead ends included (the search's cost)."),
)


REPLAY_RESPONSES = _schema(
    "Recorded StableToolBench tool responses for the replay environment (steptool build-replay).",
    _f("method", pa.string(), "Agent whose trajectory recorded the call (pass_rate_results/<method>)."),
    _f("subset", pa.string(), "Test subset file (G1_instruction, ...)."),
    _f("query_id", pa.string(), "StableToolBench query id."),
    _f("function_name", pa.string(), "The function the agent called (<api>_for_<tool>).", False),
    _f("args_key", pa.string(), "Canonical JSON of the arguments (key-sorted, compact).", False),
    _f("response", pa.string(), "The server's {error, response} envelope as JSON text (cut at 1024 characters)."),
)


def added_later(schema: pa.Schema) -> set[str]:
    """The columns declared with `_f(..., added=...)`: null where a file or a caller does not have them."""
    return {n for n in schema.names if b"added" in (schema.field(n).metadata or {})}


def _with_nulls(table: pa.Table, schema: pa.Schema, names: set[str]) -> pa.Table:
    """`table` with each of `names` it lacks appended as a null column of the schema's type."""
    for name in [n for n in schema.names if n in names and n not in table.column_names]:
        table = table.append_column(schema.field(name), pa.nulls(table.num_rows, schema.field(name).type))
    return table


def write_table(data: pa.Table | Iterable[dict[str, Any]], path: str | os.PathLike, schema: pa.Schema) -> pa.Table:
    """Validate `data` against `schema` and write it as zstd Parquet, atomically. Returns the table. A column added
    to the schema later (`_f(..., added=...)`) may be left out: it is written null, as `read_table` reads a file
    from before it."""
    path = Path(path)
    later = added_later(schema)
    if isinstance(data, pa.Table):
        data = _with_nulls(data, schema, later)
        missing = [n for n in schema.names if n not in data.column_names]
        if missing:
            raise SchemaError(f"{path}: cannot write, column(s) {missing} missing")
        try:
            table = data.select(schema.names).cast(schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as e:
            raise SchemaError(f"{path}: cannot write, {e}") from None
    else:
        rows = list(data)
        for i, row in enumerate(rows):
            missing = [n for n in schema.names if n not in row and n not in later]
            if missing:
                raise SchemaError(f"{path}: record {i} lacks field(s) {missing}")
            for fld in schema:
                if not fld.nullable and row[fld.name] is None:
                    raise SchemaError(f"{path}: record {i} field '{fld.name}' must not be null")
        try:
            table = pa.Table.from_pylist(rows, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as e:
            raise SchemaError(f"{path}: {_locate(rows, schema)}{e}") from None
    check_table(table, schema, str(path))
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return table


def _locate(rows: list[dict], schema: pa.Schema) -> str:
    """Find the first record and field that Arrow rejects, for an error that names them."""
    for i, row in enumerate(rows):
        for fld in schema:
            try:
                pa.array([row.get(fld.name)], type=fld.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
                return f"record {i} field '{fld.name}' ({row.get(fld.name)!r:.80}) is not {fld.type}: "
    return ""


def read_table(path: str | os.PathLike, schema: pa.Schema) -> pa.Table:
    """Read a Parquet artifact and check it has every column of `schema` with a castable type."""
    path = Path(path)
    if not path.exists():
        raise SchemaError(f"{path}: no such file (run the stage that writes it: dvc repro)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise SchemaError(f"{path}: not a readable Parquet file ({e})") from None
    table = _with_nulls(table, schema, added_later(schema))  # a file written before those columns existed
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise SchemaError(f"{path}: column(s) {missing} missing (has {table.column_names})")
    try:
        table = table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as e:
        raise SchemaError(f"{path}: a column has the wrong type: {e}") from None
    check_table(table, schema, str(path))
    return table


def _shown(text: str | bytes) -> str:
    """Text from a file someone else wrote, safe to print: bytes decoded with U+FFFD for what is not UTF-8, and
    control characters (a terminal's escape codes among them) shown escaped (\\x1b) instead of acted on."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def describe(path: str | os.PathLike) -> str:
    """What each column of a Parquet artifact means, read from the file's own metadata."""
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise SchemaError(f"{path}: not a readable Parquet file ({e})") from None
    lines = [_shown((schema.metadata or {}).get(b"description", b""))]
    for fld in schema:
        doc = _shown((fld.metadata or {}).get(b"description", b""))
        lines.append(f"  {_shown(fld.name)} ({_shown(str(fld.type))}): {doc}")
    return "\n".join(lines)


def check_table(table: pa.Table, schema: pa.Schema, where: str) -> None:
    """The constraints of `schema` (see `_f`, `_schema`) on `table`; a SchemaError naming `where`, the record and
    the field of the first violation. An empty table passes (a stage decides whether empty is an error)."""
    for fld in schema:
        meta = {k.decode(): v.decode() for k, v in (fld.metadata or {}).items()}
        if "range" not in meta and "choices" not in meta:
            continue
        values = table.column(fld.name).to_pylist()
        lo, hi = json.loads(meta["range"]) if "range" in meta else (None, None)
        choices = json.loads(meta["choices"]) if "choices" in meta else None
        for i, v in enumerate(values):
            if v is None:
                continue
            if lo is not None and (isinstance(v, float) and not math.isfinite(v) or not lo <= v <= hi):
                raise SchemaError(f"{where}: record {i} field '{fld.name}' must be in [{lo:g}, {hi:g}], got {v!r}")
            if choices is not None and v not in choices:
                raise SchemaError(f"{where}: record {i} field '{fld.name}' must be one of {choices}, got {v!r:.80}")
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    if "unique" in meta:
        cols = json.loads(meta["unique"])
        seen: dict[tuple, int] = {}
        for i, key in enumerate(zip(*(table.column(c).to_pylist() for c in cols))):
            if key in seen:
                raise SchemaError(f"{where}: records {seen[key]} and {i} share {dict(zip(cols, key))} "
                                  f"(({', '.join(cols)}) must be unique)")
            seen[key] = i
    if meta.get("on_calls"):
        finish = [bool(f) or a == "Finish" for f, a in zip(table.column("is_finish").to_pylist(),
                                                           table.column("api_name").to_pylist())]
        for c in json.loads(meta["on_calls"]):
            for i, v in enumerate(table.column(c).to_pylist()):
                if v is None and not finish[i]:
                    t, k = table.column("traj_id")[i].as_py(), table.column("step_idx")[i].as_py()
                    raise SchemaError(f"{where}: record {i} (trajectory {t}, step {k}) field '{c}' is null on a tool "
                                      "call: every call needs its labels (re-annotate: a rerun of annotate relabels it)")
    if meta.get("steps_of"):
        by: dict[str, list[tuple[int, int]]] = {}
        for i, (t, k) in enumerate(zip(table.column(meta["steps_of"]).to_pylist(), table.column("step_idx").to_pylist())):
            by.setdefault(t, []).append((k, i))
        last_only = json.loads(meta.get("last_only", "[]"))
        cols = {c: table.column(c).to_pylist() for c in last_only}
        for t, rows in by.items():
            rows.sort()
            if [k for k, _ in rows] != list(range(len(rows))):
                raise SchemaError(f"{where}: {meta['steps_of']} {t!r} has steps {[k for k, _ in rows][:12]}, not "
                                  f"0..{len(rows) - 1}")
            for c in last_only:
                for k, i in rows:
                    if (cols[c][i] is None) == (k == len(rows) - 1):
                        what = "lacks" if k == len(rows) - 1 else "has"
                        raise SchemaError(f"{where}: record {i} ({meta['steps_of']} {t!r}, step {k} of {len(rows)}) "
                                          f"{what} '{c}': only the last step carries the outcome (a missing Finish "
                                          f"row or a duplicated step?)")
