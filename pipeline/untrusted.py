"""Untrusted text at the boundaries: model output, tool arguments, tool and judge responses, request bodies.

JSON lets a string hold a lone UTF-16 surrogate (`"\\ud800abc"`), which Python keeps as is but which no UTF-8 writer
accepts: the tokenizer, Parquet, SQLite and an HTTP answer all raise on it, so one such character in a model's
Action Input used to crash collect and drop a server's connection. Everything decoded from untrusted JSON goes
through `loads` or `raw_decode` (or `scrub` for an object that arrived parsed): a lone surrogate becomes U+FFFD, the
replacement character, as a UTF-8 decoder with errors="replace" would make of it; nothing else changes.

Nesting is capped at `MAX_DEPTH` on every Python. json's C parser stops at the interpreter's recursion limit on
CPython 3.10-3.12 (about 1,000 levels, a RecursionError) but only at the C stack on 3.13, where it returns 5,000
nested lists, and the first Python-level walk over them (`scrub` itself) then raised RecursionError out of the
agent's parser. Deeper than `MAX_DEPTH` is a decode error here, so a model's action parses the same on every
version; no tool argument or answer comes near it.
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"
MAX_DEPTH = 200  # lists and objects inside each other; the module docstring says why there is a cap
TOO_DEEP = "nested too deeply"


class Unreadable(json.JSONDecodeError):
    """JSON refused as a whole, with no position to point at: nested too deeply, or a number too long to read."""

    def __init__(self, msg: str, doc: str = "", pos: int = 0):  # JSONDecodeError pickles as (msg, doc, pos)
        super().__init__(msg, doc, pos)


def scrub(obj: Any, _depth: int = 0) -> Any:
    """`obj` (JSON-shaped: dicts, lists, strings, numbers) with every lone surrogate in its strings, keys
    included, replaced by U+FFFD; a string without one comes back as it is (the same object). Raises Unreadable
    (a json.JSONDecodeError) where lists and objects nest more than MAX_DEPTH levels."""
    if isinstance(obj, str):
        return _SURROGATE.sub(REPLACEMENT, obj) if _SURROGATE.search(obj) else obj
    if isinstance(obj, (dict, list)) and _depth >= MAX_DEPTH:
        raise Unreadable(TOO_DEEP)
    if isinstance(obj, dict):
        return {scrub(k): scrub(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub(v, _depth + 1) for v in obj]
    return obj


def loads(text: str | bytes, **kw) -> Any:
    """`json.loads(text, **kw)` with lone surrogates replaced (`scrub`). Every way untrusted JSON can fail is a
    json.JSONDecodeError, which callers already handle: also a number of more than 4,300 digits (Python's int
    conversion limit raises a plain ValueError) and nesting deeper than MAX_DEPTH or the interpreter's stack
    (RecursionError), both `Unreadable`."""
    with _decode_errors():
        return scrub(json.loads(text, **kw))


def raw_decode(text: str, strict: bool = True) -> tuple[Any, int]:
    """(value, end): `json.JSONDecoder(strict=strict).raw_decode(text)` (the JSON value at the start of `text` and
    where it ends), with `loads`' guarantees: lone surrogates replaced, every failure a json.JSONDecodeError."""
    with _decode_errors():
        value, end = json.JSONDecoder(strict=strict).raw_decode(text)
        return scrub(value), end


@contextmanager
def _decode_errors():
    try:
        yield
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise Unreadable(TOO_DEEP) from None
    except ValueError:  # the integer digit limit
        raise Unreadable("a number too long to read") from None
