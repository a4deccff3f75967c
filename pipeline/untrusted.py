"""Untrusted text at the boundaries: model output, tool arguments, tool and judge responses, request bodies.

JSON lets a string hold a lone UTF-16 surrogate (`"\\ud800abc"`), which Python keeps as is but which no UTF-8
writer accepts: the tokenizer, Parquet, SQLite and an HTTP answer all raise on it, so one such character in a
model's Action Input used to crash collect and drop a server's connection. Everything decoded from untrusted
JSON goes through `loads` (or `scrub` for an object that arrived parsed): a lone surrogate becomes U+FFFD, the
replacement character, as a UTF-8 decoder with errors="replace" would make of it; nothing else changes.
"""
from __future__ import annotations

import json
import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def scrub(obj: Any) -> Any:
    """`obj` (JSON-shaped: dicts, lists, strings, numbers) with every lone surrogate in its strings, keys
    included, replaced by U+FFFD. Objects without one come back as they are (the same object)."""
    if isinstance(obj, str):
        return _SURROGATE.sub(REPLACEMENT, obj) if _SURROGATE.search(obj) else obj
    if isinstance(obj, dict):
        return {scrub(k): scrub(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    return obj


def loads(text: str | bytes, **kw) -> Any:
    """`json.loads(text, **kw)` with lone surrogates replaced (`scrub`). Every way untrusted JSON can fail is a
    json.JSONDecodeError, which callers already handle: also a number of more than 4,300 digits (Python's int
    conversion limit raises a plain ValueError) and nesting deeper than the interpreter's stack (RecursionError)."""
    try:
        return scrub(json.loads(text, **kw))
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None
    except ValueError as e:  # the integer digit limit
        raise json.JSONDecodeError(f"a number too long to read ({str(e)[:40]}...)", "", 0) from None
