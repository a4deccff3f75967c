"""An OpenAI-compatible /v1/completions server on 127.0.0.1 for tests: a real HTTP server that samples from
a real (tiny) HF model, with injectable faults (429, 500, slow answers)."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class CompletionServer:
    def __init__(self, policy, tokenizer, faults: list[int] | None = None, delay_s: float = 0.0):
        self.policy, self.tok = policy, tokenizer
        self.faults = list(faults or [])  # HTTP codes answered, in order, before real answers
        self.delay_s = delay_s
        self.requests = 0
        self.keys_seen: list[str] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests += 1
                    outer.keys_seen.append(self.headers.get("Authorization", ""))
                    fault = outer.faults.pop(0) if outer.faults else None
                if fault:
                    self._send(fault, {"error": {"message": f"injected {fault}", "type": "test"}})
                    return
                time.sleep(outer.delay_s)
                ids = outer.tok(req["prompt"], add_special_tokens=False)["input_ids"]
                with outer.lock:  # one model, one forward at a time
                    g = outer.policy.generate([ids], [int(req.get("seed") or 0)])[0]
                tokens = [outer.tok.decode([t]) for t in g.token_ids if t != outer.tok.eos_token_id]
                lps = g.logprobs if g.ended else g.logprobs
                self._send(200, {
                    "id": "cmpl-test", "object": "text_completion", "created": 0, "model": req["model"],
                    "choices": [{"index": 0, "text": g.text, "finish_reason": "stop" if g.ended else "length",
                                 "logprobs": {"tokens": tokens, "token_logprobs": lps}}],
                    "usage": {"prompt_tokens": len(ids), "completion_tokens": len(g.token_ids),
                              "total_tokens": len(ids) + len(g.token_ids)}})

        return H
