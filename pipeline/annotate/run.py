"""Annotate trajectories: group steps by trajectory, label them with the chosen annotator, and join the
labels back onto the step rows (schema ANNOTATED_STEPS). Trajectories the judge could not label are
returned apart with their reason; their steps are not written, and a rerun tries them again."""
from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from pathlib import Path

from pipeline import layout
from pipeline.annotate.base import TrajLabel
from pipeline.annotate.succ_calling import succ_calling
from pipeline.config import AnnotateConfig
from pipeline.errors import SchemaError, SteptoolError
from pipeline.fsutil import write_json
from pipeline.registry import ANNOTATORS, ENVIRONMENTS
from pipeline.schema import ANNOTATED_STEPS, STEPS, TRAJECTORIES, answer_counts, read_table, write_table
from pipeline.task import SPLITS, Task
from pipeline.task_files import load_tasks

log = logging.getLogger("steptool.annotate")


def group_steps(steps: list[dict]) -> dict[str, list[dict]]:
    by: dict[str, list[dict]] = defaultdict(list)
    for st in steps:
        by[st["traj_id"]].append(st)
    for v in by.values():
        v.sort(key=lambda s: s["step_idx"])
    return by


def label_trajectories(trajs: list[dict], steps: list[dict], tasks: dict[str, Task], cfg: AnnotateConfig,
                       cache_path: str | None = None, progress: bool = True) -> tuple[list[TrajLabel], dict]:
    """One TrajLabel per trajectory (failed ones carry `failed`), and the run's statistics."""
    by = group_steps(steps)
    t0 = time.perf_counter()
    missing = [t for t in trajs if t["task_id"] not in tasks]
    if missing:
        raise SchemaError(f"{len(missing)} trajectories play tasks that are not in the task files (first: trajectory "
                          f"{missing[0]['traj_id']}, task {missing[0]['task_id']!r})")
    labels, extra = ANNOTATORS.implementation(cfg.annotator)(trajs, by, tasks, cfg, cache_path, progress)
    stats: dict = {"annotator": cfg.annotator, **extra}
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    return labels, stats


def annotated_rows(steps_by_traj: dict[str, list[dict]], labels: list[TrajLabel]) -> list[dict]:
    """Step rows with their labels (labelled trajectories only)."""
    rows = []
    for lab in labels:
        if lab.failed:
            continue
        steps = steps_by_traj[lab.traj_id]
        if len(lab.steps) != len(steps):
            raise ValueError(f"trajectory {lab.traj_id}: {len(lab.steps)} labels for {len(steps)} steps")
        for i, (st, sl) in enumerate(zip(steps, lab.steps)):
            sc_rule, reason = succ_calling(st["api_name"] or "", bool(st["parse_ok"]), st["observation"],
                                           is_finish=bool(st["is_finish"]), env_status=st.get("env_status"))
            last = i == len(steps) - 1
            rows.append({**st, "succ_calling": sl.succ_calling, "contribution": sl.contribution,
                         "progress": sl.progress,
                         "is_solved": lab.is_solved if last else None,
                         "is_solved_score": lab.is_solved_score if last else None,
                         "sc_rule": sc_rule, "sc_reason": reason, "annotator": lab.annotator,
                         "judge_model": lab.judge_model or None, "prompt_version": lab.prompt_version,
                         "votes": lab.votes, "vote_details": json.dumps(sl.votes) if sl.votes is not None else None,
                         "cache_hits": lab.cache_hits})
    return rows


