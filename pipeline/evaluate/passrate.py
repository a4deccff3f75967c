"""Pass rate (SoPR) as StableToolBench computes it, from judged answers.

A subset's pass rate is, for every judging run r, (#Solved + 0.5 * #Unsure) / #queries, then the mean and
the population standard deviation over runs. A group's figure (I1 = G1_instruction + G1_category + G1_tool,
I2 = G2_instruction + G2_category, I3 = G3_instruction) is the mean of its subsets' means, with the mean of
their standard deviations: that is how the StepTool README's "61.1 +- 0.7" is formed from the per-subset
files (checked against `../shared/external/steptool/pass_rate_results/steptool_cot`).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import SchemaError
from pipeline.formats.stabletoolbench import STATUS_VALUE, answer_status, load_json_records

# StableToolBench's test subsets and the paper's groups.
GROUPS = {
    "I1": ("G1_instruction", "G1_category", "G1_tool"),
    "I2": ("G2_instruction", "G2_category"),
    "I3": ("G3_instruction",),
}


@dataclass(frozen=True)
class Rate:
    """Pass rate in percent: mean and population std over judging runs (or over subsets for a group)."""

    mean: float
    std: float
    n_queries: int
    n_runs: int

    def as_dict(self) -> dict:
        return {"mean": round(self.mean, 4), "std": round(self.std, 4), "n_queries": self.n_queries, "n_runs": self.n_runs}


def run_scores(statuses: list[list[str]]) -> list[float]:
    """Per-run pass rate in percent.

    Args:
        statuses: ``[query][run]`` answer status names (Solved / Unsure / Unsolved); every query has the
            same number of runs.

    Returns:
        ``[run]`` 100 * (#Solved + 0.5 #Unsure) / #queries.
    """
    if not statuses:
        return []
    n_runs = len(statuses[0])
    if any(len(s) != n_runs for s in statuses):
        raise SchemaError("queries were judged a different number of times")
    return [100.0 * sum(STATUS_VALUE[s[r]] for s in statuses) / len(statuses) for r in range(n_runs)]


def rate_of(statuses: list[list[str]]) -> Rate:
    scores = run_scores(statuses)
    if not scores:
        return Rate(0.0, 0.0, 0, 0)
    return Rate(statistics.fmean(scores), statistics.pstdev(scores), len(statuses), len(scores))


def subset_statuses(path: str | Path) -> list[list[str]]:
    """``[query][run]`` statuses of one `pass_rate_results/<method>/<subset>.json` file."""
    records = load_json_records(path)
    out = []
    for qid, rec in records.items():
        judged = rec.get("is_solved") if isinstance(rec, dict) else None
        if not isinstance(judged, dict) or not judged:
            raise SchemaError(f"{path}: query {qid}: field 'is_solved' must be an object {{run: status}}")
        try:
            out.append([answer_status(judged[k]) for k in sorted(judged, key=lambda k: int(k) if str(k).isdigit() else k)])
        except SchemaError as e:
            raise SchemaError(f"{path}: query {qid}: field 'is_solved': {e}") from None
    return out


def group_rates(subsets: dict[str, Rate]) -> dict[str, Rate]:
    """I1/I2/I3 from the subsets present (a group with none of its subsets is left out)."""
    out = {}
    for group, names in GROUPS.items():
        have = [subsets[n] for n in names if n in subsets]
        if have:
            out[group] = Rate(statistics.fmean(r.mean for r in have), statistics.fmean(r.std for r in have),
                              sum(r.n_queries for r in have), min(r.n_runs for r in have))
    return out


def method_pass_rates(folder: str | Path) -> dict:
    """Every subset file of a `pass_rate_results/<method>` folder and the groups, as plain dicts."""
    folder = Path(folder)
    files = sorted(folder.glob("*.json"))
    if not files:
        raise SchemaError(f"{folder}: no <subset>.json files (expected a pass_rate_results/<method> folder)")
    subsets = {f.stem: rate_of(subset_statuses(f)) for f in files}
    return {"method": folder.name,
            "subsets": {k: v.as_dict() for k, v in subsets.items()},
            "groups": {k: v.as_dict() for k, v in group_rates(subsets).items()}}
