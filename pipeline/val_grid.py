"""Choosing the study's settings on the val split: a small grid of candidates (reward shaping, call cost, training
strength), each run through the real pipeline with `evaluate.split: val`, its report inputs kept, and one table
that picks the candidate by a rule fixed in the grid file before anything ran (docs/architecture.md, "The study").

The grid file (profiles/study-val.yaml) names a base profile, the keys every candidate shares (the val split, the
variant the choice is about, one training seed) and the candidates, each only the keys it changes. The candidates
run one after the other in ONE workspace (a fresh clone), so DVC's cache there reuses what they share (the warm
start, the collection, the annotation, sft's val evaluation) and each candidate pays only for its own training and
evaluation. A candidate whose folder under the output holds RUN.md is finished and skipped: the grid resumes where
a stopped session left it. The test split is never read.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


from pipeline import layout
from pipeline.config import parse_params, read_yaml, render_params
from pipeline.errors import ConfigError
from pipeline.fsutil import atomic_path
from pipeline.schema import EVAL_RESULTS, read_table
from pipeline.study import save_piece

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def deep_merge(base: dict, changes: dict) -> dict:
    """`base` with `changes` laid over it, section by section (a list or a value replaces, a dict merges)."""
    out = dict(base)
    for k, v in changes.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_grid(path: Path) -> dict:
    """The grid file, checked: {profile, common, candidates: {name: changes}, select: {model, strategy}}; each
    candidate's full profile (base profile + common + its changes) is returned under `profiles`."""
    raw = read_yaml(path, "grid")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a grid is a mapping (profile, common, candidates, select)")
    for key in ("profile", "candidates", "select"):
        if key not in raw:
            raise ConfigError(f"{path}: no '{key}' (a grid names a base profile, its candidates and what selects)")
    base_path = Path(raw["profile"])  # relative to the repository root, where the command runs
    if not base_path.exists():
        raise ConfigError(f"{path}: profile {base_path}: no such file (a path from the repository root)")
    base = read_yaml(base_path, "profile")
    common = raw.get("common") or {}
    split = (common.get("evaluate") or {}).get("split")
    if split != "val":
        raise ConfigError(f"{path}: common.evaluate.split is {split!r}: a grid chooses on val, never on test")
    select = raw["select"]
    if not isinstance(select, dict) or not {"model", "strategy"} <= set(select):
        raise ConfigError(f"{path}: select: expected {{model: ..., strategy: ...}}, got {select!r}")
    profiles = {}
    for name, changes in (raw["candidates"] or {}).items():
        if not _NAME.fullmatch(str(name)):
            raise ConfigError(f"{path}: candidate {name!r}: a name is a folder name (letters, digits, _ . + -)")
        if (changes or {}).get("evaluate", {}).get("split", "val") != "val":
            raise ConfigError(f"{path}: candidate {name}: evaluate.split must stay val")
        profiles[name] = deep_merge(deep_merge(base, common), changes or {})
    if not profiles:
        raise ConfigError(f"{path}: no candidates")
    return {**raw, "profiles": profiles}


