"""HTTP servers that misbehave after answering 200, for reliability tests: one trickles its body
a byte at a time (each socket read returns in time, so per-read timeouts never trip), one sends
an endless body as fast as it can. Both stop by themselves: after ``max_s`` seconds per request,
or when the client hangs up."""

from __future__ import annotations

import time
from http.server import BaseHTTPRequestHandler

from localgcp.background import BackgroundServer


def misbehave(handler: BaseHTTPRequestHandler, kind: str, interval_s: float, max_s: float) -> None:
    """Answer ``handler``'s request 200 and then, for ``max_s`` at most or until the client
    hangs up: one byte every ``interval_s`` (``trickle``) or 64 KiB chunks without pause
    (``endless``). The declared length is a terabyte."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.send_header("Content-Length", str(10**12))
    handler.end_headers()
    started = time.monotonic()
    chunk = b"[" if kind == "trickle" else b" " * (64 << 10)
    try:
        while time.monotonic() - started < max_s:
            handler.wfile.write(chunk)
            handler.wfile.flush()
            if kind == "trickle":
                time.sleep(interval_s)
    except (BrokenPipeError, ConnectionResetError):
        return  # the client gave up, as it should
    handler.close_connection = True


class MisbehavingServer(BackgroundServer):
    """``/trickle/...`` answers 200 and one byte every ``interval_s``; ``/endless/...`` answers
    200 and 64 KiB chunks without end; anything else is a 404."""

    def __init__(self, interval_s: float = 1.0, max_s: float = 120.0) -> None:
        self.interval_s = interval_s
        self.max_s = max_s
        self.requests: list[str] = []
        super().__init__(self._handler())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.requests.append(self.path)
                kind = self.path.strip("/").split("/", 1)[0]
                if kind not in ("trickle", "endless"):
                    self.send_error(404)
                    return
                misbehave(self, kind, server.interval_s, server.max_s)

        return Handler
