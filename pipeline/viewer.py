"""The trajectory viewer: a static site under reports/viewer/ (the `view` stage, `steptool view`) that shows what
the agent did at every step, what the annotator said about it and what the trainer made of it
(docs/architecture.md, "Viewer").

It opens from disk (`index.html`) with no server and no network: the page, its script and style are copied from
`pipeline/viewer_assets/`, and the run's data is written as JavaScript files that assign JSON to a global
(`js/index.js`, then `js/chunk-NNNNN.js` of `CHUNK` trajectories each, loaded when a trajectory of the chunk
is opened), because a page opened from `file://` may load scripts but not fetch JSON. Every text a model, a tool or
a judge wrote reaches the page through `textContent`, never as markup (viewer.js), so it shows as characters.

What it reads (whatever exists; a missing artifact leaves its part out): the tasks (query, level, gold facts),
every collection seed's trajectories with their annotated steps (each vote), every variant's round tables
(reward, return-to-go, baseline, advantage per step, per round) or, before training, its advantages table, later
rounds' annotated steps, every evaluation's trajectories with the judge's statuses, and the reward audit in the
advantages stage's metrics.
"""
from __future__ import annotations

import json
import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import polars as pl

from pipeline import layout
from pipeline.annotate.succ_calling import succ_calling
from pipeline.config import Params
from pipeline.errors import SteptoolError
from pipeline.fsutil import atomic_path
from pipeline.replay import args_key
from pipeline.schema import (ADVANTAGES, ANNOTATED_STEPS, EVAL_RESULTS, ROUND_STEPS, STEPS, TASKS, TRAJECTORIES,
                             read_table)
from pipeline.task import SPLITS

ASSETS = Path(__file__).with_name("viewer_assets")
ASSET_FILES = ("index.html", "viewer.js", "viewer.css")
MARKER = ".steptool-viewer"  # in every folder this writes: only such a folder is ever replaced
CHUNK = 100  # trajectories per data file: a paper-scale run loads one small file per opened trajectory
COLUMNS = ("id", "kind", "task", "level", "split", "model", "seed", "round", "strategy", "status", "finish",
           "steps", "failed", "return", "chunk")
STEP_KINDS = ("new information", "no new information", "repeat", "failed call", "Finish")
FINISH = {"give_answer": "answer", "give_up": "give-up", "none": "cut"}


def _read(path: Path, schema) -> pl.DataFrame | None:
    """The artifact at `path` checked against its schema (a bad one is refused naming the file and the field), or
    None when the run has not made it."""
    return pl.from_arrow(read_table(path, schema)) if path.is_file() else None


def _pretty(arguments: str | None) -> str:
    text = arguments or ""
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        return text


def _votes(details: str | None):
    if not details:
        return None
    try:
        return json.loads(details)
    except (ValueError, RecursionError):
        return details  # shown as text


def step_kinds(steps: list[dict]) -> list[str]:
    """One of STEP_KINDS per step of one trajectory (steps in order): Finish; a call the rule says failed; a call
    repeating an earlier one (same function and arguments); a call that made a needed fact known (the
    annotator's progress rose, or, without progress, Contribution > 0); any other call. A step nobody annotated
    (an evaluation's) is a `call` when it is none of Finish, failed or repeat."""
    seen: set[tuple[str, str]] = set()
    kinds, known = [], 0.0
    for s in steps:
        key = (s.get("api_name") or "", args_key(s.get("arguments_json") or ""))  # the replay's canonical form
        if s.get("is_finish"):
            kind = "Finish"
        elif s.get("sc_rule") == 0 or not s.get("parse_ok", True):
            kind = "failed call"
        elif key in seen:
            kind = "repeat"
        elif s.get("progress") is not None:
            kind = "new information" if s["progress"] > known + 1e-9 else "no new information"
        elif s.get("contribution") is not None:
            kind = "new information" if s["contribution"] > 0 else "no new information"
        else:
            kind = "call"
        if s.get("progress") is not None:
            known = max(known, s["progress"])
        seen.add(key)
        kinds.append(kind)
    return kinds


def _status(statuses: list[str] | None) -> str:
    """The most frequent status of a trajectory's judging runs (ties: the lower one)."""
    if not statuses:
        return "—"
    order = {"Unsolved": 0, "Unsure": 1, "Solved": 2}
    counts = Counter(statuses)
    return max(counts, key=lambda s: (counts[s], -order.get(s, 0)))


