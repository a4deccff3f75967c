"""The reward audit's numbers (pipeline/reward_audit.py) as text: one sentence for a stage's summary line and a
Markdown table for the report and `steptool audit-rewards`. Apart from the audit itself so that the report
stage, which only prints them, does not import the environment and annotators the audit runs."""
from __future__ import annotations


def _pct(summary: dict, key: str) -> str:
    return "n/a" if summary.get(key) is None else f"{100 * summary[key]:.0f}%"


def one_line(summary: dict) -> str:
    """The audit in one sentence, for the stage's summary line."""
    return (f"padding or no answer out-earns the direct solve on {_pct(summary, 'padded_beats_direct')} of "
            f"{summary.get('tasks')} train tasks, Finish beats one more call after the gold plan on "
            f"{_pct(summary, 'finish_preferred')}"
            + ("" if summary.get("gather_beats_answer") is None else
               f", a gold call earns more than the correct answer on {_pct(summary, 'gather_beats_answer')}"))


def table_markdown(summaries: list[dict]) -> str:
    """The audit as a Markdown table, one row per reward setting."""
    head = ("| shaping | γ | α | step_scale | call_cost | variant | redundant > direct | irrelevant > direct | "
            "no answer > direct | Finish preferred after the plan | direct beats all | G direct / redundant / "
            "no answer |")
    lines = [head, "|" + "---|" * 12]
    for s in summaries:
        if "skipped" in s:
            continue
        m = s.get("mean_return", {})
        pct = lambda k: _pct(s, k)  # noqa: E731
        lines.append(f"| {s['shaping']} | {s['gamma']:g} | {s['alpha']:g} | {s['step_scale']:g} | {s['call_cost']:g} "
                     f"| {s['variant']} | {pct('beats_redundant')} | {pct('beats_irrelevant')} | "
                     f"{pct('beats_no_answer')} | {pct('finish_preferred')} | {pct('direct_beats_all')} | "
                     f"{m.get('direct')} / {m.get('redundant')} / {m.get('no_answer')} |")
    return "\n".join(lines)

