"""`steptool serve-tools`: ToolWorld (or a replay cache: any object with `call`, `fingerprint`, `apis`) behind
StableToolBench's HTTP contract, on 127.0.0.1.

POST /virtual  {category, tool_name, api_name, tool_input (JSON text or object), strip, toolbench_key}
               -> {"error": str, "response": ...}; optional extra fields `episode`, `attempt`.
GET  /health   -> {"status": "ok", "world": fingerprint, "apis": n}
The toolbench_key is accepted and ignored; it is never logged.
"""
from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: F401 (type hints)

from pipeline import untrusted
from pipeline.httputil import READ_TIMEOUT_S, bind, read_body, send_json
from pipeline.toolworld.world import ToolWorld

log = logging.getLogger("steptool.serve_tools")
REQUIRED = ("category", "tool_name", "api_name", "tool_input")
MAX_BODY = 1 << 20


def _handler(world) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "steptool-toolworld/1"

        timeout = READ_TIMEOUT_S  # a slow or silent client cannot hold a thread

        def log_message(self, fmt, *args):  # route to logging, without bodies (they may carry the key)
            log.debug("%s %s", self.address_string(), fmt % args)

        def _send(self, code: int, obj) -> None:
            send_json(self, code, obj)

        def do_GET(self):
            if self.path.rstrip("/") == "/health":
                self._send(200, {"status": "ok", "world": world.fingerprint(), "apis": len(world.apis)})
            else:
                self._send(404, {"detail": "Not Found: use POST /virtual"})

        def do_POST(self):
            if self.path.rstrip("/") != "/virtual":
                self._send(404, {"detail": "Not Found: use POST /virtual"})
                return
            body = read_body(self, MAX_BODY)
            if body is None:
                return
            try:
                info = untrusted.loads(body.decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                self._send(422, {"detail": "body is not JSON"})
                return
            if not isinstance(info, dict):
                self._send(422, {"detail": "body must be a JSON object"})
                return
            missing = [k for k in REQUIRED if k not in info]
            if missing:
                self._send(422, {"detail": f"missing field(s): {', '.join(missing)}"})
                return
            tool_input = info["tool_input"]
            if not isinstance(tool_input, (str, dict)):
                tool_input = json.dumps(tool_input)
            try:
                attempt = int(info.get("attempt") or 0)
            except (TypeError, ValueError):
                attempt = 0
            envelope = world.call(str(info["category"]), str(info["tool_name"]), str(info["api_name"]), tool_input,
                                  episode=str(info.get("episode") or ""), attempt=attempt)
            self._send(200, envelope)

    return Handler


def make_server(world, host: str = "127.0.0.1", port: int = 8080) -> ThreadingHTTPServer:
    """Bind the server (port 0 picks a free one). Raises SteptoolError if the port is taken."""
    return bind(host, port, _handler(world))


def serve_in_thread(world: ToolWorld, host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Start a server in a daemon thread; returns it and its /virtual URL (for tests and notebooks)."""
    server = make_server(world, host, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}/virtual"