class _Site:
    """The trajectories, their details and the run-wide figures, gathered before anything is written."""

    def __init__(self, params: Params, root: Path):
        self.params, self.root = params, root
        self.tasks: dict[str, dict] = {}
        for split in SPLITS:
            table = _read(root / layout.tasks_file(split), TASKS)
            if table is None:
                continue
            for r in table.select("task_id", "split", "level", "query", "gold").iter_rows(named=True):
                facts = (r["gold"] or {}).get("facts") if r["gold"] else None
                self.tasks[r["task_id"]] = {"split": r["split"], "level": r["level"], "query": r["query"],
                                            "facts": facts}
        self.rows: list[dict] = []
        self.details: list[dict] = []
        self.kind_adv: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.audit: dict[str, dict] = {}

    # ---- collection: annotated steps with each variant's rewards ------------------------------------------
    def _variant_tables(self, seed: int) -> dict[int, dict[str, dict[tuple[str, int], list]]]:
        """round k -> variant -> (traj_id, step_idx) -> [reward, return, baseline, advantage, ratio, clip share]
        (baseline and advantage None before training: the advantages table has neither; ratio and clip share None
        before training and in round tables written before they were kept)."""
        out: dict[int, dict[str, dict]] = defaultdict(dict)
        for v in self.params.variants:
            rounds = sorted(self.root.glob(f"{layout.rounds_dir(v, seed).as_posix()}/r*/round.parquet"))
            for f in rounds:
                k = int(f.parent.name[1:])
                out[k][v] = {(r["traj_id"], r["step_idx"]): [r["reward"], r["return"], r["baseline"], r["advantage"],
                                                                  r["ratio"], r["clipped"]]
                             for r in _read(f, ROUND_STEPS).iter_rows(named=True)}
            if not rounds:
                table = _read(self.root / layout.advantages_file(v, seed), ADVANTAGES)
                if table is not None:
                    out[1][v] = {(r["traj_id"], r["step_idx"]): [r["reward"], r["return"], None, None, None, None]
                                 for r in table.iter_rows(named=True)}
        return out

    def add_collections(self) -> None:
        for seed in self.params.train.seeds:
            tables = self._variant_tables(seed)
            folder = layout.trajectories_dir(seed)
            trajs = _read(self.root / layout.table(folder, "trajectories"), TRAJECTORIES)
            steps = _read(self.root / layout.table(layout.annotated_dir(seed), "steps"), ANNOTATED_STEPS)
            if steps is None:
                steps = _read(self.root / layout.table(folder, "steps"), STEPS)
            if trajs is not None and steps is not None:
                self._add_collected(steps, {r["traj_id"]: r for r in trajs.iter_rows(named=True)}, seed, 1,
                                    tables.get(1, {}))
            for v in self.params.variants:  # rounds 2+: collected by the round's policy, annotated in its folder
                for f in sorted(self.root.glob(f"{layout.rounds_dir(v, seed).as_posix()}/r*/annotated/steps.parquet")):
                    k = int(f.parent.parent.name[1:])
                    self._add_collected(_read(f, ANNOTATED_STEPS), {}, seed, k, {v: tables.get(k, {}).get(v, {})}, v)

    def _add_collected(self, steps: pl.DataFrame, trajs: dict[str, dict], seed: int, k: int,
                       tables: dict[str, dict], policy: str | None = None) -> None:
        by_traj = defaultdict(list)
        for s in steps.sort("traj_id", "step_idx").iter_rows(named=True):
            by_traj[s["traj_id"]].append(s)
        variants = [v for v in self.params.variants if v in tables]
        for tid, ss in by_traj.items():
            t = trajs.get(tid, {})
            task = self.tasks.get(ss[0]["task_id"], {})
            last = ss[-1]
            kinds = step_kinds(ss)
            shown = []
            for s, kind in zip(ss, kinds):
                values = {v: tables[v].get((tid, s["step_idx"])) for v in variants}
                for v, val in values.items():
                    if val is not None and val[3] is not None:
                        self.kind_adv[v][kind].append(val[3])
                shown.append(self._step(s, kind, values))
            first = next((tables[v].get((tid, 0)) for v in variants if tables[v].get((tid, 0))), None)
            finish = last.get("finish_type") or t.get("finish_type") or "none"
            self._add({"id": tid, "kind": "collect", "task": ss[0]["task_id"], "level": task.get("level") or t.get("level"),
                       "split": task.get("split") or t.get("split") or "train",
                       "model": policy or t.get("policy") or "sft", "seed": seed, "round": k,
                       "strategy": t.get("strategy") or self.params.collect.strategy,
                       "status": last.get("is_solved") or "—", "finish": FINISH.get(finish, finish),
                       "steps": len(ss), "failed": sum(1 for s in ss if not s["is_finish"] and s.get("sc_rule") == 0),
                       "return": None if first is None else round(first[1], 4)},
                      {"query": task.get("query"), "final_answer": last.get("final_answer") or t.get("final_answer"),
                       "finish_type": finish, "variants": variants, "steps": shown,
                       "gold_facts": task.get("facts"), "annotator": last.get("annotator"),
                       "judge_model": last.get("judge_model")})

    @staticmethod
    def _step(s: dict, kind: str, values: dict | None = None) -> dict:
        return {"i": s["step_idx"], "thought": s.get("thought"), "api": s.get("api_name"),
                "args": _pretty(s.get("arguments_json")), "obs": s.get("observation"), "env": s.get("env_status"),
                "parse_ok": s.get("parse_ok"), "parse_error": s.get("parse_error"), "kind": kind,
                "sc": s.get("succ_calling"), "sc_rule": s.get("sc_rule"), "sc_reason": s.get("sc_reason"),
                "con": s.get("contribution"), "progress": s.get("progress"), "is_solved": s.get("is_solved"),
                "is_solved_score": s.get("is_solved_score"), "votes": _votes(s.get("vote_details")),
                "v": values or {}}

    # ---- evaluation: the judge's verdicts ------------------------------------------------------------------
    def add_evaluations(self) -> None:
        e = self.params.evaluate
        for model in e.models:
            for strategy in e.strategies:
                folder = self.root / layout.eval_dir(model, strategy)
                results = _read(layout.table(folder, "results"), EVAL_RESULTS)
                if results is None:
                    continue
                played = [folder, *sorted(p for p in folder.glob("s*") if p.is_dir() and re.fullmatch(r"s\d+", p.name))]
                steps_by = defaultdict(list)
                trajs = {}
                for p in played:
                    t, s = _read(layout.table(p, "trajectories"), TRAJECTORIES), _read(layout.table(p, "steps"), STEPS)
                    if t is None or s is None:
                        continue
                    trajs.update({r["traj_id"]: r for r in t.iter_rows(named=True)})
                    for r in s.sort("traj_id", "step_idx").iter_rows(named=True):
                        if not r["is_finish"]:  # the rule the evaluation counts failed calls by
                            r["sc_rule"], r["sc_reason"] = succ_calling(r["api_name"] or "", r["parse_ok"],
                                                                        r["observation"], env_status=r["env_status"])
                        steps_by[r["traj_id"]].append(r)
                for r in results.iter_rows(named=True):
                    ss = steps_by.get(r["traj_id"], [])
                    task = self.tasks.get(r["task_id"], {})
                    kinds = step_kinds(ss)
                    finish = r["finish_type"] or "none"
                    self._add({"id": f"{model}-{strategy}-{r['traj_id']}", "kind": "eval", "task": r["task_id"],
                               "level": r["level"], "split": task.get("split") or e.split, "model": model,
                               "seed": r["seed"], "round": None, "strategy": strategy,
                               "status": _status(r["statuses"]), "finish": FINISH.get(finish, finish),
                               "steps": r["n_steps"], "failed": (r["n_calls"] or 0) - (r["n_calls_ok"] or 0),
                               "return": r["pass_score"]},
                              {"query": task.get("query"), "final_answer": r["final_answer"], "finish_type": finish,
                               "variants": [], "steps": [self._step(s, k) for s, k in zip(ss, kinds)],
                               "gold_facts": task.get("facts"),
                               "judge": {"judge": r["judge"], "statuses": r["statuses"], "reasons": r["reasons"],
                                         "pass_score": r["pass_score"],
                                         "facts_stated": r["facts_stated"], "n_facts": r["n_facts"]},
                               "traj_id": r["traj_id"]})

    def add_audit(self) -> None:
        for v in self.params.variants:
            for seed in self.params.train.seeds:
                f = self.root / layout.metrics_file("advantages", layout.run_name(v, seed))
                if f.is_file():
                    audit = json.loads(f.read_text(encoding="utf-8")).get("audit")
                    if audit and "skipped" not in audit:
                        self.audit[layout.run_name(v, seed)] = audit

    def _add(self, row: dict, detail: dict) -> None:
        row["chunk"] = len(self.rows) // CHUNK
        self.rows.append(row)
        self.details.append({**row, **detail})

    # ---- output ---------------------------------------------------------------------------------------------
    def index(self) -> dict:
        """The index as columns (one list per column), with the run-wide figures."""
        chart = {v: {k: [round(sum(a) / len(a), 4), len(a)] for k, a in kinds.items() if a}
                 for v, kinds in self.kind_adv.items()}
        return {"columns": list(COLUMNS), "values": [[r[c] for c in COLUMNS] for r in self.rows],
                "chunk_size": CHUNK, "variants": list(self.params.variants),
                "return_of": next((v for v in self.params.variants if v in {x for d in self.details
                                                                              for x in d.get("variants", [])}), None),
                "step_kinds": list(STEP_KINDS), "advantage_by_kind": chart, "audit": self.audit}