def _run(cmd: list[str], cwd: Path, env: dict) -> None:
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def run_grid(grid_path: Path, workspace: Path, out: Path, dvc: str = "dvc",
             runner: Callable[[list[str], Path, dict], None] = _run, log: Callable[[str], None] = print) -> list[str]:
    """Run every unfinished candidate in `workspace` (a clone of the repository), keep each one's report inputs
    in `out`/<name>/ with RUN.md (the wall time of its `dvc repro`), and rewrite the selection table after each.
    Returns the candidates run now."""
    grid = load_grid(grid_path)
    env = {**os.environ, "PYTHONPATH": str(workspace.resolve())}
    ran = []
    for name, profile in grid["profiles"].items():
        dest = out / name
        if (dest / "RUN.md").exists():
            log(f"study-val: {name} already done ({dest}/RUN.md)")
            continue
        log(f"study-val: {name}: {json.dumps(grid['candidates'][name])}")
        # the complete params file DVC needs, validated here (a bad candidate stops before anything runs)
        params = parse_params(profile, f"{grid_path} candidate {name}")
        with atomic_path(workspace / "params.yaml") as tmp:
            tmp.write_text(render_params(params), encoding="utf-8")
        start = time.time()
        runner([dvc, "repro"], workspace, env)
        wall = time.time() - start
        save_piece(workspace, dest)
        commit = subprocess.run(["git", "-C", str(workspace), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or "unknown"
        (dest / "RUN.md").write_text(
            f"# How {dest} was made\n\n- commit {commit}, params: {grid_path} candidate {name} "
            f"({json.dumps(grid['candidates'][name])})\n- wall time {int(wall) // 60} min {int(wall) % 60} s "
            "(dvc repro; what earlier candidates computed came from DVC's cache)\n"
            f"- finished {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}\n", encoding="utf-8")
        ran.append(name)
        write_selection(grid_path, out)  # the table so far: a session may stop before the next candidate ends
    return ran


def _load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _rows(path: Path) -> list[dict]:
    return read_table(path, EVAL_RESULTS).to_pylist() if path.exists() else []


def candidate_row(folder: Path, model: str, strategy: str) -> dict:
    """One finished candidate's readouts from its saved report inputs: the selected model's val pass rate (CI over
    tasks) and its paired difference to the reference, calls per task and no-answer rate on val, the change of its
    greedy replay of the train tasks (pass rate with a paired CI over tasks, calls per task, no-answer rate), the
    KL to the reference per token, and the reward audit's padding and Finish shares."""
    from pipeline.evaluate.results import replay_behaviour
    from pipeline.stats import paired_difference, seed_scores

    params = read_yaml(folder / "params.yaml")
    seed = params["train"]["seeds"][0]
    rounds = params["train"].get("rounds", 1)
    ref = params["evaluate"]["reference_model"]
    m = _load_json(folder / layout.REPORT_METRICS).get(f"{model}-{strategy}")
    if m is None:
        raise ConfigError(f"{folder}: no {model}-{strategy} in {layout.REPORT_METRICS} (was it evaluated?)")
    before_p = folder / layout.replay_dir(layout.trajectories_dir(seed)) / "results.parquet"
    after_p = folder / layout.round_dir(model, seed, rounds) / "replay" / "results.parquet"
    before, after = replay_behaviour(before_p), replay_behaviour(after_p)
    replay_diff = None
    if before and after:
        replay_diff = paired_difference(seed_scores([{**r, "seed": None} for r in _rows(after_p)]),
                                        seed_scores([{**r, "seed": None} for r in _rows(before_p)]))
    round_m = _load_json(folder / layout.round_dir(model, seed, rounds) / "metrics.json")
    audit = _load_json(folder / layout.metrics_file("advantages", layout.run_name(model, seed))).get("audit") or {}
    ref_m = _load_json(folder / layout.REPORT_METRICS).get(f"{ref}-{strategy}") or {}
    return {"candidate": folder.name, "params": params, "pass": m["pass_rate_ci"]["average"],
            "ref_pass": (ref_m.get("pass_rate_ci") or {}).get("average"),
            "vs_ref": m.get(f"vs_{ref}"), "reference": ref, "calls_per_task": m.get("calls_per_task"),
            "no_finish_rate": m.get("no_finish_rate"), "replay_before": before, "replay_after": after,
            "replay_diff": replay_diff, "kl_ref_token": round_m.get("final_kl_ref_token"),
            "audit": audit, "wall": _wall((folder / "RUN.md").read_text(encoding="utf-8"))
            if (folder / "RUN.md").exists() else None}


def _wall(run_md: str) -> str | None:
    hit = re.search(r"wall time (\d+ min \d+ s)", run_md)
    return hit.group(1) if hit else None


def select(rows: list[dict]) -> dict:
    """The rule, fixed before the grid ran: the highest val average pass rate of the selected model; a tie goes to
    the candidate listed first (the grid lists the cheaper settings first)."""
    return max(rows, key=lambda r: (r["pass"]["mean"], -rows.index(r)))


def _ci(c: dict | None, digits: int = 1, sign: str = "") -> str:
    if not c or c.get("mean", c.get("diff")) is None:
        return "–"
    mid = c.get("mean", c.get("diff"))
    return f"{mid:{sign}.{digits}f} [{c['lo']:{sign}.{digits}f}, {c['hi']:{sign}.{digits}f}]"


def _ba(before: dict | None, after: dict | None, key: str, digits: int) -> str:
    b, a = (before or {}).get(key), (after or {}).get(key)
    return "–" if b is None or a is None else f"{b:.{digits}f} → {a:.{digits}f}"


def selection_markdown(grid_path: Path, rows: list[dict], chosen: dict | None, pending: list[str]) -> str:
    g = read_yaml(grid_path, "grid")
    model, strategy = g["select"]["model"], g["select"]["strategy"]
    lines = [f"# Val selection ({grid_path})", "",
             f"Each candidate: the base profile `{g['profile']}` with the grid's common keys and its own changes, "
             f"run through `dvc repro` with `evaluate.split: val` (pipeline/val_grid.py). Selected by the rule fixed "
             f"in the grid before anything ran: the highest val average pass rate of {model} ({strategy}); a tie goes "
             "to the candidate listed first. Pass rates in % with 95% bootstrap CIs over val tasks; the replay is "
             f"{model}'s greedy play of its own train tasks before → after training (Δ with a paired CI over those "
             "tasks); one training seed per candidate, so the spread between training runs is not in these "
             "intervals.", "",
             f"| candidate | changes | val {model} | Δ vs reference | calls / task | no answer | replay pass Δ | "
             "replay calls / task | replay no answer | KL to ref / token | audit: padded > direct, Finish preferred "
             "| wall |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a = r["audit"]
        audit = (f"{a['padded_beats_direct']:.0%}, {a['finish_preferred']:.0%}"
                 if "padded_beats_direct" in a and "finish_preferred" in a else "–")
        changes = "; ".join(f"{s}.{k}={v}" if isinstance(kv, dict) else f"{s}={kv}"
                            for s, kv in g["candidates"][r["candidate"]].items()
                            for k, v in (kv.items() if isinstance(kv, dict) else [(None, kv)]))
        mark = "**" if chosen is r else ""
        lines.append(
            f"| {mark}{r['candidate']}{mark} | {changes} | {_ci(r['pass'])} | {_ci(r['vs_ref'], sign='+')} | "
            f"{r['calls_per_task'] if r['calls_per_task'] is not None else '–'} | "
            f"{'–' if r['no_finish_rate'] is None else format(r['no_finish_rate'], '.0%')} | "
            f"{_ci(r['replay_diff'], sign='+')} | {_ba(r['replay_before'], r['replay_after'], 'calls_per_task', 2)} | "
            f"{_ba(r['replay_before'], r['replay_after'], 'no_finish_rate', 2)} | "
            f"{'–' if r['kl_ref_token'] is None else format(r['kl_ref_token'], '.4f')} | {audit} | "
            f"{r['wall'] or '–'} |")
    lines.append("")
    refs = {(r["reference"], _ci(r["ref_pass"])) for r in rows}
    if refs:
        lines.append("The reference on val: " + "; ".join(f"{name} {ci}" for name, ci in sorted(refs))
                     + " (the same checkpoint for every candidate: the warm start does not depend on them).")
        lines.append("")
    if pending:
        lines.append(f"Not run yet: {', '.join(pending)}. No candidate is chosen until every one has run.")
    elif chosen is not None:
        lines.append(f"**Chosen: {chosen['candidate']}** (val {model} {_ci(chosen['pass'])}). Its changes go into "
                     "the study profile and the CPU default; the test split is read only by the study itself.")
    return "\n".join(lines) + "\n"


def write_selection(grid_path: Path, out: Path) -> dict | None:
    """out/selection.md and selection.json over the finished candidates; the chosen one only when all have run."""
    g = load_grid(grid_path)
    model, strategy = g["select"]["model"], g["select"]["strategy"]
    done = [n for n in g["profiles"] if (out / n / "RUN.md").exists()]
    pending = [n for n in g["profiles"] if n not in done]
    rows = [candidate_row(out / n, model, strategy) for n in done]
    chosen = select(rows) if rows and not pending else None
    with atomic_path(out / "selection.md") as tmp:
        tmp.write_text(selection_markdown(grid_path, rows, chosen, pending), encoding="utf-8")
    summary = {"chosen": chosen["candidate"] if chosen else None, "pending": pending,
               "candidates": {r["candidate"]: {k: r[k] for k in ("pass", "vs_ref", "calls_per_task", "no_finish_rate",
                                                                 "replay_diff", "kl_ref_token", "wall")}
                              for r in rows}}
    with atomic_path(out / "selection.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return chosen
