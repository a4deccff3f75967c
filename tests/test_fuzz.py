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


def _actions(value: str) -> list[tuple[str, str, int]]:
    """(format, action, levels around `value`) for each way to write arguments {"q": value}: a tool call's
    arguments object sits inside the call's own object."""
    args = '{"q": ' + value + "}"
    return [("compact", f"Thought: t\nAction: f\nAction Input: {args}", 1),
            ("chat_tools", f'<tool_call>{{"name": "f", "arguments": {args}}}</tool_call>', 2),
            ("chat_tools", f'<tool_call>{{"name": "f", "arguments": {json.dumps(args)}}}</tool_call>', 1)]


def test_deeply_nested_action_input_is_a_parse_failure_not_a_crash():
    """5,000 levels: json parses them on CPython 3.13 (only the C stack limits it there), where the scrub after it
    raised RecursionError (100,000, json's own RecursionError: tests/test_bad_inputs.py)."""
    for fmt, text, _ in _actions("[" * 5000 + "]" * 5000):
        parsed = parse_action(text, fmt)
        assert (parsed.parse_ok, parsed.error) == (False, "malformed JSON: nested too deeply"), (fmt, parsed)


def test_nesting_is_read_up_to_max_depth_on_every_python():
    """The cap is ours, not the interpreter's: the same action parses, or does not, on every version."""
    from pipeline import untrusted

    for i, (fmt, _, around) in enumerate(_actions("[]")):
        inner = untrusted.MAX_DEPTH - around
        at_cap = _actions("[" * inner + "]" * inner)[i][1]
        past_cap = _actions("[" * (inner + 1) + "]" * (inner + 1))[i][1]
        assert parse_action(at_cap, fmt).parse_ok, (fmt, around)
        assert parse_action(past_cap, fmt).error == "malformed JSON: nested too deeply", (fmt, around)
    deepest = "[" * untrusted.MAX_DEPTH + "]" * untrusted.MAX_DEPTH
    assert untrusted.loads(deepest) == json.loads(deepest)
    with pytest.raises(json.JSONDecodeError, match="nested too deeply"):
        untrusted.loads("[" + deepest + "]")
    with pytest.raises(json.JSONDecodeError, match="nested too deeply"):
        untrusted.scrub({"a": json.loads("[" + deepest + "]")})
    import pickle  # raised in a worker process, it must come back as itself

    again = pickle.loads(pickle.dumps(untrusted.Unreadable(untrusted.TOO_DEEP)))
    assert isinstance(again, untrusted.Unreadable) and again.msg == "nested too deeply"


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


# ---- judge answers of any shape, writes over any kind of path ---------------------------------------------------

json_bodies = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["choices", "message", "tool_calls", "function", "name", "arguments", "usage", "x"]),
        inner, max_size=3), max_leaves=12)
arguments_text = st.builds(json.dumps, st.dictionaries(
    st.sampled_from(["succeed_tool_calling", "contribution_to_final_answer", "final_answer_status", "answer_status"]),
    json_values, max_size=3))


@settings(max_examples=300, deadline=None)
@given(body=json_bodies | st.builds(
    lambda name, args, shape: shape(name, args),
    st.sampled_from(["evaluate_process_reward", "check_answer_status", "other"]), arguments_text | json_values,
    st.sampled_from([lambda n, a: {"choices": [{"message": {"tool_calls": [{"function": {"name": n, "arguments": a}}]}}]},
                     lambda n, a: {"choices": [{"message": {"tool_calls": [{"function": {"name": n}}], "x": a}}]},
                     lambda n, a: {"choices": [{"message": {"tool_calls": {"function": {"name": n, "arguments": a}}}}]}])))
def test_any_judge_answer_is_valid_or_invalid_never_a_crash(body):
    """Every shape an endpoint could send: parse_answer and parse_status either return a checked value or raise
    InvalidAnswer (a failed attempt, retried, never cached), and usage never counts a negative amount."""
    from pipeline.annotate.llm_judge import InvalidAnswer, parse_answer
    from pipeline.annotate.pricing import usage_tokens
    from pipeline.evaluate.llm_pass_rate import parse_status

    try:
        sc, con, status = parse_answer(body, 1)
        assert sc[0] in (0, 1) and 0 <= con[0] <= 5 and status in ("Solved", "Unsure", "Unsolved")
    except InvalidAnswer:
        pass
    try:
        assert parse_status(body, "check_answer_status")[0] in ("Solved", "Unsure", "Unsolved")
    except InvalidAnswer:
        pass
    assert min(usage_tokens(body)) >= 0


@settings(max_examples=60, deadline=None)
@given(there=st.sampled_from(["absent", "file", "folder", "link-to-file", "link-to-folder"]),
       writes=st.sampled_from(["file", "folder"]))
def test_an_atomic_write_replaces_only_its_own_kind(tmp_path_factory, there, writes):
    """Over every kind of existing path: the write lands when the kinds agree (or nothing is there), and is
    refused otherwise with the path exactly as it was; no temporary is left beside it."""
    from pipeline.errors import SteptoolError
    from pipeline.fsutil import atomic_path

    d = tmp_path_factory.mktemp("kinds")
    target, other = d / "out", d / "other"
    if there in ("file", "link-to-file"):
        (other if there.startswith("link") else target).write_text("old")
    if there in ("folder", "link-to-folder"):
        (other if there.startswith("link") else target).mkdir()
        ((other if there.startswith("link") else target) / "canary").write_text("old")
    if there.startswith("link"):
        target.symlink_to(other)
    kind_there = {"absent": None, "file": "file", "link-to-file": "file"}.get(there, "folder")
    try:
        with atomic_path(target) as tmp:
            if writes == "file":
                tmp.write_text("new")
            else:
                tmp.mkdir()
                (tmp / "canary").write_text("new")
        landed = True
    except SteptoolError as e:
        assert "refusing to replace it" in str(e)
        landed = False
    assert landed == (kind_there in (None, writes) and there != "link-to-folder")  # a user's link stays a link
    if landed:
        assert (target.read_text() if writes == "file" else (target / "canary").read_text()) == "new"
    else:
        source = other if there.startswith("link") else target
        assert (source.read_text() if kind_there == "file" else (source / "canary").read_text()) == "old"
    assert sorted(p.name for p in d.iterdir() if p.name.startswith(".")) == []
