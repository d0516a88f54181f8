"""An HTTP proxy for the GCS emulator that injects faults and counts the bytes it serves.

Every ``fail_every``-th request that ``fault_on`` selects is answered with a 503, or its
connection is dropped without an answer (alternating), the two transient faults clients must
retry. With ``stall_s``, the selected requests instead get no answer for that long (a hung
connection); with ``misbehave`` (``trickle`` or ``endless``, see ``bad_servers.misbehave``),
an answer whose body never ends in time. Body bytes served per object name are counted, to check
that slides are read in ranges; every GET's path and size is kept, for any upstream (a DICOMweb
store too).
"""

from __future__ import annotations

import http.client
import itertools
import re
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

from localgcp.background import BackgroundServer
from localgcp.bad_servers import misbehave

_OBJECT = re.compile(r"/b/[^/]+/o/([^?]+)")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


def is_object_read(method: str, path: str) -> bool:
    """A media download: what a slide, manifest or model read is made of."""
    return method == "GET" and ("alt=media" in path or path.startswith("/download/"))


class FaultProxy(BackgroundServer):
    def __init__(
        self,
        upstream: str,
        fail_every: int = 0,
        fault_on: Callable[[str, str], bool] = is_object_read,
        stall_s: float = 0.0,
        misbehave: str = "",
        max_s: float = 60.0,
    ) -> None:
        self.stall_s = stall_s
        self.misbehave = misbehave
        self.max_s = max_s
        self.upstream = urllib.parse.urlparse(upstream)
        self.fail_every = fail_every
        self.fault_on = fault_on
        self.faults: Counter[str] = Counter()
        self.requests = 0
        self.range_requests = 0
        self.bytes_by_object: Counter[str] = Counter()
        self.reads: list[tuple[str, str | None, int]] = []
        """(object name, Range header, bytes) of every object GET served."""
        self.gets: list[tuple[str, int]] = []
        """(path, body bytes) of every GET served, of any server (e.g. DICOMweb frames)."""
        self._selected = itertools.count(1)
        self._lock = threading.Lock()
        super().__init__(self._handler())

    def _fault_for(self, method: str, path: str) -> str | None:
        with self._lock:
            self.requests += 1
            if not self.fail_every or not self.fault_on(method, path):
                return None
            n = next(self._selected)
            if n % self.fail_every:
                return None
            if self.misbehave:
                kind = self.misbehave
            elif self.stall_s:
                kind = "stall"
            else:
                kind = "503" if (n // self.fail_every) % 2 else "drop"
            self.faults[kind] += 1
            return kind

    def _served(self, path: str, n: int, byte_range: str | None) -> None:
        match = _OBJECT.search(path)
        with self._lock:
            self.gets.append((path, n))
            self.range_requests += byte_range is not None
            if match:
                name = urllib.parse.unquote(match.group(1))
                self.bytes_by_object[name] += n
                self.reads.append((name, byte_range, n))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy._fault_for(self.command, self.path)
                if fault == "stall":
                    time.sleep(proxy.stall_s)
                    self.close_connection = True
                    return
                if fault in ("trickle", "endless"):
                    misbehave(self, fault, 0.5, proxy.max_s)
                    return
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault == "503":
                    msg = b'{"error": {"code": 503, "message": "injected fault"}}'
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                conn = http.client.HTTPConnection(
                    proxy.upstream.hostname or "127.0.0.1", proxy.upstream.port, timeout=60
                )
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if self.command == "GET":
                    proxy._served(self.path, len(data), self.headers.get("Range"))
                self.send_response(resp.status, resp.reason)
                for key, value in resp.getheaders():
                    if key.lower() not in _HOP_BY_HOP | {"content-length"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

            def log_message(self, *args: object) -> None:
                pass

        return Handler
