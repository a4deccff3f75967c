"""The rule judge of ToolWorld: compares a final answer with the task's gold facts.

All facts stated -> Solved; some -> Unsure; none, no Finish, an empty answer or a give-up -> Unsolved.
Numbers match by value (``1,234.5`` states ``1234.50``), text by whole words, case-insensitively.
"""
from __future__ import annotations

import re

SOLVED, UNSURE, UNSOLVED = "Solved", "Unsure", "Unsolved"
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")
_NUMBERS_IN_TEXT = re.compile(r"(?<![\w.])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.])-?\d+(?:\.\d+)?")
_TIME = re.compile(r"^0(\d):(\d\d)$")


def _numbers(text: str) -> list[float]:
    return [float(m.replace(",", "")) for m in _NUMBERS_IN_TEXT.findall(text)]


def fact_stated(fact: str, answer: str) -> bool:
    """Whether `answer` states `fact`."""
    fact = fact.strip()
    if _NUMBER.match(fact):
        value = float(fact)
        decimals = len(fact.split(".")[1]) if "." in fact else 0
        tol = 0.5 * 10 ** -decimals + 1e-9 if decimals else 1e-9
        return any(abs(n - value) <= tol for n in _numbers(answer))
    forms = {fact}
    m = _TIME.match(fact)
    if m:  # 08:30 is also written 8:30
        forms.add(f"{m.group(1)}:{m.group(2)}")
    low = " ".join(answer.casefold().split())
    return any(re.search(r"(?<![a-z0-9])" + re.escape(" ".join(f.casefold().split())) + r"(?![a-z0-9])", low)
               for f in forms)


def rule_judge(facts: list[str], final_answer: str | None, finish_type: str) -> str:
    """Solved / Unsure / Unsolved for one answer (see module doc)."""
    if finish_type != "give_answer" or not final_answer or not final_answer.strip():
        return UNSOLVED
    stated = sum(fact_stated(f, final_answer) for f in facts)
    if facts and stated == len(facts):
        return SOLVED
    return UNSURE if stated else UNSOLVED


def pass_score(status: str) -> float:
    """Solved = 1, Unsure = 0.5, Unsolved = 0 (StableToolBench's pass rate)."""
    return {SOLVED: 1.0, UNSURE: 0.5}.get(status, 0.0)
