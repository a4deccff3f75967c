"""The `replay` environment: real StableToolBench tool responses, offline.

Every call recorded in a `pass_rate_results/<method>/<subset>.json` tree (the `answer_steps` of real agents
on the 765 solvable queries, answered by the real StableToolBench server) becomes one entry of a response
table, keyed by the function name and the canonical (key-sorted, compact) JSON of the arguments, and
optionally by the query id. An agent's call is answered with the recorded envelope when the same
function was called with the same arguments; a miss answers with a clear error envelope (the agent sees
it as a failed call, never a crash) and is counted, so a run says how much of it was real.

Keys ignore argument order and whitespace (StableToolBench's cache does not; here a hit is worth more
than a strict key). Recorded responses were cut at 1024 characters by the server that produced them,
so replayed ones are never longer than that.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from pipeline import untrusted
from pipeline.annotate.succ_calling import read_envelope
from pipeline.errors import SchemaError
from pipeline.formats.stabletoolbench import load_json, load_json_records, parse_answer_steps
from pipeline.schema import REPLAY_RESPONSES
from pipeline.toolworld.naming import function_name
from pipeline.toolworld.world import canonical_json

log = logging.getLogger("steptool.replay")
MISS_ERROR = "Replay miss: no recorded response of {name} for these arguments (offline replay environment)"


def args_key(arguments: str) -> str:
    """Canonical JSON of the arguments, or the stripped text when it is not JSON."""
    try:
        return canonical_json(untrusted.loads(arguments)) if arguments.strip() else "{}"
    except (json.JSONDecodeError, TypeError):
        return arguments.strip()


CACHE_METHOD = "tool_response_cache"  # the `method` of rows read from StableToolBench's own cache


def is_tool_response_cache(folder: Path) -> bool:
    """StableToolBench's server cache, `<category>/<tool>_for_<category>/<api>.json`, rather than a
    pass_rate_results tree (`<method>/<subset>.json`)."""
    return not any(folder.glob("*/*.json")) and any(folder.glob("*/*/*.json"))


def cache_rows(cache_dir: str | Path) -> tuple[list[dict], dict]:
    """Rows of REPLAY_RESPONSES from StableToolBench's `tool_response_cache` layout: each
    `<category>/<tool>_for_<category>/<api>.json` maps str() of a call's input (a Python literal, read with
    ast.literal_eval, never eval) to the answer its server gave (a real one, or one it simulated and saved). The
    function is `<api>_for_<tool>`; an input that is not a literal keeps its text."""
    import ast

    root = Path(cache_dir)
    rows: list[dict] = []
    stats: Counter = Counter()
    files = sorted(root.glob("*/*/*.json"))
    for f in files:
        category, tool_dir, api = f.parent.parent.name, f.parent.name, f.stem
        suffix = f"_for_{category}"  # its server names the folder standardize(tool) + "_for_" + the category
        tool = tool_dir[: -len(suffix)] if tool_dir.lower().endswith(suffix.lower()) else tool_dir
        for key, answer in load_json(f, dict, "an object keyed by the call's input").items():
            try:
                value = ast.literal_eval(key) if key.strip() else {}
                args = canonical_json(value) if isinstance(value, (dict, list)) else key.strip()
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                stats["inputs_not_literal"] += 1
                args = key.strip()
            rows.append({"method": CACHE_METHOD, "subset": category, "query_id": "",
                         "function_name": function_name(tool, api), "args_key": args,
                         "response": answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)})
    stats["calls"] = len(rows)
    return rows, {**stats, "files": len(files)}


def response_rows(pass_rate_dir: str | Path) -> tuple[list[dict], dict]:
    """Rows of REPLAY_RESPONSES from every `<method>/<subset>.json` under `pass_rate_dir` (or from StableToolBench's
    `tool_response_cache` layout, `cache_rows`), and counts of what was read and skipped (Finish steps,
    unreadable steps with their file and query)."""
    root = Path(pass_rate_dir)
    if is_tool_response_cache(root):
        return cache_rows(root)
    files = sorted(root.glob("*/*.json"))
    if not files:
        raise SchemaError(f"{root}: no <method>/<subset>.json files (expected a pass_rate_results folder) nor "
                          "<category>/<tool>/<api>.json (StableToolBench's tool_response_cache)")
    rows: list[dict] = []
    stats: Counter = Counter()
    skipped: list[str] = []
    for f in files:
        for qid, rec in load_json_records(f).items():
            try:
                steps = parse_answer_steps(rec.get("answer_steps") or "", f"{f}: query {qid}")
            except SchemaError as e:
                stats["unreadable_trajectories"] += 1
                skipped.append(str(e)[:200])
                continue
            for s in steps:
                if s.name == "Finish":
                    stats["finish_steps"] += 1
                    continue
                rows.append({"method": f.parent.name, "subset": f.stem, "query_id": str(qid), "function_name": s.name,
                             "args_key": args_key(s.arguments), "response": s.response})
    stats["calls"] = len(rows)
    return rows, {**stats, "files": len(files), "skipped_examples": skipped[:5]}


def build_table(pass_rate_dir: str | Path) -> tuple[pa.Table, dict]:
    rows, stats = response_rows(pass_rate_dir)
    return pa.Table.from_pylist(rows, schema=REPLAY_RESPONSES), stats


@dataclass
class ReplayCache:
    """(function, args) -> recorded envelope text; the first recording wins (methods in name order)."""

    by_call: dict[tuple[str, str], str] = field(default_factory=dict)
    by_query: dict[tuple[str, str, str], str] = field(default_factory=dict)
    methods: list[str] = field(default_factory=list)
    _examples: dict | None = field(default=None, repr=False)

    @classmethod
    def from_rows(cls, rows: list[dict], exclude_method: str | None = None) -> "ReplayCache":
        cache = cls()
        for r in rows:
            if r["method"] == exclude_method:
                continue
            cache.by_call.setdefault((r["function_name"], r["args_key"]), r["response"])
            cache.by_query.setdefault((r["query_id"], r["function_name"], r["args_key"]), r["response"])
            if r["method"] not in cache.methods:
                cache.methods.append(r["method"])
        return cache

    @classmethod
    def load(cls, path: str | Path) -> "ReplayCache":
        """From a Parquet table (`steptool build-replay`) or straight from a pass_rate_results folder."""
        path = Path(path)
        if path.is_dir():
            return cls.from_rows(response_rows(path)[0])
        from pipeline.schema import read_table

        return cls.from_rows(read_table(path, REPLAY_RESPONSES).to_pylist())

    def lookup(self, name: str, arguments: str, query_id: str | None = None) -> str | None:
        key = args_key(arguments)
        if query_id is not None:
            return self.by_query.get((str(query_id), name, key))
        return self.by_call.get((name, key))

    @staticmethod
    def miss(name: str) -> dict:
        return {"error": MISS_ERROR.format(name=name), "response": ""}

    def recorded(self, name: str, arguments: str, query_id: str | None = None) -> dict | str:
        """The recorded envelope text of a call (what the real agent read), or the miss envelope."""
        text = self.lookup(name, arguments, query_id)
        return text if text is not None else self.miss(name)

    def examples(self, name: str) -> list[tuple[str, dict]]:
        """The recorded calls of function `name` as StableToolBench's cache holds them, for the simulator: (str() of
        the parsed input, the {error, response} answer), in the table's order (methods in name order). The input's
        keys are in canonical (sorted) order: the table keeps no other."""
        if self._examples is None:
            self._examples = {}
            for (fn, key), text in self.by_call.items():
                try:
                    shown = str(untrusted.loads(key))
                except (json.JSONDecodeError, TypeError, RecursionError):
                    shown = key
                error, response, is_envelope = read_envelope(text)
                self._examples.setdefault(fn, []).append(
                    (shown, {"error": error, "response": response if is_envelope else text}))
        return self._examples.get(name, [])

    def __len__(self) -> int:
        return len(self.by_call)

    # The backend interface of `steptool serve-tools` (as ToolWorld offers it).
    apis = property(lambda self: {name for name, _ in self.by_call})

    def fingerprint(self) -> str:
        import hashlib

        return hashlib.sha256(json.dumps(sorted(self.by_call)).encode()).hexdigest()[:12]

    def call(self, category: str, tool_name: str, api_name: str, tool_input, episode: str = "",
             attempt: int = 0) -> dict:
        args = tool_input if isinstance(tool_input, str) else json.dumps(tool_input)
        recorded = self.recorded(function_name(tool_name, api_name), args)
        if isinstance(recorded, dict):
            return recorded
        error, response, is_envelope = read_envelope(recorded)
        # HTTP answers are JSON objects: a recording cut short is sent as its readable parts
        return {"error": error, "response": response if is_envelope else recorded}


def leave_one_method_out(rows: list[dict], per_query: bool = False) -> dict[str, dict]:
    """For every method, the share of its calls that a cache built from the other methods answers."""
    out = {}
    for m in sorted({r["method"] for r in rows}):
        cache = ReplayCache.from_rows(rows, exclude_method=m)
        mine = [r for r in rows if r["method"] == m]
        hits = sum((cache.by_query.get((r["query_id"], r["function_name"], r["args_key"])) if per_query
                    else cache.by_call.get((r["function_name"], r["args_key"]))) is not None for r in mine)
        out[m] = {"calls": len(mine), "hits": hits, "hit_rate": round(hits / len(mine), 4) if mine else None}
    return out
