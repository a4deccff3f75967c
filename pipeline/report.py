"""The report: paper-style tables with their uncertainty, sentences generated from the numbers, figures, and
DVC metrics and plots, from a run's evaluation results, round tables and training logs (the `report` stage
writes them; what it reads and writes: its help, `steptool report --help`; docs/architecture.md, "Evaluation").
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from pipeline import layout, variants
from pipeline.config import LEVELS, Params
from pipeline.errors import SteptoolError
from pipeline.evaluate.results import summarize, win_rate
from pipeline.figures import figures
from pipeline.fsutil import atomic_path, write_json
from pipeline.registry import ENVIRONMENTS, JUDGES
from pipeline.schema import EVAL_RESULTS, ROUND_STEPS, read_table
from pipeline.stats import paired_difference, pass_rate_ci, seed_scores, tasks_needed, verdict


def _ci(cell: dict | None) -> str:
    if not cell or cell.get("mean") is None:
        return "–"
    return f"{cell['mean']:.1f} [{cell['lo']:.1f}, {cell['hi']:.1f}]"


def _diff(d: dict | None) -> tuple[str, str, str]:
    """(difference [CI], p-value, wins/ties/losses) cells of a paired comparison."""
    if not d or d.get("diff") is None:
        return "–", "–", "–"
    return (f"{d['diff']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}]", f"{d['p_value']:.3g}",
            f"{d['wins']} / {d['ties']} / {d['losses']}")


def load_results(root: Path, params: Params) -> dict[tuple[str, str], list[dict]]:
    """Every evaluation's rows; an empty table or a status the pass rate has no value for is refused in one line
    naming the file, record and field (a report over them would divide by zero or count it as nothing)."""
    from pipeline.formats.stabletoolbench import STATUS_VALUE

    e = params.evaluate
    out = {}
    for m in e.models:
        for s in e.strategies:
            path = root / layout.table(layout.eval_dir(m, s), "results")
            rows = read_table(path, EVAL_RESULTS).to_pylist()
            if not rows:
                raise SteptoolError(f"{path}: no evaluated task (rerun the stage evaluate@{m}-{s})")
            for i, r in enumerate(rows):
                bad = [x for x in r["statuses"] or [None] if x not in STATUS_VALUE]  # none at all counts as None
                if bad:
                    raise SteptoolError(f"{path}: record {i} field 'statuses' holds {bad[0]!r}, not Solved, Unsure or "
                                        "Unsolved (one per judging run)")
            out[(m, s)] = rows
    return out


def build(results: dict[tuple[str, str], list[dict]], reference: str, trained: list[str],
          train_logs: dict[str, list[dict]], split: str = "test") -> tuple[dict, list[str]]:
    """(metrics, markdown lines) from the results of every model x strategy on `split`."""
    metrics: dict = {}
    scores = {key: seed_scores(rows) for key, rows in results.items()}
    for (m, s), rows in results.items():
        summary = summarize(rows)
        summary["pass_rate_ci"] = pass_rate_ci(scores[(m, s)])
        ref_rows = results.get((reference, s))
        summary["win_rate_vs_" + reference] = win_rate(rows, ref_rows) if ref_rows is not None and m != reference else None
        for other in (reference, variants.OUTCOME_BASELINE):
            if (other, s) in scores and other != m:
                summary[f"vs_{other}"] = paired_difference(scores[(m, s)], scores[(other, s)])
        metrics[f"{m}-{s}"] = summary
    any_rows = next(iter(results.values()), [])
    first = metrics[next(iter(metrics))] if metrics else {}
    per_level = ", ".join(f"{lv} {len({r['task_id'] for r in any_rows if r['level'] == lv})}" for lv in LEVELS)
    seeds = max((len(s.get("seeds", [])) for s in metrics.values()), default=0)
    counts = {k: len(v.get("seeds", [])) for k, v in metrics.items() if v.get("seeds")}
    runs = (f"; every trained variant is {seeds} training runs (seeds), each evaluated"
            if len(set(counts.values())) <= 1 else
            "; the trained variants are training runs (seeds) each evaluated, not as many of each: "
            + ", ".join(f"{k} {n}" for k, n in counts.items()))
    single = first.get("samples", 0) == 1 and first.get("judge_runs", 0) == 1 and seeds <= 1
    md = ["# StepTool results", "",
          f"Every number below comes from the **{split}** split (`evaluate.split`; "
          + ("read only for these tables, never to tune anything): " if split == "test" else
             "the split to tune on; the final tables come from `test`): ")
          + f"{first.get('tasks', 0)} tasks ({per_level}), "
          f"{first.get('samples', 0)} sample(s) per task, judge `{any_rows[0]['judge'] if any_rows else '?'}` "
          f"with {first.get('judge_runs', 0)} judging run(s)"
          + (runs if seeds > 1 else "; one training run (seed) per trained variant") + ". Pass rate in % (Solved = 1, Unsure = 0.5) with "
          "its 95% bootstrap confidence interval in brackets (tasks resampled within each level"
          + (", and the training seeds" if seeds > 1 else "") + "); Average is the mean of the levels, as in the "
          "paper. Every test task counts: an answer never given is Unsolved."
          + (" One sample, one judging run and one training seed: n = 1, so no spread over samples, judgings or "
             "training runs was measured; the intervals say only how much the figure depends on which tasks were "
             "drawn." if single else ""), "",
          "## Main table", "",
          f"| model | strategy | I1 | I2 | I3 | Average | tool success | calls / task | no answer | give-up | "
          f"win / tie / loss vs {reference} |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, s in metrics.items():
        m, strat = key.rsplit("-", 1)
        pr = s["pass_rate_ci"]
        wr = s[f"win_rate_vs_{reference}"]
        wtl = f"{wr['win']:.0%} / {wr['tie']:.0%} / {wr['loss']:.0%}" if wr and wr["tasks"] else "–"
        ts = f"{s['tool_success_rate']:.1%}" if s["tool_success_rate"] is not None else "–"
        md.append(f"| {m} | {strat} | {_ci(pr.get('I1'))} | {_ci(pr.get('I2'))} | {_ci(pr.get('I3'))} | "
                  f"**{_ci(pr.get('average'))}** | {ts} | {s.get('calls_per_task', 0):.2f} | {s['no_finish_rate']:.0%} | "
                  f"{s['give_up_rate']:.0%} | {wtl} |")
    abl = [k for k in metrics if k.rsplit("-", 1)[0] in trained]
    base = variants.OUTCOME_BASELINE
    if abl:
        md += ["", "## Ablation (training variants)", "", variants.describe() + ".", "",
               "Differences are paired: the same test tasks, variant minus the other model, in points of the average "
               "pass rate, with the 95% bootstrap CI, the exact sign test's p-value over the tasks that differ, and "
               "wins / ties / losses counted per task.", "",
               f"| variant | strategy | Average | Δ vs {reference} | p | W / T / L vs {reference} | Δ vs {base} | p | "
               f"W / T / L vs {base} | mean step reward |",
               "|---|---|---|---|---|---|---|---|---|---|"]
        for k in abl:
            v, strat = k.rsplit("-", 1)
            log = [h for run, hs in train_logs.items() if run.split("/")[0] == v for h in hs]  # every seed and round
            rew = sum(h.get("reward_mean", 0.0) for h in log) / len(log) if log else None
            md.append(f"| {v} | {strat} | {_ci(metrics[k]['pass_rate_ci'].get('average'))} | "
                      + " | ".join(_diff(metrics[k].get(f"vs_{reference}")) + _diff(metrics[k].get(f"vs_{base}")))
                      + f" | {'–' if rew is None else f'{rew:.3f}'} |")
        md += ["", "## What the numbers say", "",
               "Generated from the paired comparisons above: *better* or *worse* only where the CI excludes 0 and "
               "the sign test is significant at the 5% level.", ""]
        for k in abl:
            v, strat = k.rsplit("-", 1)
            for other in (reference, base):
                d = metrics[k].get(f"vs_{other}")
                if d is not None:
                    md.append(f"- {strat}: {verdict(v, other, d)}")
        md += power_section(metrics, abl, (reference, base))
    md += ["", "## Figures", "", "![pass rate](figures/pass_rate.png)", "", "![win rate](figures/win_rate.png)", ""]
    if train_logs:
        md += ["![training](figures/training.png)", ""]
    return metrics, md


def power_section(metrics: dict, runs: list[str], others: tuple[str, ...]) -> list[str]:
    """How many tasks each comparison would need, from its measured per-task spread (pipeline.stats)."""
    rows = []
    for k in runs:
        v, strat = k.rsplit("-", 1)
        for other in others:
            d = metrics[k].get(f"vs_{other}")
            if not d or d.get("diff") is None:
                continue
            need = [tasks_needed(d.get("sd"), delta) for delta in (5.0, 10.0, d["diff"])]
            cells = ["–" if n is None else str(n) for n in need]
            sd = "– (no task differed)" if not d.get("sd") else f"{d['sd']:.1f}"
            rows.append(f"| {v} vs {other} | {strat} | {d['tasks']} | {sd} | {d['diff']:+.1f} | "
                        + " | ".join(cells) + " |")
    if not rows:
        return []
    seeds = _seed_power(metrics, runs, others)
    spread = ("A task's difference is its mean over the training seeds, so the spread between training runs is in "
              "these numbers; the second table splits it." if seeds else
              "With one training seed the spread between training runs is not measured; it can only add to these "
              "numbers.")
    return ["", "## How many tasks would tell", "",
            "Tasks a paired comparison needs to detect a true difference of 5 or 10 points (or the one observed) "
            "at 80% power with a two-sided 5% test, from the per-task standard deviation of the differences "
            "measured here (normal approximation, tasks spread evenly over the levels). " + spread, "",
            "| comparison | strategy | tasks now | sd of per-task Δ (points) | observed Δ | tasks for 5 points | "
            "tasks for 10 points | tasks for the observed Δ |",
            "|---|---|---|---|---|---|---|---|", *rows, *seeds]


def _seed_power(metrics: dict, runs: list[str], others: tuple[str, ...]) -> list[str]:
    """With several training seeds: the per-task spread split into tasks and seeds, and the tasks a 5-point
    difference needs at 1, 3 and 5 seeds (per-task sd² = between² + within²/seeds, pipeline.stats)."""
    rows = []
    for k in runs:
        v, strat = k.rsplit("-", 1)
        for other in others:
            d = metrics[k].get(f"vs_{other}") or {}
            if "sd_within" not in d:
                continue
            need = [tasks_needed((d["sd_between"] ** 2 + d["sd_within"] ** 2 / m) ** 0.5, 5.0) for m in (1, 3, 5)]
            rows.append(f"| {v} vs {other} | {strat} | {d['seeds']} | {d['sd_between']:.1f} | {d['sd_within']:.1f} | "
                        + " | ".join("–" if n is None else str(n) for n in need) + " |")
    if not rows:
        return []
    return ["", "Measured over several training seeds, the spread of a task's difference splits into the part "
            "that comes from the task and the part that comes from the training run (seed); more seeds shrink "
            "only the second:", "",
            "| comparison | strategy | seeds now | sd between tasks | sd within a task (seeds) | tasks for 5 points "
            "at 1 seed | at 3 seeds | at 5 seeds |", "|---|---|---|---|---|---|---|---|", *rows]


def load_rounds(root: Path, params: Params) -> list[dict]:
    """Every trained round: variant, seed, round, its table (data/rounds/<variant>/s<seed>/r<k>/round.parquet),
    its metrics, and the greedy replay of the train tasks before (the collecting policy: collect@<seed>'s for
    round 1, the previous round's after) and after it, where `collect.replay` made them."""
    out = []
    for v in params.variants:
        for seed in params.train.seeds:
            collect_file = root / layout.metrics_file("collect", layout.seed_dir(seed))
            before = json.loads(collect_file.read_text()).get("replay") if collect_file.exists() else None
            for k in range(1, params.train.rounds + 1):
                folder = root / layout.round_dir(v, seed, k)
                if not (folder / "round.parquet").exists():
                    break
                m = json.loads((folder / "metrics.json").read_text())
                hist = folder / "history.json"
                out.append({"variant": v, "seed": seed, "round": k, "metrics": m, "before": before,
                            "history": json.loads(hist.read_text()) if hist.exists() else [],
                            "after": m.get("replay"),
                            "rows": read_table(folder / "round.parquet", ROUND_STEPS).to_pylist()})
                before = m.get("replay")
    return out


def update_kl(history: list[dict], epochs: int) -> tuple[float | None, float | None, float | None]:
    """(median and max over the optimizer steps of approx KL(π_old‖π_θ), median over the last epoch's steps of
    KL(π_θ‖π_ref) per action token), from a round's training log (one entry per optimizer step; None where it
    logged none). Medians, because one token the name constraint forced (log π_old ≈ −12 and below) that rose
    e^12-fold puts 10^2-10^4 into its minibatch's mean while the other updates log 0.01-0.1: a mean or the last
    step's value then reports that token, not how far the policy moved (docs/architecture.md, "Advantages and the
    PPO round")."""
    approx = [h["approx_kl"] for h in history if _finite(h.get("approx_kl"))]
    last = history[len(history) - max(1, len(history) // max(1, epochs)):]
    ref = [h["kl_ref_token"] for h in last if _finite(h.get("kl_ref_token"))]
    return (statistics.median(approx) if approx else None, max(approx) if approx else None,
            statistics.median(ref) if ref else None)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _sig(x: float | None) -> str:
    """Three significant digits, and whole numbers from 100 on (a spike's 15,987, not 1.6e+04)."""
    return "–" if x is None else f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def likelihood_shift(rows: list[dict]) -> tuple[float, float, float] | None:
    """How far a round moved the likelihood of its own actions, by what it asked: per trajectory, the sum of
    logp_new − logp_old (nats, over the action tokens) over the steps pushed up, left alone and pushed down
    (advantage > 0, = 0, < 0), averaged over the round's trajectories. None for a table without `logp_new` (made
    before the column). A round whose pushed-down actions fell by far more than its pushed-up ones rose lowered
    the likelihood of what it sampled and moved the mass to actions it never tried (docs/architecture.md,
    "Advantages and the PPO round")."""
    if not rows or any(x.get("logp_new") is None or x.get("logp_old") is None for x in rows):
        return None
    sums = {1: 0.0, 0: 0.0, -1: 0.0}
    for x in rows:
        sums[_sign(x["advantage"])] += x["logp_new"] - x["logp_old"]
    n = len({x["traj_id"] for x in rows})
    return sums[1] / n, sums[0] / n, sums[-1] / n


def learning_signal(runs: list[dict], epochs: int = 1) -> list[str]:
    """What each variant's rounds trained on and how far they moved: separate from generalisation to new tasks.
    `epochs`: the PPO epochs per round (`train.num_train_epochs`), to find the last epoch's updates in the log."""
    if not runs:
        return []
    base = variants.OUTCOME_BASELINE
    ref_sign = {(r["seed"], r["round"], x["traj_id"], x["step_idx"]): _sign(x["advantage"])
                for r in runs if r["variant"] == base for x in r["rows"]}
    replay = any(r["after"] for r in runs)
    lines = ["", "## Learning signal (training rounds)", "",
             "Per variant, seed and round, from its round table (data/rounds/<variant>/s<seed>/r<k>) and training "
             "log: the steps it trained on, the share pushed up / left alone / pushed down (advantage > 0, = 0, < 0 "
             "after the baseline), the baseline's explained variance on the round's returns (leave-out for rloo and "
             f"crossfit), the share of steps whose advantage sign differs from {base}'s on the same step (round 1: "
             "both trained on the same collection), and how far the policy moved: approx KL(π_old‖π_θ) per "
             "update, median (max) over the optimizer steps, and KL(π_θ‖π_ref) per action token, median over the "
             "last epoch's steps (both ≥ 0 estimators on the collected tokens, each step's on its minibatch; π_ref "
             "is the SFT policy). Medians, as one rare token that the name constraint forced and training made "
             "likely puts 10^2-10^4 into its minibatch's value (docs/architecture.md, \"Advantages and the PPO "
             "round\"); the max shows such a step. Δ log π: how far the round moved the log-likelihood of its own "
             "actions (nats per trajectory, summed over the action tokens of the steps it pushed up / left alone / "
             "pushed down; after the round minus π_old)."
             + (" Replay: the round's train tasks played greedily before → after the round (pass rate in %, the "
                "share of tool calls that failed, tool calls per task): what optimisation did on the tasks it "
                "learned from." if replay else
                " (`collect.replay: true` adds a greedy replay of the train tasks before and after each round.)"), ""]
    head = (f"| variant | seed | round | steps | up / zero / down | baseline EV (rloo, crossfit) | sign differs from "
            f"{base} | approx KL per update, median (max) | KL to ref per token, last epoch | Δ log π per "
            "trajectory, up / zero / down |")
    rule = "|---|---|---|---|---|---|---|---|---|---|"
    if replay:
        head += " replay pass rate | failed-call rate | calls per task |"
        rule += "---|---|---|"
    lines += [head, rule]
    for r in runs:
        v, m = r["variant"], r["metrics"]
        signs = [_sign(x["advantage"]) for x in r["rows"]]
        n = max(1, len(signs))
        share = " / ".join(f"{sum(s == k for s in signs) / n:.0%}" for k in (1, 0, -1))
        ev = ", ".join(_num(m.get(f"round_baseline_ev_{k}")) for k in ("rloo", "crossfit"))
        common = [(_sign(x["advantage"]), ref_sign[key]) for x in r["rows"]
                  if (key := (r["seed"], r["round"], x["traj_id"], x["step_idx"])) in ref_sign]
        differs = "–" if v == base or not common else f"{sum(a != b for a, b in common) / len(common):.0%}"
        med, top, ref = update_kl(r.get("history") or [], epochs)
        moved = "–" if med is None else f"{_sig(med)} ({_sig(top)})"
        shift = likelihood_shift(r["rows"])
        shifted = "–" if shift is None else " / ".join(f"{x:+.1f}" for x in shift)
        line = (f"| {v} | {r['seed']} | {r['round']} | {len(r['rows'])} | {share} | {ev} | {differs} | "
                f"{moved} | {_sig(ref)} | {shifted} |")
        if replay:
            line += " " + " | ".join(_before_after(r["before"], r["after"], k, d) for k, d in
                                     (("pass_rate", 1), ("failed_call_rate", 2), ("calls_per_task", 2))) + " |"
        lines.append(line)
    return lines


BEHAVIOUR = (("pass_rate", "replay pass rate (points)", 1), ("failed_call_rate", "failed-call rate", 3),
             ("calls_per_task", "calls per task", 2), ("no_finish_rate", "no-answer rate", 3))


def behaviour_change(root: Path, params: Params) -> list[str]:
    """Did training move each variant's behaviour on its own train tasks beyond the spread across seeds? Per
    variant and readout: the change from the collecting policy's replay to the last round's, its mean over seeds
    with a 95% t-interval over seeds, and whether that interval excludes 0."""
    from pipeline.evaluate.results import replay_behaviour
    from pipeline.stats import mean_ci

    k = params.train.rounds
    table, deltas_of = [], {}
    for v in params.variants:
        deltas: dict[str, list[float]] = {key: [] for key, _, _ in BEHAVIOUR}
        deltas_of[v] = deltas["pass_rate"]
        for seed in params.train.seeds:
            before = replay_behaviour(root / layout.replay_dir(layout.trajectories_dir(seed)) / "results.parquet")
            after = replay_behaviour(root / layout.round_dir(v, seed, k) / "replay" / "results.parquet")
            if before and after:
                for key, _, _ in BEHAVIOUR:
                    if before.get(key) is not None and after.get(key) is not None:
                        deltas[key].append(after[key] - before[key])
        table.append((v, {key: mean_ci(d) for key, d in deltas.items()}))
    if not any(c["n"] for _, cells in table for c in cells.values()):
        return []
    lines = ["", "## Did training move the policy? (train tasks, greedy replay, change over the run)", "",
             f"Per variant, the change from the collecting policy (sft) to the policy after round {k}, on the train "
             "tasks it learned from, replayed greedily: the mean over training seeds with a 95% t-interval over "
             "seeds. **moved** when the interval excludes 0, *within the seed spread* when it does not; with one "
             "seed the spread is not measured.", "",
             "| variant | seeds | " + " | ".join(label for _, label, _ in BEHAVIOUR) + " |",
             "|---|---|" + "---|" * len(BEHAVIOUR)]
    for v, cells in table:
        n = max(c["n"] for c in cells.values())
        out = []
        for key, _, digits in BEHAVIOUR:
            c = cells[key]
            if c["mean"] is None:
                out.append("–")
            elif c["lo"] is None:
                out.append(f"{c['mean']:+.{digits}f} (one seed)")
            else:
                moved = c["lo"] > 0 or c["hi"] < 0
                out.append(f"{c['mean']:+.{digits}f} [{c['lo']:+.{digits}f}, {c['hi']:+.{digits}f}] "
                           + ("**moved**" if moved else "*within the seed spread*"))
        lines.append(f"| {v} | {n} | " + " | ".join(out) + " |")
    plain = [line for v, cells in table if (line := _moved_plainly(v, cells, deltas_of[v]))]
    return lines + (["", "Read plainly, on the replay pass rate:", ""] + plain if plain else [])


def _moved_plainly(variant: str, cells: dict, deltas: list[float]) -> str | None:
    """One sentence on a variant's replay pass rate: moved, or not and what it would take to show (a larger change
    at these seeds, or more seeds at this change, with the spread measured here); None with fewer than two seeds."""
    from pipeline.stats import seeds_to_tell

    c = cells["pass_rate"]
    if c["lo"] is None:
        return None
    ups, downs = sum(d > 0 for d in deltas), sum(d < 0 for d in deltas)
    signs = f"{ups} up, {downs} down, {c['n'] - ups - downs} unchanged"
    if c["lo"] > 0 or c["hi"] < 0:
        return f"- {variant}: moved, {c['mean']:+.1f} points over {c['n']} seeds ({signs})."
    half = (c["hi"] - c["lo"]) / 2
    need = seeds_to_tell(c["mean"], c["sd"])
    more = (f"or this mean change, if the spread stayed as measured, about {need} seeds" if need else
            "and no number of seeds tells a mean change of 0 from 0")
    bigger = (f"the mean change would have to exceed {half:.1f} points" if half < 100 else
              f"no change a pass rate can make would do (the interval's half-width is {half:.1f} points)")
    return (f"- {variant}: did not move beyond the seed spread: {c['mean']:+.1f} points, sd {c['sd']:.1f} between "
            f"its {c['n']} seeds ({signs}). To show at {c['n']} seeds {bigger}, {more}.")


def _before_after(before: dict | None, after: dict | None, key: str, digits: int) -> str:
    return f"{_num((before or {}).get(key), digits)} → {_num((after or {}).get(key), digits)}"


def _sign(x: float, eps: float = 1e-9) -> int:
    return 0 if abs(x) <= eps else (1 if x > 0 else -1)


def _num(x, digits: int = 2) -> str:
    return "–" if x is None or x != x else f"{x:.{digits}f}"


def protocol(params: Params, root: Path) -> list[str]:
    """The run's sizes and every seed, so a reader can rerun it or vary one seed (`dvc exp run -S ...`)."""
    p = params
    ws = {}
    ws_file = root / layout.metrics_file("warmstart")
    if ws_file.exists():
        ws = json.loads(ws_file.read_text())
    return ["## Protocol and seeds", "",
            (f"- World and tasks: `toolworld.seed` {p.toolworld.seed}, `tasks.seed` {p.tasks.seed}; train, val and "
             "test tasks never share an entity." if p.tasks.source == "toolworld" else
             f"- Tasks: StableToolBench queries split by `tasks.seed` {p.tasks.seed}; train, val and test never share "
             f"a query; the warm start's expert paths are ToolWorld's (`toolworld.seed` {p.toolworld.seed}).")
            + " Tune on `val` (`dvc exp run -S evaluate.split=val`); `test` is read "
            "for the final tables only.",
            f"- Warm start (sft): {ws.get('paths', '?')} expert paths from {p.warmstart.max_tasks or 'all'} train tasks, "
            f"{p.warmstart.epochs:g} epoch(s), lr {p.warmstart.learning_rate:g}, `warmstart.seed` {p.warmstart.seed}.",
            f"- Collection: {p.collect.strategy}, {p.collect.max_tasks or 'all'} train tasks x {p.collect.n_samples} "
            f"samples at temperature {p.collect.temperature:g}, sampled with each training seed; annotator "
            f"`{p.annotate.annotator}`.",
            f"- Training: {p.train.rounds} PPO round(s) per run, one run per variant and training seed "
            f"(`train.seeds` {p.train.seeds}: each seed collects, annotates and trains its own chain), lr "
            f"{p.train.learning_rate:g}, kl_coef {p.train.kl_coef:g}, baseline `{p.train.baseline}`.",
            f"- Evaluation: {p.evaluate.samples} sample(s) per task at temperature {p.evaluate.temperature:g}, "
            f"`evaluate.seed` {p.evaluate.seed}; prompt `{p.agent.prompt_format}`, at most {p.agent.max_steps} "
            f"actions of {p.agent.max_new_tokens} tokens, DFSDT width {p.agent.dfsdt_width} and budget "
            f"{p.agent.dfsdt_budget}; {generation(root)}.",
            ""]


def generation(root: Path) -> str:
    """How the evaluations' policies ran, from what each evaluate stage recorded where it ran (its metrics'
    `generated_by`): one phrase when they agree, each run's otherwise."""
    seen: dict[str | None, list[str]] = {}
    for f in sorted((root / layout.METRICS / "eval").glob("*.json")):
        seen.setdefault(json.loads(f.read_text()).get("generated_by") or None, []).append(f.stem)
    unrecorded = seen.pop(None, None)  # evaluations made before the record was kept (an early study piece)
    if not seen:
        return "generation not recorded"
    if len(seen) == 1 and not unrecorded:
        return f"generated by {next(iter(seen))}"
    text = "generated by " + "; ".join(f"{how} ({', '.join(runs)})" for how, runs in seen.items())
    return text + (f"; not recorded for {', '.join(unrecorded)}" if unrecorded else "")


def benchmark(p: Params, root: Path | None = None) -> str:
    """The report's first sentence: which benchmark every number comes from, and how far it compares with
    published ones."""
    name = p.evaluate.judge
    if JUDGES.has(name, "llm"):
        judge = (f"by `{name}` with StableToolBench's criteria text, {p.evaluate.n_judgings} run(s) at temperature "
                 f"{p.evaluate.judge_temperature:g} ({p.annotate.model} at `{p.annotate.base_url}`)")
    elif JUDGES.has(name, "needs_gold"):
        judge = f"against each task's gold facts (`{name}`)"
    else:
        judge = f"by `{name}` ({JUDGES.get(name).help})"
    if p.tasks.source != "stabletoolbench":
        return ("**Benchmark: ToolWorld** (`tasks.source: toolworld`): the embedded tool world's generated tasks, "
                f"tools answered by `env.kind` {p.env.kind}, answers judged {judge}. These numbers compare variants "
                "with each other, not with published StableToolBench pass rates.")
    miss = ("answers an error and counts as a failed call" if p.env.on_miss == "error" else
            f"is answered by a **simulator**, `{p.env.simulator.model}` at `{p.env.simulator.base_url}` asked as "
            "StableToolBench's server asks its LLM (pipeline/simulator.py)")
    tools = {"replay": f"replayed from the real responses recorded in `{p.env.replay_path}` (a call never recorded "
                       f"{miss})",
             "http": f"answered by the StableToolBench-style server at `{p.env.url}`"}.get(p.env.kind, p.env.kind)
    return ("**Benchmark: StableToolBench** (`tasks.source: stabletoolbench`): solvable queries of "
            f"{', '.join(p.tasks.stabletoolbench_subsets)}, split by `tasks.seed` {p.tasks.seed} into train, val and "
            f"test; tools {tools}; answers judged {judge}. Published StableToolBench figures are whole subsets judged by GPT-4-class "
            "models with the real tool server: these compare with them only as far as the test split, the judge "
            "and the tool answers do." + _answer_sources(root, p))


def _answer_sources(root: Path | None, p: Params) -> str:
    """How the replay answered the calls of each split: recorded, simulated, an error for a miss (the collect and
    evaluate metrics); '' when no metrics say."""
    if root is None or not ENVIRONMENTS.has(p.env.kind, "counts_misses"):
        return ""
    parts = []
    for split, files in (("train", sorted((root / layout.metrics_dir("collect")).glob("s*.json"))),
                         (p.evaluate.split, sorted((root / layout.metrics_dir("eval")).glob("*.json")))):
        counts, seen = {"recorded": 0, "simulated": 0, "miss_error": 0}, False
        for f in files:
            answers = json.loads(f.read_text(encoding="utf-8")).get("answers")
            seen |= isinstance(answers, dict)
            for k, v in (answers or {}).items():
                counts[k] = counts.get(k, 0) + v
        if seen:
            parts.append(f"{split}: {counts['recorded']} recorded, {counts['simulated']} simulated, "
                         f"{counts['miss_error']} errors from misses")
    return f" Tool calls answered ({'; '.join(parts)})." if parts else ""


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(",".join(str(c) for c in r) for r in [header, *rows]) + "\n")


def reward_audit_section(root: Path, params: Params) -> list[str]:
    """What each variant's reward pays for (the advantages stage's audit, first seed: it does not depend on it)."""
    from pipeline.audit_table import table_markdown

    audits = []
    for v in params.variants:
        f = root / layout.metrics_file("advantages", layout.run_name(v, params.train.seeds[0]))
        if f.exists():
            audit = json.loads(f.read_text()).get("audit")
            if audit and "skipped" not in audit:
                audits.append(audit)
    if not audits:
        return []
    a = audits[0]
    return ["", "## Reward audit (what each variant's reward pays for)", "",
            f"Scripted archetypes of {a['tasks']} train tasks, played through ToolWorld and labelled by the "
            f"{a['annotator']} annotator, scored by each variant's reward (docs/architecture.md, \"Reward audit\"). "
            "'X > direct' is the share of tasks where that archetype's return G_0 exceeds the direct solve's; "
            "'Finish preferred' the share where, right after the gold plan, Finish has the larger return than one "
            f"more call. With {a['max_steps']} actions, {a['tasks_without_slack']} tasks have no action to spare "
            "after their gold plan and Finish.", "", table_markdown(audits), ""]


def write_report(params: Params, root: Path) -> str:
    """Every file of the report stage (docs/architecture.md, "Evaluation") from the run's artifacts under `root`;
    the one-line summary."""
    e = params.evaluate
    results = load_results(root, params)
    train_logs = {}  # run name (<variant>/s<seed>) -> its log, every round
    for v in params.variants:
        for seed in params.train.seeds:
            f = root / layout.train_plot(v, seed)
            if f.exists():
                train_logs[layout.run_name(v, seed)] = json.loads(f.read_text())
    metrics, md = build(results, e.reference_model, list(params.variants), train_logs, e.split)
    md[2:2] = [benchmark(params, root), ""]
    at = md.index("## Figures")
    md[at:at] = (reward_audit_section(root, params)
                 + learning_signal(load_rounds(root, params), params.train.num_train_epochs)
                 + behaviour_change(root, params) + [""] + protocol(params, root))
    figures(metrics, e.reference_model, train_logs, root / layout.FIGURES)
    with atomic_path(root / layout.RESULTS_MD) as tmp:
        tmp.write_text("\n".join(md) + "\n", encoding="utf-8")
    write_json(root / layout.REPORT_METRICS, metrics)
    _write_csv(root / layout.PASS_RATE_CSV, ["run", "pass_rate", "ci_low", "ci_high"],
               [[k, *(m["pass_rate_ci"]["average"][c] for c in ("mean", "lo", "hi"))] for k, m in metrics.items()])
    ref = f"win_rate_vs_{e.reference_model}"
    _write_csv(root / layout.WIN_RATE_CSV, ["run", "win", "tie", "loss"],
               [[k, m[ref]["win"], m[ref]["tie"], m[ref]["loss"]] for k, m in metrics.items() if m[ref]])
    best = max(metrics.items(), key=lambda kv: kv[1]["pass_rate"]["average"]["mean"] or 0.0)
    return (f"report: {len(metrics)} model x strategy runs; best {best[0]} at "
            f"{best[1]['pass_rate']['average']['mean']:.1f} -> {layout.RESULTS_MD}")
