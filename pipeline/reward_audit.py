"""The reward audit: what the configured reward pays for (docs/architecture.md, "Reward audit").

A reward is a specification. Before a variant trains on one, canonical trajectories of every train task are
scripted from its gold plan, played through the real environment, labelled by the configured annotator (the
judge's cache and cost estimate included) and scored by the configured reward (`pipeline.rewards`):

    direct      the gold plan, then Finish with every gold fact
    redundant   the gold plan, its last call once more, then the same answer
    irrelevant  the gold plan, one successful call of a function the plan does not use, then the same answer
    no_answer   the gold plan, then its last call again and again until the action budget ends: no answer
    partial     the gold plan, then an answer with only some of the facts
    give_up     the first gold call, then give up

Every script is cut at `agent.max_steps` actions, as a collected trajectory is. A reward is sound when no
*padded* archetype (redundant, irrelevant, no_answer) earns a larger return G_0 than the direct solve, and
when, right after the gold plan, Finish has the larger advantage than one more call (the redundant
archetype's call): under the rloo baseline in a group of these two, A(Finish) = G_direct − G_redundant at
that step, the Monte-Carlo advantage (λ = 1). A variant without credit across steps (G_t = r_t) learns from each
step's own reward, so its G_0 says little; for it the audit also asks whether, in the direct solve, a gold call
earns more than the correct answer (`gather_beats_answer`): then a step-at-a-time learner is paid to keep
gathering (docs/architecture.md, "no_step_opt and `progress` shaping").
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline import layout, variants
from pipeline.envs import FINISH, ApiListEnv
from pipeline.errors import ConfigError
from pipeline.config import RewardsConfig
from pipeline.rewards import reward_table
from pipeline.task import Task

log = logging.getLogger("steptool.audit")

ARCHETYPES = {
    "direct": "the gold plan, then Finish with every gold fact",
    "redundant": "the gold plan, its last call once more, then the same answer",
    "irrelevant": "the gold plan, one successful call the plan does not need, then the same answer",
    "no_answer": "the gold plan, then its last call again until the action budget ends (no answer)",
    "partial": "the gold plan, then an answer with only some of the facts",
    "give_up": "the first gold call, then give up",
}
PADDED = ("redundant", "irrelevant", "no_answer")  # pad the direct solve or never answer: must not out-earn it


@dataclass
class Script:
    task: Task
    archetype: str
    actions: list[tuple[str, str]]  # (function, arguments JSON); a Finish ends it
    gold_steps: int  # actions of the gold plan (the Finish-vs-call decision comes right after them)


def answer(facts: list[str]) -> str:
    return json.dumps({"return_type": "give_answer",
                       "final_answer": ("Here is what I found: " + "; ".join(facts) + ".") if facts
                       else "I could not find the details you asked for."})


GIVE_UP = json.dumps({"return_type": "give_up_and_restart"})


def argument_pool(tasks: list[Task]) -> dict[str, list[str]]:
    """Per function, the argument sets the gold plans of `tasks` call it with (known to be valid in the world)."""
    pool: dict[str, list[str]] = defaultdict(list)
    for t in tasks:
        for c in t.gold_calls or []:
            if c.arguments not in pool[c.function_name]:
                pool[c.function_name].append(c.arguments)
    return pool


def irrelevant_call(task: Task, env: ApiListEnv, pool: dict[str, list[str]]) -> tuple[str, str] | None:
    """A call that succeeds (by the rule) of a function the task offers but its gold plan does not use, with
    arguments from another task's gold plan; None when the task offers no such function with known arguments."""
    from pipeline.annotate.succ_calling import succ_calling

    gold = {c.function_name for c in task.gold_calls or []}
    env.reset(task, episode=f"audit-probe:{task.task_id}")
    for spec in env.functions():
        name = spec.get("name")
        if name in gold or name == FINISH:
            continue
        for args in pool.get(name, [])[:5]:
            res = env.step(name, args)
            if res.status == "ok" and succ_calling(name, True, res.observation, env_status=res.status)[0]:
                return name, args
    return None


