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
