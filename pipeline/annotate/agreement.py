"""How far two step annotations agree: our judge prompt, the reference's prompt (`annotate.prompt`), and the
StepTool reference's released GPT-4 labels of the same trajectories (`steptool judge-agreement`).

The released file (`reward_annotation/*.json`, read by pipeline/annotate/importer.py) holds each trajectory's
steps and three judge runs per trajectory. Both prompts label the same trajectories through the configured
endpoint (the judge's cache and cost cap apply), and every pair of labellings is compared per step and per
trajectory:

    sc_agreement       share of intermediate steps where both say the call succeeded (mean vote >= 0.5) or both
                       say it failed
    contribution_mae   mean |Con_a - Con_b| over the steps (Con on 0..5, each the mean of its votes)
    contribution_r     Pearson correlation of the two Con columns (None when either is constant)
    status_agreement   share of trajectories given the same status (Solved / Unsure / Unsolved, from the mean
                       vote as everywhere in the pipeline)

The released runs compared with each other (every pair of runs, averaged) give the agreement of one judge
with itself at the reference's temperature: a ceiling for any other labelling.
"""
from __future__ import annotations

import dataclasses
import json
from itertools import combinations
from pathlib import Path

from pipeline.annotate.base import status_of, step_is_call
from pipeline.errors import SteptoolError

PROMPTS = ("ours", "reference")


@dataclasses.dataclass
class Labelling:
    """One labelling of the examples: per trajectory (in file order), Con and SC per intermediate step and the
    IsSolved score."""
    name: str
    sc: list[list[float]]
    con: list[list[float]]
    solved: list[float]


def agreement(a: Labelling, b: Labelling) -> dict:
    """The module doc's measures for two labellings of the same trajectories (same step counts)."""
    if len(a.sc) != len(b.sc) or any(len(x) != len(y) for x, y in zip(a.sc, b.sc)):
        raise ValueError(f"{a.name} and {b.name} label different steps")
    sc_a = [v for t in a.sc for v in t]
    sc_b = [v for t in b.sc for v in t]
    con_a = [v for t in a.con for v in t]
    con_b = [v for t in b.con for v in t]
    n = len(sc_a)
    return {
        "pair": f"{a.name} vs {b.name}", "trajectories": len(a.sc), "steps": n,
        "sc_agreement": round(sum((x >= 0.5) == (y >= 0.5) for x, y in zip(sc_a, sc_b)) / n, 4) if n else None,
        "contribution_mae": round(sum(abs(x - y) for x, y in zip(con_a, con_b)) / n, 4) if n else None,
        "contribution_r": _pearson(con_a, con_b),
        "status_agreement": round(sum(status_of(x) == status_of(y) for x, y in zip(a.solved, b.solved))
                                  / len(a.solved), 4) if a.solved else None,
    }


def _pearson(x: list[float], y: list[float]) -> float | None:
    n = len(x)
    if n < 2:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((v - mx) ** 2 for v in x)
    syy = sum((v - my) ** 2 for v in y)
    if sxx == 0 or syy == 0:
        return None
    return round(sum((u - mx) * (v - my) for u, v in zip(x, y)) / (sxx * syy) ** 0.5, 4)


def released(path: Path) -> tuple[list[tuple[dict, list[dict], str]], Labelling, list[Labelling]]:
    """(judge items: (trajectory row, step rows, query) per record, the released labels averaged over runs,
    each released run alone)."""
    from pipeline.annotate.importer import import_reference_annotations
    from pipeline.formats.stabletoolbench import STATUS_VALUE, answer_status, load_json_records

    trajs, rows = import_reference_annotations(path)
    queries = {str(qid): str(rec.get("query", "")) for qid, rec in load_json_records(path).items()}
    items, mean = [], Labelling("released", [], [], [])
    runs: list[Labelling] = []
    for traj in trajs:
        steps = sorted((r for r in rows if r["traj_id"] == traj["traj_id"]), key=lambda r: r["step_idx"])
        calls = [r for r in steps if step_is_call(r)]
        items.append((traj, steps, queries[traj["task_id"]]))
        mean.sc.append([r["succ_calling"] for r in calls])
        mean.con.append([r["contribution"] for r in calls])
        mean.solved.append(steps[-1]["is_solved_score"])
        votes = [json.loads(r["vote_details"]) for r in calls]
        statuses = json.loads(steps[-1]["vote_details"])
        for k, status in enumerate(statuses):
            if len(runs) <= k:
                runs.append(Labelling(f"released run {k}", [], [], []))
            runs[k].sc.append([v[k]["succeed_tool_calling"] for v in votes])
            runs[k].con.append([v[k]["contribution"] for v in votes])
            runs[k].solved.append(STATUS_VALUE[answer_status(status)])
    if any(len(r.sc) != len(trajs) for r in runs):
        raise SteptoolError(f"{path}: the records have different numbers of judge runs")
    return items, mean, runs


