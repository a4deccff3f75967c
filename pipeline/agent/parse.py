"""Parse a model's action into a call: ReAct (``Thought: ... Action: ... Action Input: {...}``) or a
chat-template tool call (``thought <tool_call>{"name": ..., "arguments": {...}}</tool_call>``).

Model output is untrusted text: JSON goes through `json`, Python literals through
`ast.literal_eval`, nothing is executed. A bad action is never an exception: it comes back with
``parse_ok=False`` and the reason, and keeps what could be read (the name, the raw arguments) so
that the environment can answer it as a real API would ("No such function name", "Tool input
parse error...").
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass

from pipeline import untrusted

_ACTION = re.compile(r"(?:^|\n)\s*Action\s*:[ \t]*(.*)")
_INPUT = re.compile(r"(?:^|\n)\s*Action Input\s*:[ \t]*", re.S)
_THOUGHT = re.compile(r"^\s*Thought\s*:\s*", re.S)


def _malformed(e: json.JSONDecodeError) -> str:
    """The reason of a JSON that does not decode; `untrusted`'s own errors (too deep, a number too long) have no
    position."""
    return f"malformed JSON: {e.msg}" + ("" if isinstance(e, untrusted.Unreadable) else f" at char {e.pos}")


@dataclass(frozen=True)
class ParsedAction:
    thought: str
    api_name: str  # "" when no Action line was found
    arguments: str  # the Action Input text as written ("" when absent)
    parse_ok: bool
    error: str = ""  # why parse_ok is False: missing Action | missing Action Input | malformed JSON | unknown API | text after the call


def parse_react(text: str, known_functions: set[str] | None = None) -> ParsedAction:
    """Split a ReAct action; check the name against `known_functions` (with Finish) when given."""
    m_action = _ACTION.search(text)
    if m_action is None:
        return ParsedAction(_THOUGHT.sub("", text).strip(), "", "", False, "missing Action")
    thought = _THOUGHT.sub("", text[: m_action.start()]).strip()
    name = m_action.group(1).strip()
    rest = text[m_action.end():]
    m_input = _INPUT.search(rest)
    if m_input is None:
        return ParsedAction(thought, name, "", False, "missing Action Input")
    raw = rest[m_input.end():].strip()
    if known_functions is not None and name not in known_functions and name != "Finish":
        return ParsedAction(thought, name, raw, False, f"unknown API: {name}")
    if raw == "":
        return ParsedAction(thought, name, "{}", True)
    try:
        obj, end = untrusted.raw_decode(raw, strict=False)
    except json.JSONDecodeError as e:
        return ParsedAction(thought, name, raw, False, _malformed(e))
    if not isinstance(obj, dict):
        return ParsedAction(thought, name, raw, False, f"malformed JSON: arguments must be an object, got {type(obj).__name__}")
    tail = raw[end:].strip()
    if tail:
        return ParsedAction(thought, name, raw[:end], False, f"text after the call: {tail[:60]!r}")
    return ParsedAction(thought, name, raw, True)


_TOOL_CALL = re.compile(r"<tool_call>\s*")
_TOOL_CALL_END = re.compile(r"\s*</tool_call>")


def parse_tool_call(text: str, known_functions: set[str] | None = None) -> ParsedAction:
    """Split a `<tool_call>` action (Qwen2/Hermes convention). `arguments` may be an object or, as some
    servers write it, a JSON string holding one; it comes back as JSON text. A missing `</tool_call>` is
    forgiven when the JSON is complete (generation often stops right after it)."""
    m = _TOOL_CALL.search(text)
    if m is None:
        return ParsedAction(text.strip(), "", "", False, "missing tool call")
    thought = text[: m.start()].strip()
    body = text[m.end():]
    try:  # scrubbed: re-dumped below, and no lone surrogate may reach the tokenizer or a file
        obj, end = untrusted.raw_decode(body, strict=False)
    except json.JSONDecodeError as e:
        return ParsedAction(thought, "", body.strip(), False, _malformed(e))
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return ParsedAction(thought, "", body[:end], False, 'malformed JSON: the call must be {"name": ..., "arguments": {...}}')
    name = obj["name"].strip()
    args = obj.get("arguments", {})
    if isinstance(args, str):
        try:
            args = untrusted.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            return ParsedAction(thought, name, args, False, _malformed(e))
    raw = json.dumps(args, ensure_ascii=False)
    if known_functions is not None and name not in known_functions and name != "Finish":
        return ParsedAction(thought, name, raw, False, f"unknown API: {name}")
    if not isinstance(args, dict):
        return ParsedAction(thought, name, raw, False, f"malformed JSON: arguments must be an object, got {type(args).__name__}")
    tail = body[end:]
    m_end = _TOOL_CALL_END.match(tail)
    tail = (tail[m_end.end():] if m_end else tail).strip()
    if tail:
        return ParsedAction(thought, name, raw, False, f"text after the call: {tail[:60]!r}")
    return ParsedAction(thought, name, raw, True)


def parse_action(text: str, fmt: str, known_functions: set[str] | None = None) -> ParsedAction:
    """The parser of a prompt format (see `pipeline.agent.prompts`)."""
    return parse_tool_call(text, known_functions) if fmt == "chat_tools" else parse_react(text, known_functions)


def functions_from_system_prompt(system: str) -> list[dict]:
    """The function list that ToolBench's system prompt embeds as a Python literal (``[{'name': ...}]``)."""
    marker = "Specifically, you have access to the following APIs:"
    i = system.find(marker)
    if i < 0:
        raise ValueError("system prompt has no 'Specifically, you have access to the following APIs:' list")
    literal = system[i + len(marker):].strip()
    try:
        value = ast.literal_eval(literal)
    except (ValueError, SyntaxError) as e:
        raise ValueError(f"the function list is not a Python literal: {e}") from None
    if not isinstance(value, list) or not all(isinstance(f, dict) and "name" in f for f in value):
        raise ValueError("the function list is not a list of {'name': ...} dicts")
    return value
