"""`steptool serve-judge`: an OpenAI-compatible /v1/chat/completions server on 127.0.0.1 that plays the
judge, for tests, benchmarks and offline demos of the `openai` annotator. It answers the forced
`evaluate_process_reward` call with values derived from the request (the SuccCalling rule on each
step's response, contribution 3 for a good call, Solved when there is an answer), or with a script.

Faults can be injected: latency, 429 / 500 answers, timeouts (a sleep longer than the client waits),
malformed JSON arguments and arrays of the wrong length. Transport faults (429, 500, timeout) are
drawn per HTTP call; content faults (malformed, wrong length) are a function of the request, so the
same request always gets the same answer, as a cache replay would.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from pipeline.annotate.succ_calling import succ_calling
from pipeline.httputil import READ_TIMEOUT_S, bind, read_body, send_json

MAX_BODY = 8 << 20  # a judge prompt is at most a few hundred kB

_STEP = re.compile(r"^Step \d+: call (.+?) with arguments .*?\nResponse: (.*?)(?=\nStep \d+: call |\n\nFinal answer:\n)",
                   re.S | re.M)


@dataclass
class Faults:
    latency_s: float = 0.0
    p_429: float = 0.0
    p_500: float = 0.0
    p_timeout: float = 0.0
    timeout_sleep_s: float = 5.0
    p_malformed: float = 0.0
    p_wrong_length: float = 0.0
    seed: int = 0
    first_429: int = 0  # the first N calls are answered 429 whatever the draw (a deterministic rate limit)
    retry_after: str | None = None  # the Retry-After header of every 429 (seconds or an HTTP date), as OpenAI sends


def called_function(request: dict) -> str:
    """The function the client forces with tool_choice (the annotate judge's by default)."""
    choice = request.get("tool_choice")
    if isinstance(choice, dict):
        return (choice.get("function") or {}).get("name") or "evaluate_process_reward"
    return "evaluate_process_reward"


def default_answer(request: dict) -> dict:
    """A plausible judgement of the request, by the function it forces:
    - evaluate_process_reward (annotate): the SuccCalling rule on each step's response, contribution 3 for a
      good call, Solved when there is an answer;
    - check_answer_status (pass rate, answer only): Solved when the answer holds a number, Unsure when it is
      a sentence without one, else Unsolved;
    - parse_answer_status (pass rate, whole trajectory): Solved when some call succeeded, else Unsolved."""
    user = request["messages"][-1]["content"]
    final = user.rsplit("\nFinal answer:\n", 1)[-1]
    name = called_function(request)
    if name == "check_answer_status":
        status = "Solved" if re.search(r"\d", final) else "Unsure" if len(final.split()) >= 3 else "Unsolved"
        return {"answer_status": status, "reason": "test judge: answer only"}
    steps = _STEP.findall(user)
    sc = [succ_calling(fn, True, resp)[0] or 0 for fn, resp in steps]
    if name == "parse_answer_status":
        return {"answer_status": "Solved" if any(sc) else "Unsolved", "reason": "test judge: from the responses"}
    status = "Unsolved" if final.startswith("(the agent") else "Solved"
    return {"succeed_tool_calling": sc, "contribution_to_final_answer": [3 if x else 0 for x in sc],
            "final_answer_status": status}


def auth_digest(header: str) -> str:
    """What the server keeps of an Authorization header."""
    import hashlib

    return hashlib.sha256(header.encode()).hexdigest()


class JudgeServer:
    """Serves in a daemon thread; `url` is the base_url to give the client (ends in /v1)."""

    def __init__(self, faults: Faults | None = None, answer=default_answer, port: int = 0, model: str = "judge-test"):
        self.faults = faults or Faults()
        self.answer = answer
        self.model = model
        self.lock = threading.Lock()
        self.http_calls = 0
        self.call_times: deque[float] = deque(maxlen=1000)  # monotonic times of the last calls (bounded)
        self.answered = 0
        # sha256 of each distinct Authorization header: enough for a test to check which key was sent, without
        # the server holding the key itself, and bounded by the number of keys rather than of requests
        self.auth_digests: set[str] = set()
        self._rng = random.Random(self.faults.seed)
        self.server = bind("127.0.0.1", port, self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _content_fault(self, raw: bytes) -> str:
        f = self.faults
        u = int.from_bytes(hashlib.sha256(raw + str(f.seed).encode()).digest()[:8], "big") / 2**64
        if u < f.p_malformed:
            return "malformed"
        if u < f.p_malformed + f.p_wrong_length:
            return "wrong_length"
        return ""

    def _handler(self):
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections
            timeout = READ_TIMEOUT_S  # a slow or silent client cannot hold a thread
            disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms Nagle stall

            def log_message(self, *a):  # quiet, and never print headers (they carry the key)
                pass

            def do_POST(self):
                raw = read_body(self, MAX_BODY)
                if raw is None:
                    return
                f = outer.faults
                with outer.lock:
                    outer.http_calls += 1
                    outer.call_times.append(time.monotonic())
                    outer.auth_digests.add(auth_digest(self.headers.get("Authorization", "")))
                    u = -1.0 if outer.http_calls <= f.first_429 else outer._rng.random()
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    send_json(self, 404, {"error": {"message": "only /v1/chat/completions", "type": "not_found"}})
                    return
                if u < f.p_429:
                    send_json(self, 429, {"error": {"message": "injected rate limit", "type": "rate_limit"}},
                              headers={"Retry-After": f.retry_after} if f.retry_after is not None else None)
                    return
                if u < f.p_429 + f.p_500:
                    send_json(self, 500, {"error": {"message": "injected server error", "type": "server"}})
                    return
                if u < f.p_429 + f.p_500 + f.p_timeout:
                    time.sleep(f.timeout_sleep_s)
                time.sleep(f.latency_s)
                try:
                    req = json.loads(raw)
                    args = outer.answer(req)
                except Exception as e:  # a bad request is the client's bug: say so, as a real server would
                    send_json(self, 400, {"error": {"message": f"bad request: {e}", "type": "invalid_request"}})
                    return
                fault = outer._content_fault(raw)
                if fault == "wrong_length" and "contribution_to_final_answer" in args:
                    args = dict(args, contribution_to_final_answer=list(args["contribution_to_final_answer"]) + [5])
                text = json.dumps(args)
                if fault == "malformed":
                    text = text[: len(text) // 2]
                with outer.lock:
                    outer.answered += 1
                send_json(self, 200, {
                    "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": req.get("model", outer.model),
                    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                        "role": "assistant", "content": None,
                        "tool_calls": [{"id": "call_0", "type": "function",
                                        "function": {"name": called_function(req), "arguments": text}}]}}],
                    "usage": {"prompt_tokens": len(raw) // 4, "completion_tokens": len(text) // 4,
                              "total_tokens": len(raw) // 4 + len(text) // 4}})

        return H
