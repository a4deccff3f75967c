"""StableToolBench's function names: what the agent sees for (tool, api), and back.

Mirrors `standardize` / `change_name` of StableToolBench so that names match the real benchmark's
letter for letter (its regex also keeps CJK characters, underscores and, by a quirk, '^').
"""
from __future__ import annotations

import re

_NOT_KEPT = re.compile(r"[^\u4e00-\u9fa5^a-zA-Z0-9_]")
_RUNS = re.compile(r"_+")
_RESERVED = frozenset({"from", "class", "return", "false", "true", "id", "and"})


def standardize(name: str) -> str:
    """Lowercase; every run of other characters becomes one '_'; strip '_'; 'get_' before a leading digit.

    >>> standardize("Get 5-Day Forecast!")
    'get_5_day_forecast'
    >>> standardize("3D Models")
    'get_3d_models'
    """
    s = _RUNS.sub("_", _NOT_KEPT.sub("_", name)).lower().strip("_")
    if s and s[0].isdigit():
        s = "get_" + s
    return s


def change_name(api: str) -> str:
    """Python keywords and a few reserved words get 'is_' before them ('from' -> 'is_from')."""
    return "is_" + api if api in _RESERVED else api


def function_name(tool_name: str, api_name: str) -> str:
    """The function name an agent calls: `<api>_for_<tool>`.

    Not cut to 64 characters: the real StableToolBench trajectories (`tool_names` in
    pass_rate_results) carry names of up to 86 characters, uncut, and we match them.
    """
    return f"{change_name(standardize(api_name))}_for_{standardize(tool_name)}"


def category_dir(category: str) -> str:
    """StableToolBench's folder name of a category ('Real Estate' -> 'Real_Estate')."""
    s = category.replace(" ", "_").replace(",", "_").replace("/", "_")
    while "__" in s:
        s = s.replace("__", "_")
    return s
