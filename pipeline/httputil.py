"""Small helpers shared by the stdlib HTTP servers (tool server, judge server)."""
from __future__ import annotations

import errno
import json
from http.server import ThreadingHTTPServer

from pipeline.errors import SteptoolError


READ_TIMEOUT_S = 10.0  # a client that sends nothing for this long is dropped (its thread freed)


class BusyHTTPServer(ThreadingHTTPServer):
    """A threading server for many concurrent clients: socketserver's default listen backlog of 5 drops
    connections when 32 clients connect at once (each drop costs the client a 1 s SYN retransmit)."""

    request_queue_size = 256
    daemon_threads = True


def bind(host: str, port: int, handler) -> BusyHTTPServer:
    """A BusyHTTPServer on host:port (0: a free one), or a SteptoolError in one line when it cannot listen."""
    try:
        return BusyHTTPServer((host, port), handler)
    except OverflowError:
        raise SteptoolError(f"port must be in 0..65535, got {port}") from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise SteptoolError(f"port {port} on {host} is already in use: stop the other server or pass --port") from None
        raise SteptoolError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def send_json(handler, code: int, obj, headers: dict | None = None) -> None:
    """Answer a `BaseHTTPRequestHandler` request with `obj` as JSON (and any extra `headers`)."""
    body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
    try:
        handler.send_response(code)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout): nothing to answer
        pass


def read_body(handler, max_bytes: int) -> bytes | None:
    """The request body, or None after answering the error: 411 without a Content-Length, 400 when it is not a
    non-negative integer, 413 above `max_bytes`; a client that stops sending (the handler's `timeout`) or closes
    early gets no answer, and its connection is closed."""
    raw = handler.headers.get("Content-Length")
    if raw is None:
        send_json(handler, 411, {"detail": "Content-Length required"})
        return None
    if not raw.strip().isdigit():
        send_json(handler, 400, {"detail": f"invalid Content-Length {raw[:40]!r}"})
        return None
    length = int(raw)
    if length > max_bytes:
        send_json(handler, 413, {"detail": f"body larger than {max_bytes} bytes"})
        return None
    try:
        body = handler.rfile.read(length)
    except (TimeoutError, OSError):
        handler.close_connection = True
        return None
    if len(body) < length:  # the client closed early
        handler.close_connection = True
        return None
    return body
