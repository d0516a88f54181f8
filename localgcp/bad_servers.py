"""HTTP servers that misbehave after answering 200, for reliability tests: one trickles its body
a byte at a time (each socket read returns in time, so per-read timeouts never trip), one sends
an endless body as fast as it can. Both stop by themselves: after ``max_s`` seconds per request,
or when the client hangs up."""

from __future__ import annotations

import time
from http.server import BaseHTTPRequestHandler

from localgcp.background import BackgroundServer


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
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(10**12))
                self.end_headers()
                started = time.monotonic()
                chunk = b"[" if kind == "trickle" else b" " * (64 << 10)
                try:
                    while time.monotonic() - started < server.max_s:
                        self.wfile.write(chunk)
                        self.wfile.flush()
                        if kind == "trickle":
                            time.sleep(server.interval_s)
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client gave up, as it should
                self.close_connection = True

        return Handler
