"""Small helpers shared by the stdlib HTTP servers (tool server, judge server)."""
from __future__ import annotations

import json
from http.server import ThreadingHTTPServer


class BusyHTTPServer(ThreadingHTTPServer):
    """A threading server for many concurrent clients: socketserver's default listen backlog of 5 drops
    connections when 32 clients connect at once (each drop costs the client a 1 s SYN retransmit)."""

    request_queue_size = 256
    daemon_threads = True


def send_json(handler, code: int, obj) -> None:
    """Answer a `BaseHTTPRequestHandler` request with `obj` as JSON."""
    body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
    try:
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout): nothing to answer
        pass
