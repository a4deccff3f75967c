"""SuccCalling (paper §4.1): did a step's call execute correctly? A rule, no judge needed.

The step failed (0) when the action could not be parsed, named an unknown API, or the tool server's
envelope ``{"error": ..., "response": ...}`` says so: a non-empty `error`, an error-like status or
message in `response`, or an empty result. Otherwise it succeeded (1). Finish is not a call: None.

Real StableToolBench responses are messy (python-literal dicts inside JSON strings, HTML error pages,
envelopes cut at 1024 characters), so the response is read leniently: JSON, then a Python literal via
`ast.literal_eval` (never `eval`), then plain text. Keyword checks only apply to short texts and
message fields, so a large payload that merely mentions "error" still counts as a result.
"""
from __future__ import annotations

import ast
import json
import re
from typing import Any

SHORT = 300  # a text longer than this is data, not an error message
_ENVELOPE = re.compile(r'^\s*\{\s*"error"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"response"\s*:\s*(.*)$', re.S)
_CUT_ERROR = re.compile(r'^\s*\{\s*"error"\s*:\s*"((?:[^"\\]|\\.)+)$', re.S)
_ERROR_WORDS = re.compile(  # letters-only boundaries: DEPRECATED_ENDPOINT and INVALID_KEY count
    r"(?<![a-z])(error|errors|invalid|not found|not exist|does not exist|doesn't exist|forbidden|unauthori[sz]ed|"
    r"not subscribed|missing|required|deprecated|exceeded|rate limit|too many requests|bad request|"
    r"bad gateway|service unavailable|timed? ?out|failed|failure|no such|unable to|not allowed|denied|"
    r"could not be found|cannot|can't|blocked|expired|disabled|not available|unavailable)(?![a-z])", re.I)
_STATUS_TEXT = re.compile(r"^\s*(?:<[^>]*>\s*)*(?:HTTP/\S+\s+)?([45]\d\d)\b")
_STATUS_KEYS = ("status", "status_code", "statusCode", "code", "http_code", "httpStatus")
_MESSAGE_KEYS = ("message", "msg", "detail", "details", "error_message", "errorMessage", "description", "info")


def read_envelope(text: str) -> tuple[str, Any, bool]:
    """(error, response, ok): the envelope's parts; `ok` False when the text is not an envelope at all."""
    if text is None:
        return "", None, False
    try:
        env = json.loads(text)
    except (json.JSONDecodeError, TypeError, RecursionError):
        env = None
    if isinstance(env, dict) and ("error" in env or "response" in env):
        return str(env.get("error") or ""), env.get("response"), True
    m = _ENVELOPE.match(text)  # an envelope cut short (max_observation_length) is no longer JSON
    if m:
        try:
            err = json.loads(f'"{m.group(1)}"')
        except json.JSONDecodeError:
            err = m.group(1)
        body = m.group(2).strip()
        # a Python-literal response (not JSON) ends with the envelope's own brace: only that one goes
        return err, _lenient(body[:-1] if body.endswith("}") else body), True
    m = _CUT_ERROR.match(text)  # cut inside a long error string
    if m:
        return m.group(1), None, True
    return "", text, False


def _lenient(value: Any) -> Any:
    """A string that holds a JSON or Python container or string becomes that value; anything else stays as is (a
    bare word such as null, None, true or False stays text: `_is_empty` reads null and None as empty, and true or
    false, text or not, is an answer)."""
    if not isinstance(value, str):
        return value
    s = value.strip()
    if s[:1] in "{[\"'":
        for load in (json.loads, ast.literal_eval):
            try:
                return load(s)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
    return value


def _is_empty(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, str):
        return v.strip() in ("", "[]", "{}", "null", "None", '""', "''")
    if isinstance(v, (list, tuple, dict)) and not v:
        return True
    if isinstance(v, dict):  # {"results": [], "page": 1}: containers present, all of them empty
        containers = [x for x in v.values() if isinstance(x, (list, dict))]
        return bool(containers) and all(not x for x in containers) and not any(
            isinstance(x, str) and len(x) > 40 for x in v.values())
    return False


def _error_status(v: Any) -> int | None:
    for k in _STATUS_KEYS:
        s = v.get(k)
        if isinstance(s, str) and s.isdigit():
            s = int(s)
        if isinstance(s, int) and not isinstance(s, bool) and 400 <= s < 600:
            return s
    return None


def response_failure(response: Any) -> str:
    """Why a response is a failure ('' when it is a result)."""
    v = _lenient(response)
    if _is_empty(v):
        return "empty result"
    if isinstance(v, dict):
        status = _error_status(v)
        if status is not None:
            return f"status {status}"
        for k in ("error", "errors", "err"):
            e = v.get(k)
            if e not in (None, "", False, 0, [], {}) and not (isinstance(e, str) and e.lower() in ("none", "null")):
                return f"error field: {str(e)[:60]}"
        if v.get("success") is False or str(v.get("status", "")).lower() in ("error", "fail", "failed", "failure"):
            return "status error"
        data_keys = [k for k in v if k not in _MESSAGE_KEYS and k not in _STATUS_KEYS and k != "success"]
        for k in _MESSAGE_KEYS:
            msg = v.get(k)
            if isinstance(msg, str) and len(msg) <= SHORT and _ERROR_WORDS.search(msg) and not data_keys:
                return f"error message: {msg[:60]}"
        if len(v) == 1:  # {'404': 'Unable to find a route ...'}
            (k, x), = v.items()
            if re.fullmatch(r"[45]\d\d", str(k)) or (isinstance(x, str) and len(x) <= SHORT and _ERROR_WORDS.search(x)):
                return f"error message: {str(x)[:60]}"
        return ""
    if isinstance(v, str):
        m = _STATUS_TEXT.match(v)
        if m:
            return f"status {m.group(1)}"
        if len(v) <= SHORT and _ERROR_WORDS.search(v):
            return f"error message: {v.strip()[:60]}"
        if re.search(r"<title>\s*[45]\d\d\b", v[:2000]):
            return "error page"
    return ""  # note: a bare False / 0 is an answer ("contains profanity? False"), not a failure


def succ_calling(api_name: str, parse_ok: bool, observation: str | None, *, is_finish: bool = False,
                 env_status: str | None = None) -> tuple[int | None, str]:
    """(SuccCalling, reason): 1 with reason '' for a good call, 0 with the reason, None for Finish."""
    if is_finish or api_name == "Finish":
        return None, "finish"
    if not parse_ok:
        return 0, "parse failure"
    if env_status == "no_such_function":
        return 0, "unknown API"
    error, response, is_envelope = read_envelope(observation or "")
    if error:
        if error.startswith("No such function name"):
            return 0, "unknown API"
        return 0, f"error: {error.strip()[:60]}"
    why = response_failure(response)
    return (0, why) if why else (1, "")
