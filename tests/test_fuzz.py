"""Property-based: arbitrary JSON thrown at every ToolWorld API, and arbitrary text at the action parsers,
never raises (docs/architecture.md, "Tests"). Bounded examples, so it runs in CI."""
from __future__ import annotations

import json
import math

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pipeline.agent.parse import parse_action  # noqa: E402
from pipeline.toolworld.world import ToolWorld  # noqa: E402

WORLD = ToolWorld(1234, 12, rate_limit_prob=0.0)
APIS = [a for tool in WORLD.tools for a in WORLD.tool_apis(tool)]
PARAMS = sorted({p["name"] for a in APIS for p in a.required + a.optional})

# values a model could write for an argument: the edge numbers that crashed ToolWorld before, and any JSON
numbers = st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e400, -1e400, 0, -1, 1e308, 2 ** 80,
                           0.5, 1e-300, 5, 51])
numeric_strings = st.sampled_from(["NaN", "inf", "-inf", "1e400", "1,000", "0x10", "", " ", "5", "-0", "1e-320"])
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
                           | numbers | numeric_strings,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                      max_size=3), max_leaves=8)
arguments = st.dictionaries(st.sampled_from(PARAMS) | st.text(max_size=8), json_values, max_size=4)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(api=st.sampled_from(APIS), args=arguments)
def test_every_api_answers_any_arguments_without_raising(api, args):
    out = WORLD.call(api.category, api.tool_name, api.api_name, args)
    assert set(out) == {"error", "response"}
    json.dumps(out, allow_nan=False)  # what goes into steps.parquet is valid JSON: no NaN, no inf


@settings(max_examples=200, deadline=None)
@given(api=st.sampled_from(APIS), text=st.text(max_size=200))
def test_every_api_answers_any_argument_text_without_raising(api, text):
    out = WORLD.call(api.category, api.tool_name, api.api_name, text)
    assert set(out) == {"error", "response"}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "NaN", "inf", "1e400", 1e400, 2 ** 80])
def test_non_finite_or_huge_numbers_get_a_400_answer(value):
    limit_api = next(a for a in APIS if a.kind == "search")
    out = WORLD.call(limit_api.category, limit_api.tool_name, limit_api.api_name, {"query": "a", "limit": value})
    assert out["error"] == "" and out["response"]["status"] == 400
    assert "finite number" in out["response"]["message"]


def test_mortgage_edges_answer_400_or_a_finite_payment():
    api = next(a for a in APIS if a.kind == "mortgage_payment")
    for years, rate in [(1e-300, 5), (0.01, 5), (100, 1e-300), (1 / 12, 0), (100, 50)]:
        out = WORLD.call(api.category, api.tool_name, api.api_name,
                         {"principal": 1e12, "annual_rate": rate, "years": years})["response"]
        assert out.get("status") == 400 or math.isfinite(out["monthly_payment"]), (years, rate, out)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=400) | st.builds(lambda a, b: f"Thought: {a}\nAction: {b}\nAction Input: {a}",
                                               st.text(max_size=40), st.text(max_size=40)))
def test_parsers_never_raise(text):
    for fmt in ("compact", "toolllama", "chat_tools"):
        parse_action(text, fmt)


def test_deeply_nested_action_input_is_a_parse_failure_not_a_crash():
    deep = "[" * 5000 + "]" * 5000
    for fmt, text in (("compact", f"Thought: t\nAction: f\nAction Input: {deep}"),
                      ("chat_tools", f'<tool_call>{{"name": "f", "arguments": {deep}}}</tool_call>')):
        parse_action(text, fmt)  # must return, whatever it says


# ---- text that is not UTF-8-encodable: lone surrogates through parser, environment and server ----------------

surrogate_text = st.text(st.characters(categories=["Cs", "Ll", "Nd", "Zs"]), min_size=1, max_size=12)


def _utf8(obj) -> None:
    """What a tokenizer, Parquet and an HTTP answer need: the object's text encodes as UTF-8."""
    json.dumps(obj, ensure_ascii=False).encode("utf-8")


@settings(max_examples=150, deadline=None)
@given(api=st.sampled_from(APIS), key=st.sampled_from(PARAMS), value=surrogate_text)
def test_lone_surrogates_in_arguments_come_back_as_replacement_characters(api, key, value):
    """`{"q": "\\ud800abc"}` is valid JSON whose string no UTF-8 writer accepts: the parsers and ToolWorld read it
    with U+FFFD in the surrogate's place (pipeline/untrusted.py), so the observation and the arguments can be
    tokenized and written."""
    text = json.dumps({key: value})  # ensure_ascii: the surrogate travels as a \\udXXX escape, as a model writes it
    for fmt, action in (("react", f"Thought: go\nAction: {api.function_name}\nAction Input: {text}"),
                        ("chat_tools", f'<tool_call>{{"name": "{api.function_name}", "arguments": {text}}}</tool_call>')):
        parsed = parse_action(action, fmt)
        parsed.arguments.encode("utf-8")
        out = WORLD.call(api.category, api.tool_name, api.api_name, parsed.arguments)
        _utf8(out)


def test_a_lone_surrogate_is_replaced_and_nothing_else_changes():
    from pipeline import untrusted

    clean = {"a": ["x", 1, {"b": "é✓"}], "c": None}
    assert untrusted.scrub(clean) == clean
    assert untrusted.loads('{"q\\udc00": ["\\ud800abc", "ok \\ud83d\\ude00"]}') == {"q\ufffd": ["\ufffdabc", "ok 😀"]}


def test_serve_tools_answers_a_body_with_a_lone_surrogate():
    """A request whose JSON holds a lone surrogate gets a JSON answer (before: a traceback and a dropped
    connection)."""
    import urllib.request

    from pipeline.toolworld.server import serve_in_thread

    server, url = serve_in_thread(WORLD)
    try:
        api = next(a for a in APIS if a.kind == "search")  # it echoes the query in its answer
        body = json.dumps({"category": api.category, "tool_name": api.tool_name, "api_name": api.api_name,
                           "tool_input": json.dumps({"query": "\ud800abc"}), "strip": "", "toolbench_key": ""})
        req = urllib.request.Request(url, data=body.encode("ascii"), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            out = json.loads(resp.read().decode("utf-8"))
        assert out["response"]["query"] == "\ufffdabc"
    finally:
        server.shutdown()
        server.server_close()
