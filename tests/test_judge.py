"""The rule judge's fact matching, with hand-picked cases."""
from __future__ import annotations

import pytest

from pipeline.toolworld.fact_judge import SOLVED, UNSOLVED, UNSURE, fact_stated, rule_judge


@pytest.mark.parametrize("fact, answer, expected", [
    ("1994", "It came out in 1994.", True),
    ("1994", "It came out in 1995.", False),
    ("1994", "It came out in 11994.", False),
    ("34673", "They employ 34,673 people.", True),
    ("7.4", "Rated 7.40 out of 10", True),
    ("7.4", "Rated 7.5 out of 10", False),
    ("673.74", "That is 673.74 NOK", True),
    ("673.74", "That is about 674 NOK", False),
    ("-3.5", "It is -3.5 degrees", True),
    ("-3.5", "It is 3.5 degrees", False),
    ("Rosa Okafor", "The latest review is by rosa okafor.", True),
    ("Rosa Okafor", "The latest review is by Rosa Okaforth.", False),
    ("08:30", "It opens at 8:30 am", True),
    ("08:30", "It opens at 08:30", True),
    ("08:30", "It opens at 18:30", False),
    ("+1-555-662-2504", "Call +1-555-662-2504.", True),
    ("2013-05-22", "Launched on 2013-05-22", True),
    ("2013-05-22", "Launched in 2013", False),
])
def test_fact_stated(fact, answer, expected):
    assert fact_stated(fact, answer) is expected


def test_all_some_none():
    facts = ["Rosa Okafor", "1994"]
    assert rule_judge(facts, "Rosa Okafor, 1994", "give_answer") == SOLVED
    assert rule_judge(facts, "Rosa Okafor, 1993", "give_answer") == UNSURE
    assert rule_judge(facts, "nobody, never", "give_answer") == UNSOLVED


@pytest.mark.parametrize("fact, answer, expected", [
    ("42", "The answer is 42.", True),
    ("42", "The answer is 42.4", False),  # an integer fact allows no rounding (a tolerance of 0.5 would take it)
    ("42", "The answer is 41.6", False),
    ("3.5", "about 3.54", True),  # one decimal: within half its last digit
    ("3.5", "about 3.56", False),
    ("1234.50", "1,234.5 in total", True),
    ("Paris", "PARIS, France", True),  # text case-insensitively, as whole words
    ("Par", "Paris", False),
])
def test_fact_stated_tolerances(fact, answer, expected):
    assert fact_stated(fact, answer) is expected


def test_rule_judge_branches_and_scores():
    """Each branch of rule_judge and pass_score by hand: Unsure is worth half (StableToolBench's pass rate), a
    task without gold facts cannot be Solved by any answer (nothing shows it right), and no answer is Unsolved."""
    from pipeline.toolworld.fact_judge import pass_score

    assert [pass_score(s) for s in (SOLVED, UNSURE, UNSOLVED, "garbage")] == [1.0, 0.5, 0.0, 0.0]
    assert rule_judge([], "Anything at all", "give_answer") == UNSOLVED
    assert rule_judge(["42"], "42", "give_up") == UNSOLVED
    assert rule_judge(["42"], "   ", "give_answer") == UNSOLVED
    assert rule_judge(["42"], None, "give_answer") == UNSOLVED
    assert rule_judge(["42", "Paris"], "42 and Lyon", "give_answer") == UNSURE


@pytest.mark.parametrize("fact, answer, expected", [
    ("42", "about 41.96", False),      # an integer fact is stated exactly, not to one decimal
    ("3.14", "it is 3.1445", True),    # half a unit of the last decimal: 0.0045 <= 0.005
    ("3.14", "it is 3.145", True),     # the edge itself (0.005, up to float rounding) is still stated
    ("3.14", "it is 3.1452", False),
    ("cat", "the bobcat", False),      # a word inside a longer word is not the fact
    ("cat", "a cat.", True),
])
def test_fact_stated_at_the_tolerance_edges_and_word_boundaries(fact, answer, expected):
    assert fact_stated(fact, answer) is expected
