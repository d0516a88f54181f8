"""Requests and bytes a slide's source has delivered: what a read cost, measured."""

from __future__ import annotations

import threading


class Transfer:
    """Requests and bytes a slide's source has delivered so far (thread-safe)."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        self._lock = threading.Lock()

    def add(self, n_bytes: int, requests: int = 0) -> None:
        with self._lock:
            self.bytes += n_bytes
            self.requests += requests

    def totals(self) -> tuple[int, int]:
        with self._lock:
            return self.requests, self.bytes
