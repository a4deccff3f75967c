"""`steptool serve-judge`: an OpenAI-compatible /v1/chat/completions server on 127.0.0.1 that plays the
judge, for tests, benchmarks and offline demos of the `openai` annotator. It answers the forced
`evaluate_process_reward` call with values derived from the request (the SuccCalling rule on each
step's response, contribution 3 for a good call, Solved when there is an answer), or with a script.
It also plays the API for StableToolBench's simulation requests (`env.on_miss: simulate`,
pipeline/simulator.py), by rule from the request's recorded examples (`simulate_answer`).

It also serves the OpenAI Batch API's endpoints as OpenAI does (POST /v1/files with a JSONL file,
POST /v1/batches, GET /v1/batches/{id}, GET /v1/files/{id}/content), answering each line as
/v1/chat/completions would; a batch reports `in_progress` for its first `batch_polls` retrievals.

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

from pipeline import untrusted
from pipeline.annotate.succ_calling import succ_calling
from pipeline.httputil import READ_TIMEOUT_S, bind, read_body, send_json

MAX_BODY = 8 << 20  # a judge prompt is at most a few hundred kB
CONTENT = "_message_content"  # an answer function's key for the message's text beside the call (a judge's reason)

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
    batch_polls: int = 1  # retrievals of a batch that answer `in_progress` before it is `completed`


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
    - parse_answer_status (pass rate, the converted answer): Solved when some call succeeded, else Unsolved.
    The pass-rate answers carry `answer_status` only, as StableToolBench's functions declare, and a reason in the
    message's content, where StableToolBench's criteria ask for it."""
    user = request["messages"][-1]["content"]
    name = called_function(request)
    if name in ("check_answer_status", "parse_answer_status"):
        return _pass_rate_answer(name, user)
    if "\nIntermediate Steps:\n" in user:  # the reference's prompt (annotate.prompt: reference)
        steps, final = _reference_steps(user)
        status = "Solved" if final.strip() else "Unsolved"
    else:
        final = user.rsplit("\nFinal answer:\n", 1)[-1]
        steps = _STEP.findall(user)
        status = "Unsolved" if final.startswith("(the agent") else "Solved"
    sc = [succ_calling(fn, True, resp)[0] or 0 for fn, resp in steps]
    return {"succeed_tool_calling": sc, "contribution_to_final_answer": [3 if x else 0 for x in sc],
            "final_answer_status": status}


_AST_LOCK = threading.Lock()


def _reference_steps(user: str) -> tuple[list[tuple[str, str]], str]:
    """((function, response) per step, final answer) of the reference's prompt: `mid_steps` is a Python list's
    repr of "Step k: {'name': ..., 'arguments': ..., 'response': ...}" strings (read with ast.literal_eval,
    never eval); anything unreadable counts as no step."""
    import ast

    head, _, rest = user.partition("\nIntermediate Steps:\n")
    listing, _, tail = rest.partition("\n\nFinal Answer:\n")
    final = tail.split("\n\nBased on the query, intermediate steps, and final answer", 1)[0]
    try:
        with _AST_LOCK:  # CPython 3.11's ast can fail with "recursion depth mismatch" when threads parse at once
            calls = [ast.literal_eval(str(item).split(": ", 1)[1]) for item in ast.literal_eval(listing)]
        steps = [(str(call.get("name", "")), str(call.get("response", ""))) for call in calls]
    except (ValueError, SyntaxError, IndexError, AttributeError, TypeError, MemoryError, RecursionError):
        steps = []
    return steps, final


def is_simulation(request: dict) -> bool:
    """A StableToolBench simulation request (pipeline/simulator.py): no function to force, a JSON-object answer."""
    return "tools" not in request and (request.get("response_format") or {}).get("type") == "json_object"


def simulate_answer(request: dict) -> dict:
    """A simulated API answer by rule, from the request's recorded examples of the same API (read with
    ast.literal_eval, never eval): the example of the same input if there is one, else the first example that
    succeeded, else a short made-up answer naming the API and the input."""
    import ast

    user = request["messages"][-1]["content"]
    doc_text, _, rest = user.partition("API Documentation:")[2].partition("\nAPI Examples:")
    examples_text, _, input_text = rest.partition("\nAPI Input:")
    try:
        with _AST_LOCK:
            doc = ast.literal_eval(doc_text)
            name = str(doc["api_info"][0]["name"])
    except (ValueError, SyntaxError, KeyError, IndexError, TypeError, MemoryError, RecursionError):
        name = "the API"
    try:
        with _AST_LOCK:
            examples = ast.literal_eval(examples_text)  # cut at 2,048 characters: may not parse, then none
        examples = [(str(i), o) for i, o in examples if isinstance(o, dict)]
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        examples = []
    call_input = input_text.strip()
    for i, o in examples:
        if i == call_input:
            return {"error": str(o.get("error", "")), "response": o.get("response", "")}
    for _, o in examples:
        if not o.get("error"):
            return {"error": "", "response": o.get("response", "")}
    return {"error": "", "response": f"Simulated answer of {name} for {call_input}"}