def by_length(labels: list[TrajLabel], steps_by_traj: dict[str, list[dict]]) -> dict[str, int]:
    """How many of `labels` have each number of steps ({"3": 5, ...}): the selection a failure makes, by length."""
    out: dict[str, int] = {}
    for lab in labels:
        n = str(len(steps_by_traj.get(lab.traj_id, [])))
        out[n] = out.get(n, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def failure_records(labels: list[TrajLabel], steps_by_traj: dict[str, list[dict]]) -> list[dict]:
    """failed.json: every trajectory with a failed vote, labelled from the others or not labelled at all."""
    return [{"traj_id": lab.traj_id, "steps": len(steps_by_traj.get(lab.traj_id, [])), "labelled": not lab.failed,
             "votes": 0 if lab.failed else lab.votes, "reason": lab.failed or lab.vote_failures}
            for lab in labels if lab.failed or lab.vote_failures]


def reason_kind(reason: str) -> str:
    """The kind of a failure reason, for counting: 'vote 1: APIConnectionError: ...' -> 'APIConnectionError';
    'vote 0: invalid answers after 3 tries: ...' -> 'invalid answers after 3 tries'."""
    first = reason.split("; ")[0]
    if first.startswith("vote ") and ": " in first:
        first = first.split(": ", 1)[1]
    return first.split(": ", 1)[0][:80] or "unknown"


def summarize(labels: list[TrajLabel], rows: list[dict], stats: dict,
              steps_by_traj: dict[str, list[dict]] | None = None) -> dict:
    calls = [r for r in rows if r["succ_calling"] is not None]
    solved = [lab for lab in labels if not lab.failed]
    agree = [r for r in calls if r["sc_rule"] is not None]
    by = steps_by_traj or {}
    out = {
        **stats,
        "trajectories": len(labels), "annotated": len(solved), "failed": len(labels) - len(solved),
        "partial_votes": sum(bool(lab.vote_failures) for lab in solved),
        # a failure that hits long trajectories more often biases training towards short ones: compare the two
        "annotated_by_steps": by_length(solved, by), "failed_by_steps": by_length([x for x in labels if x.failed], by),
        "steps": len(rows), "calls": len(calls),
        "succ_calling_mean": round(sum(r["succ_calling"] for r in calls) / len(calls), 4) if calls else None,
        "contribution_mean": round(sum(r["contribution"] for r in calls) / len(calls), 4) if calls else None,
        "solved_share": round(sum(lab.is_solved == "Solved" for lab in solved) / len(solved), 4) if solved else None,
        "pass_rate": round(sum(lab.is_solved_score for lab in solved) / len(solved), 4) if solved else None,
        "sc_rule_agreement": round(sum((r["succ_calling"] >= 0.5) == bool(r["sc_rule"]) for r in agree) / len(agree), 4)
        if agree else None,
    }
    return out


def annotate_folder(params, root: Path, traj_dir: Path, out_dir: Path, metrics: Path) -> dict:
    """A round's annotation on folders (the `annotate@<seed>` stage, and each later round inside the train stage):
    label every trajectory of `traj_dir` (annotate section) -> `out_dir`/steps.parquet and failed.json, the
    summary -> `metrics` (and returned). Raises when more than `annotate.max_failed_fraction` could not be labelled (after
    writing what was: a rerun retries only the rest, through the judge's cache)."""
    trajs = read_table(layout.table(traj_dir, "trajectories"), TRAJECTORIES).to_pylist()
    steps = read_table(layout.table(traj_dir, "steps"), STEPS).to_pylist()
    counts = Counter(s["traj_id"] for s in steps)
    for i, t in enumerate(trajs):  # a trajectory without (all) its steps would be written short, and not counted
        if counts.get(t["traj_id"], 0) != t["n_steps"]:
            raise SteptoolError(f"{layout.table(traj_dir, 'steps')}: trajectory {t['traj_id']} has "
                                f"{counts.get(t['traj_id'], 0)} steps, {layout.table(traj_dir, 'trajectories')} "
                                f"record {i} field 'n_steps' says {t['n_steps']}: the collection is incomplete "
                                "(rerun collect)")
    tasks = {t.task_id: t for split in SPLITS for t in load_tasks(root, split)}
    cfg = params.annotate
    cache_path = Path(cfg.cache_path)
    labels, stats = label_trajectories(trajs, steps, tasks, cfg,
                                       str(cache_path if cache_path.is_absolute() else root / cache_path))
    by_traj = group_steps(steps)
    rows = annotated_rows(by_traj, labels)
    write_table(rows, layout.table(out_dir, "steps"), ANNOTATED_STEPS)
    records = failure_records(labels, by_traj)
    write_json(out_dir / layout.ANNOTATION_FAILURES, records)
    failed = [r for r in records if not r["labelled"]]
    summary = summarize(labels, rows, stats, by_traj)
    if ENVIRONMENTS.has(params.env.kind, "counts_misses"):  # who answered the calls the judge saw
        summary["answers"] = answer_counts(s["env_status"] for s in steps if not s["is_finish"])
    write_json(metrics, summary)
    if failed and (not summary["annotated"] or len(failed) > cfg.max_failed_fraction * len(labels)):
        kinds = Counter(reason_kind(r["reason"]) for r in failed)
        raise SteptoolError(
            f"annotate ({cfg.annotator}): {len(failed)} of {len(labels)} trajectories not labelled (above "
            f"annotate.max_failed_fraction = {cfg.max_failed_fraction:g}): "
            + ", ".join(f"{n} x {k}" for k, n in kinds.most_common(5))
            + f"; every reason is in {out_dir / layout.ANNOTATION_FAILURES}, and a rerun retries them")
    return summary