def scripts(task: Task, max_steps: int, irrelevant: tuple[str, str] | None) -> list[Script]:
    """The archetypes of one task with gold (docstring above); the irrelevant one only when a call was found."""
    plan = [(c.function_name, c.arguments) for c in task.gold_calls or []]
    facts = list(task.gold_facts or [])
    n = len(plan)
    full = (FINISH, answer(facts))
    out = [Script(task, "direct", plan + [full], n),
           Script(task, "redundant", plan + plan[-1:] + [full], n),
           Script(task, "no_answer", plan + plan[-1:] * max(0, max_steps - n), n),
           Script(task, "partial", plan + [(FINISH, answer(facts[: len(facts) // 2]))], n),
           Script(task, "give_up", plan[:1] + [(FINISH, GIVE_UP)], n)]
    if irrelevant is not None:
        out.insert(2, Script(task, "irrelevant", plan + [irrelevant, full], n))
    for s in out:
        s.actions = s.actions[:max_steps]  # the action budget cuts a script as it cuts a collected trajectory
    return out


def play(script: Script, env: ApiListEnv) -> tuple[dict, list[dict]]:
    """(trajectory row, step rows) of a script played through `env`, in the columns the annotators read."""
    tid = f"audit:{script.task.task_id}:{script.archetype}"
    env.reset(script.task, episode=tid)
    steps, finish, final = [], "none", None
    for i, (fn, args) in enumerate(script.actions):
        res = env.step(fn, args)
        steps.append({"traj_id": tid, "task_id": script.task.task_id, "step_idx": i, "prompt_text": "",
                      "action_text": f"Action: {fn}\nAction Input: {args}", "thought": "", "api_name": fn,
                      "arguments_json": args, "parse_ok": True, "observation": res.observation,
                      "is_finish": fn == FINISH, "finish_type": res.finish_type, "final_answer": res.final_answer,
                      "env_status": res.status})
        if res.done:
            finish, final = res.finish_type, res.final_answer
            break
    traj = {"traj_id": tid, "task_id": script.task.task_id, "policy": "audit", "strategy": "cot", "sample_idx": 0,
            "seed": 0, "n_steps": len(steps), "finish_type": finish, "final_answer": final,
            "split": script.task.split, "level": script.task.level}
    return traj, steps


def audit_tasks(params, root: Path, max_tasks: int | None = None) -> list[Task]:
    """The train tasks the audit plays: all of them, or the first `rewards.audit_max_tasks` of each level."""
    from pipeline.task_files import first_per_level, load_tasks

    tasks = load_tasks(root, "train")
    n = params.rewards.audit_max_tasks if max_tasks is None else max_tasks
    return first_per_level(tasks, n) if n else tasks


def label(params, root: Path, tasks: list[Task]) -> tuple[pl.DataFrame, dict, dict[str, int]]:
    """Play every archetype of `tasks` in ToolWorld (rate limits off: the audit is about the reward, not the
    environment's noise) and label it with the configured annotator. Returns (annotated steps with the archetype
    and task, the annotator's statistics, gold-plan steps per task)."""
    from pipeline.annotate.run import label_trajectories
    from pipeline.envs import ToolWorldEnv
    from pipeline.toolworld.world import ToolWorld

    world = ToolWorld.from_catalog(root / layout.CATALOG)
    world.rate_limit_prob = 0.0
    env = ToolWorldEnv(world, params.toolworld.max_observation_length)
    pool = argument_pool(tasks)
    trajs, steps, meta = [], [], {}
    for task in tasks:
        for s in scripts(task, params.agent.max_steps, irrelevant_call(task, env, pool)):
            t, st = play(s, env)
            trajs.append(t)
            steps += st
            meta[t["traj_id"]] = (task.task_id, s.archetype, s.gold_steps)
    cache = Path(params.annotate.cache_path)
    labels, stats = label_trajectories(trajs, steps, {t.task_id: t for t in tasks}, params.annotate,
                                       str(cache if cache.is_absolute() else root / cache), progress=False)
    rows = []
    # an archetype the judge could not label is left out of every share; how many is in the summary
    stats = {**stats, "unlabelled": sum(bool(lab.failed) for lab in labels)}
    for lab in labels:
        if lab.failed:
            continue
        task_id, arch, _ = meta[lab.traj_id]
        for k, sl in enumerate(lab.steps):
            last = k == len(lab.steps) - 1
            rows.append({"traj_id": lab.traj_id, "task_id": task_id, "archetype": arch, "step_idx": k,
                         "succ_calling": sl.succ_calling, "contribution": sl.contribution, "progress": sl.progress,
                         "is_solved_score": lab.is_solved_score if last else None})
    schema = {"traj_id": pl.String, "task_id": pl.String, "archetype": pl.String, "step_idx": pl.Int32,
              "succ_calling": pl.Float64, "contribution": pl.Float64, "progress": pl.Float64,
              "is_solved_score": pl.Float64}
    gold_steps = {task_id: n for task_id, _, n in meta.values()}
    return pl.DataFrame(rows, schema=schema, orient="row"), stats, gold_steps


def score(annotated: pl.DataFrame, gold_steps: dict[str, int], spec: RewardsConfig, variant: str) -> pl.DataFrame:
    """One row per task: each archetype's return G_0 (`G_<archetype>`) and `finish_advantage`, the return of
    Finish minus that of one more call right after the gold plan (G_direct − G_redundant at that step)."""
    table = reward_table(annotated.drop("archetype", "task_id"), spec, variant).join(
        annotated.select("traj_id", "task_id", "archetype").unique(), on="traj_id")
    first = table.filter(pl.col("step_idx") == 0).pivot(on="archetype", index="task_id", values="return")
    first = first.rename({a: f"G_{a}" for a in ARCHETYPES if a in first.columns})
    at = table.with_columns(pl.col("task_id").replace_strict(gold_steps, return_dtype=pl.Int32).alias("_n"))
    decision = (at.filter((pl.col("step_idx") == pl.col("_n")) & pl.col("archetype").is_in(["direct", "redundant"]))
                .pivot(on="archetype", index="task_id", values="return"))
    if {"direct", "redundant"} <= set(decision.columns):
        decision = decision.select("task_id", (pl.col("direct") - pl.col("redundant")).alias("finish_advantage"))
    else:
        decision = decision.select("task_id", pl.lit(None, pl.Float64).alias("finish_advantage"))
    out = first.join(decision, on="task_id", how="left")
    if not variants.get(variant).credit_across_steps:
        # the best return of a gold call minus the correct answer's, in the direct solve
        direct = table.filter(pl.col("archetype") == "direct")
        margin = direct.group_by("task_id").agg(
            (pl.col("return").filter(pl.col("step_idx") < pl.col("step_idx").max()).max()
             - pl.col("return").filter(pl.col("step_idx") == pl.col("step_idx").max()).first())
            .alias("gather_margin"))
        out = out.join(margin, on="task_id", how="left")
    for a in ARCHETYPES:
        if f"G_{a}" not in out.columns:
            out = out.with_columns(pl.lit(None, pl.Float64).alias(f"G_{a}"))
    return out.sort("task_id")


def summarize(per_task: pl.DataFrame, gold_steps: dict[str, int], max_steps: int) -> dict:
    """The audit's numbers: mean return per archetype, the share of tasks where each padded archetype earns more
    than (`beats_*`) or as much as (`ties_*`) the direct solve, `padded_beats_direct` (any of them more), the share
    where Finish right after the plan has the larger advantage, and where answering correctly beats every other
    archetype."""
    n = per_task.height
    out: dict = {"tasks": n, "max_steps": max_steps,
                 "tasks_without_slack": sum(1 for v in gold_steps.values() if v + 1 >= max_steps),
                 "tasks_direct_cut": sum(1 for v in gold_steps.values() if v + 1 > max_steps)}
    if not n:
        return out
    d = per_task["G_direct"]
    out["mean_return"] = {a: _round(per_task[f"G_{a}"].mean()) for a in ARCHETYPES}
    any_beats = pl.Series([False] * n)
    for a in PADDED:
        g = per_task[f"G_{a}"]
        have = g.is_not_null()
        beats = (g > d).fill_null(False)
        out[f"beats_{a}"] = _share(beats.sum(), have.sum())
        out[f"ties_{a}"] = _share(((g - d).abs() < 1e-9).fill_null(False).sum(), have.sum())
        any_beats = any_beats | beats
    out["padded_beats_direct"] = _share(any_beats.sum(), n)
    adv = per_task["finish_advantage"].drop_nulls()
    out["finish_preferred"] = _share((adv > 1e-9).sum(), len(adv))
    out["call_preferred"] = _share((adv < -1e-9).sum(), len(adv))
    out["finish_advantage_mean"] = _round(adv.mean())
    others = [per_task[f"G_{a}"] for a in ARCHETYPES if a != "direct"]
    best = pl.Series([all(o[i] is None or d[i] > o[i] + 1e-9 for o in others) for i in range(n)])
    out["direct_beats_all"] = _share(best.sum(), n)
    if "gather_margin" in per_task.columns:  # a variant without credit across steps (score)
        m = per_task["gather_margin"].drop_nulls()
        out["gather_beats_answer"] = _share((m > 1e-9).sum(), len(m))
    return out


def _share(k, n) -> float | None:
    return round(float(k) / float(n), 4) if n else None


def _round(x) -> float | None:
    return None if x is None else round(float(x), 4)


def run(params, root: Path, variant: str, spec: RewardsConfig | None = None, tasks: list[Task] | None = None,
        annotated: tuple | None = None) -> tuple[dict, pl.DataFrame]:
    """The audit of `variant` under `spec` (default: the params' `rewards`): (summary, per-task table). Tasks
    without gold (StableToolBench queries) cannot be scripted: the summary says so and holds no numbers.
    `annotated` reuses the output of `label` (to score several rewards on one labelling)."""
    spec = spec or params.rewards
    tasks = audit_tasks(params, root) if tasks is None else tasks
    gold = [t for t in tasks if t.has_gold and t.gold_calls]
    if not gold:
        return {"skipped": "the train tasks have no gold plan to script archetypes from (StableToolBench "
                           "queries): nothing audited"}, pl.DataFrame()
    steps, stats, gold_steps = annotated or label(params, root, gold)
    per_task = score(steps, gold_steps, spec, variant)
    summary = {"variant": variant, "shaping": spec.shaping, "gamma": spec.gamma, "alpha": spec.alpha,
               "step_scale": spec.step_scale, "call_cost": spec.call_cost, "failed_call_cost": spec.failed_call_cost,
               "annotator": params.annotate.annotator, "unlabelled": stats.get("unlabelled", 0),
               **summarize(per_task, gold_steps, params.agent.max_steps)}
    if stats.get("cost_usd"):
        summary["judge_cost_usd"] = stats["cost_usd"]
    return summary, per_task


def enforce(summary: dict, params, where: str) -> None:
    """With `rewards.audit: strict`, refuse a reward that a padded archetype out-earns (or that prefers another
    call to Finish right after the gold plan, or, for a variant without credit across steps, pays a gold call more
    than the correct answer) on more than `rewards.audit_max_share` of the tasks."""
    r = params.rewards
    worst = max(summary.get("padded_beats_direct") or 0.0, summary.get("call_preferred") or 0.0,
                summary.get("gather_beats_answer") or 0.0)
    if worst > r.audit_max_share:
        msg = (f"{where}: the reward audit of {summary.get('variant')} ({summary.get('shaping')}, γ {r.gamma}, "
               f"α {r.alpha}, step_scale {r.step_scale}, call_cost {r.call_cost}): a padded or non-answering "
               f"trajectory out-earns the direct solve on {100 * (summary.get('padded_beats_direct') or 0):.0f}% of "
               f"{summary.get('tasks')} train tasks, another call is preferred to Finish after the gold plan on "
               f"{100 * (summary.get('call_preferred') or 0):.0f}%"
               + (f", a gold call earns more than the correct answer on "
                  f"{100 * summary['gather_beats_answer']:.0f}%" if summary.get("gather_beats_answer") else "")
               + f" (rewards.audit_max_share "
               f"{r.audit_max_share:g})")
        if r.audit == "strict":
            raise ConfigError(msg + ": refusing to train on it (rewards.audit: strict)")
        log.warning("%s", msg)