def _pass_rate_answer(name: str, user: str) -> dict:
    """StableToolBench's criteria prompts end in `Answer:\n{answer}\n\nNow ...`: the Finish arguments (check) or
    the whole converted answer (parse), both JSON text."""
    m = re.search(r"\nAnswer:\n(.*)\n\nNow (?:give|you are)", user, re.S)
    try:
        answer = json.loads(m.group(1)) if m else {}
    except json.JSONDecodeError:
        answer = {}
    if name == "check_answer_status":
        final = str(answer.get("final_answer", "")) if isinstance(answer, dict) else ""
        status = "Solved" if re.search(r"\d", final) else "Unsure" if len(final.split()) >= 3 else "Unsolved"
        why = ("the answer states a number" if status == "Solved" else "words only: the calls must decide"
               if status == "Unsure" else "too short to answer")
        return {"answer_status": status, CONTENT: why}
    sc, node = [], (answer.get("answer_details") or [None])[0] if isinstance(answer, dict) else None
    while isinstance(node, dict):
        msg = node.get("message")
        if node.get("role") == "tool" and isinstance(msg, dict) and msg.get("name") != "Finish":
            sc.append(succ_calling(str(msg.get("name")), True, str(msg.get("response", "")))[0] or 0)
        node = (node.get("next") or [None])[0]
    return {"answer_status": "Solved" if any(sc) else "Unsolved",
            CONTENT: f"{sum(sc)} of {len(sc)} tool calls succeeded"}


def auth_digest(header: str) -> str:
    """What the server keeps of an Authorization header."""
    import hashlib

    return hashlib.sha256(header.encode()).hexdigest()