def judge_labelling(name: str, items: list, cfg, cache_path: str, progress: bool = True) -> tuple[Labelling, dict]:
    """Label `items` with the openai annotator of `cfg` (its prompt, endpoint, votes, cache); (labelling, stats)."""
    from pipeline.annotate.cache import JudgeCache
    from pipeline.annotate.llm_judge import OpenAIJudge

    judge = OpenAIJudge(cfg, JudgeCache(cache_path))
    labels = judge.annotate(items, progress=progress)
    failed = [lab for lab in labels if lab.failed]
    if failed:
        raise SteptoolError(f"judge-agreement: the {name} prompt left {len(failed)} of {len(labels)} trajectories "
                            f"unlabelled (first: {failed[0].failed[:160]}); a rerun asks only for those (the answers "
                            "so far are cached)")
    out = Labelling(name, [], [], [])
    for lab, (_, steps, _) in zip(labels, items):
        calls = [s for s, st in zip(lab.steps, steps) if step_is_call(st)]
        out.sc.append([s.succ_calling for s in calls])
        out.con.append([s.contribution for s in calls])
        out.solved.append(lab.is_solved_score)
    # the judge's counters, and which trajectories were labelled from fewer votes than asked, and why
    return out, {**judge.stats, "vote_failures": [f"{lab.traj_id}: {lab.vote_failures}"[:200]
                                                  for lab in labels if lab.vote_failures]}


def run(path: Path, cfg, cache_path: str, progress: bool = True) -> dict:
    """Both prompts against the released labels and each other, and the released runs among themselves."""
    items, mean, runs = released(path)
    labellings, stats = {}, {}
    for prompt in PROMPTS:
        labellings[prompt], stats[prompt] = judge_labelling(prompt, items, dataclasses.replace(cfg, prompt=prompt),
                                                            cache_path, progress)
    pairs = [agreement(labellings["ours"], mean), agreement(labellings["reference"], mean),
             agreement(labellings["ours"], labellings["reference"])]
    between = [agreement(a, b) for a, b in combinations(runs, 2)]
    ceiling = {"pair": f"released runs with each other ({len(between)} pairs, mean)", "trajectories": len(items),
               "steps": between[0]["steps"] if between else 0}
    for key in ("sc_agreement", "contribution_mae", "contribution_r", "status_agreement"):
        vals = [b[key] for b in between if b[key] is not None]
        ceiling[key] = round(sum(vals) / len(vals), 4) if vals else None
    return {"examples": str(path), "judge_model": cfg.model, "n_votes": cfg.n_votes, "temperature": cfg.temperature,
            "pairs": pairs + [ceiling], "judge_calls": {p: stats[p]["judge_calls"] for p in PROMPTS},
            "cache_hits": {p: stats[p]["cache_hits"] for p in PROMPTS},
            # trajectories labelled from fewer votes than asked (the failed votes' reasons are logged; a rerun asks
            # for them again)
            "partial_trajectories": {p: stats[p]["partial_trajectories"] for p in PROMPTS},
            "vote_failures": {p: stats[p].get("vote_failures", []) for p in PROMPTS},
            "cost_usd": round(sum(stats[p].get("cost_usd", 0.0) for p in PROMPTS), 6)}


def markdown(result: dict) -> str:
    """The comparison as a table, with what was asked."""
    lines = [f"Judge agreement on {result['examples']} ({result['pairs'][0]['trajectories']} trajectories, "
             f"{result['pairs'][0]['steps']} intermediate steps; judge {result['judge_model']}, "
             f"{result['n_votes']} votes at temperature {result['temperature']:g}; judge calls "
             f"{result['judge_calls']}, cost ${result['cost_usd']:.4f})", "",
             "| pair | SC agreement | Con mean abs. difference | Con Pearson r | status agreement |",
             "|---|---|---|---|---|"]

    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    for p in result["pairs"]:
        lines.append(f"| {p['pair']} | {fmt(p['sc_agreement'])} | {fmt(p['contribution_mae'])} | "
                     f"{fmt(p['contribution_r'])} | {fmt(p['status_agreement'])} |")
    return "\n".join(lines) + "\n"