def _js(name: str, key: str | None, obj) -> str:
    """A script that assigns `obj` (as JSON, every non-ASCII character escaped) into the page's global."""
    body = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    target = "STEPTOOL.index" if key is None else f"STEPTOOL.chunks[{json.dumps(key)}]"
    return f"// {name}: written by `steptool view` (pipeline/viewer.py)\nwindow.STEPTOOL = window.STEPTOOL || {{chunks: {{}}}};\n{target} = {body};\n"


def read_data_file(path: Path):
    """What a data file of the site (`js/index.js`, `js/chunk-NNNNN.js`) assigns, as Python (tests, benchmark)."""
    m = re.search(r"= (\{.*\});\n$", path.read_text(encoding="ascii"), re.S)
    if not m:
        raise SteptoolError(f"{path}: not a data file of the viewer")
    return json.loads(m.group(1))


def _owned(dest: Path) -> None:
    """Refuse to replace a folder this command did not write (a user's files are never deleted)."""
    if dest.is_dir() and any(dest.iterdir()) and not (dest / MARKER).is_file():
        raise SteptoolError(f"{dest}: a folder the viewer did not write (no {MARKER} in it): refusing to replace it "
                            "(choose an empty or new folder)")


def _finite(obj):
    """NaN and inf as None (JSON has neither)."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def build_viewer(params: Params, root: Path, out: Path) -> dict:
    """Write the viewer of the run under `root` to `out` (replaced whole, atomically; only a folder this wrote
    before). Returns a summary: trajectories by kind, chunk files, bytes written."""
    _owned(out)
    site = _Site(params, root)
    site.add_collections()
    site.add_evaluations()
    site.add_audit()
    if not site.rows:
        raise SteptoolError(f"{root}: no trajectory to show (no {layout.TRAJECTORIES}/s<seed> nor {layout.EVAL}/"
                            "<model>-<strategy> with its results): run the stages first (dvc repro)")
    with atomic_path(out) as tmp:
        (tmp / "js").mkdir(parents=True)
        for name in ASSET_FILES:
            shutil.copyfile(ASSETS / name, tmp / name)
        (tmp / MARKER).write_text("written by `steptool view`; the whole folder is replaced by the next one\n")
        (tmp / "js" / "index.js").write_text(_js("index", None, _finite(site.index())), encoding="ascii")
        n_chunks = (len(site.details) + CHUNK - 1) // CHUNK
        for c in range(n_chunks):
            chunk = {d["id"]: d for d in site.details[c * CHUNK:(c + 1) * CHUNK]}
            (tmp / "js" / f"chunk-{c:05d}.js").write_text(_js(f"chunk {c}", str(c), _finite(chunk)),
                                                              encoding="ascii")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    kinds = Counter(r["kind"] for r in site.rows)
    return {"trajectories": len(site.rows), "collected": kinds.get("collect", 0), "evaluated": kinds.get("eval", 0),
            "chunks": n_chunks, "bytes": size}