class JudgeServer:
    """Serves in a daemon thread; `url` is the base_url to give the client (ends in /v1)."""

    def __init__(self, faults: Faults | None = None, answer=default_answer, port: int = 0, model: str = "judge-test",
                 simulate=simulate_answer):
        self.faults = faults or Faults()
        self.answer = answer
        self.simulate = simulate
        self.simulated = 0  # simulation requests answered
        self.model = model
        self.lock = threading.Lock()
        self.http_calls = 0
        self.call_times: deque[float] = deque(maxlen=1000)  # monotonic times of the last calls (bounded)
        self.answered = 0
        # sha256 of each distinct Authorization header: enough for a test to check which key was sent, without
        # the server holding the key itself, and bounded by the number of keys rather than of requests
        self.auth_digests: set[str] = set()
        self._rng = random.Random(self.faults.seed)
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
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

    def complete(self, raw: bytes) -> tuple[int, dict]:
        """(status, body) of /v1/chat/completions for the request body `raw` (content faults included)."""
        try:
            req = json.loads(raw)
            if is_simulation(req):
                return self._simulated(req, raw)
            args = self.answer(req)
        except Exception as e:  # a bad request is the client's bug: say so, as a real server would
            return 400, {"error": {"message": f"bad request: {e}", "type": "invalid_request"}}
        content = args.pop(CONTENT, None) if isinstance(args, dict) else None
        fault = self._content_fault(raw)
        if fault == "wrong_length" and "contribution_to_final_answer" in args:
            args = dict(args, contribution_to_final_answer=list(args["contribution_to_final_answer"]) + [5])
        text = json.dumps(args)
        if fault == "malformed":
            text = text[: len(text) // 2]
        with self.lock:
            self.answered += 1
        return 200, {
            "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": req.get("model", self.model),
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": content,
                "tool_calls": [{"id": "call_0", "type": "function",
                                "function": {"name": called_function(req), "arguments": text}}]}}],
            "usage": {"prompt_tokens": len(raw) // 4, "completion_tokens": len(text) // 4,
                      "total_tokens": len(raw) // 4 + len(text) // 4}}

    def _simulated(self, req: dict, raw: bytes) -> tuple[int, dict]:
        """A simulation request's answer as message content (a malformed fault cuts the JSON in half)."""
        text = json.dumps(self.simulate(req))
        if self._content_fault(raw) == "malformed":
            text = text[: len(text) // 2]
        with self.lock:
            self.answered += 1
            self.simulated += 1
        return 200, {"id": "chatcmpl-sim", "object": "chat.completion", "created": 0,
                     "model": req.get("model", self.model),
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": text}}],
                     "usage": {"prompt_tokens": len(raw) // 4, "completion_tokens": len(text) // 4,
                               "total_tokens": len(raw) // 4 + len(text) // 4}}

    # ---- the Batch API ----------------------------------------------------------------------------------------
    def upload(self, content_type: str, raw: bytes) -> tuple[int, dict]:
        from email.parser import BytesParser
        from email.policy import HTTP

        if not content_type.startswith("multipart/form-data"):
            return 400, {"error": {"message": "files: multipart/form-data expected", "type": "invalid_request"}}
        msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
        fields = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                  for part in msg.iter_parts()}
        if "file" not in fields:
            return 400, {"error": {"message": "files: no file field", "type": "invalid_request"}}
        with self.lock:
            fid = f"file-{len(self.files) + 1}"
            self.files[fid] = fields["file"]
        return 200, {"id": fid, "object": "file", "bytes": len(fields["file"]), "created_at": int(time.time()),
                     "filename": "batch.jsonl", "purpose": (fields.get("purpose") or b"").decode()}

    def create_batch(self, raw: bytes) -> tuple[int, dict]:
        try:
            req = untrusted.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            req = None
        if not isinstance(req, dict):
            return 400, {"error": {"message": "batches: the body is not a JSON object", "type": "invalid_request"}}
        if req.get("input_file_id") not in self.files:
            return 400, {"error": {"message": "unknown input_file_id", "type": "invalid_request"}}
        with self.lock:
            bid = f"batch_{len(self.batches) + 1}"
            self.batches[bid] = {"id": bid, "object": "batch", "endpoint": req.get("endpoint"),
                                 "input_file_id": req["input_file_id"], "completion_window": req.get("completion_window"),
                                 "status": "validating", "created_at": int(time.time()), "output_file_id": None,
                                 "error_file_id": None, "metadata": req.get("metadata"), "_polls": 0,
                                 "request_counts": {"total": 0, "completed": 0, "failed": 0}}
            return 200, {k: v for k, v in self.batches[bid].items() if not k.startswith("_")}

    def poll_batch(self, bid: str) -> dict:
        b = self.batches[bid]
        b["_polls"] += 1
        if b["status"] != "completed" and b["_polls"] > self.faults.batch_polls:
            out = []
            for x in self.files[b["input_file_id"]].splitlines():
                if not x.strip():
                    continue
                try:  # a line that is not a request is that line's 400, as OpenAI answers it; the batch goes on
                    line = untrusted.loads(x)
                    code, body = self.complete(json.dumps(line["body"]).encode())
                    custom_id = str(line["custom_id"])
                except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                    code, body, custom_id = 400, {"error": {"message": "not a batch request line"}}, None
                out.append({"id": f"batch_req_{len(out)}", "custom_id": custom_id,
                            "response": {"status_code": code, "request_id": "req", "body": body}, "error": None})
            with self.lock:
                fid = f"file-{len(self.files) + 1}"
                self.files[fid] = "".join(json.dumps(o) + "\n" for o in out).encode()
            b.update(status="completed", output_file_id=fid,
                     request_counts={"total": len(out), "completed": sum(o["response"]["status_code"] == 200 for o in out),
                                     "failed": sum(o["response"]["status_code"] != 200 for o in out)})
        elif b["status"] == "validating":
            b["status"] = "in_progress"
        return {k: v for k, v in b.items() if not k.startswith("_")}

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
                path = self.path.rstrip("/")
                if path.endswith("/files"):
                    send_json(self, *outer.upload(self.headers.get("Content-Type", ""), raw))
                    return
                if path.endswith("/batches"):
                    send_json(self, *outer.create_batch(raw))
                    return
                if not path.endswith("/chat/completions"):
                    send_json(self, 404, {"error": {"message": "no such endpoint", "type": "not_found"}})
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
                code, body = outer.complete(raw)
                send_json(self, code, body)

            def do_GET(self):
                with outer.lock:
                    outer.http_calls += 1
                parts = self.path.rstrip("/").split("/")
                if len(parts) >= 2 and parts[-2] == "batches" and parts[-1] in outer.batches:
                    send_json(self, 200, outer.poll_batch(parts[-1]))
                elif len(parts) >= 3 and parts[-1] == "content" and parts[-2] in outer.files:
                    body = outer.files[parts[-2]]
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    send_json(self, 404, {"error": {"message": f"no such resource {self.path}", "type": "not_found"}})

        return H
