"""Beam metrics counters, plus a process-local tally that feeds a periodic progress line.

Every stage counts through ``count()``: it increments the Beam counter (what Dataflow shows and
``PipelineResult.metrics()`` returns) and a tally in this process. On the local runner the DoFns run
in the launching process, so ``ProgressReporter`` can log slides done of total, patches/s and an
ETA while the job runs; on Dataflow the counters show in the job page instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from apache_beam.metrics import Metrics

NAMESPACE = "pathbeam"
_LOG = logging.getLogger("pathbeam.progress")
_tally: Counter[str] = Counter()
_lock = threading.Lock()
_counters: dict[str, object] = {}


def count(name: str, n: int = 1) -> None:
    """Add ``n`` to the Beam counter ``pathbeam/<name>`` and to this process's tally."""
    if n == 0:
        return
    counter = _counters.get(name)
    if counter is None:
        counter = _counters.setdefault(name, Metrics.counter(NAMESPACE, name))
    counter.inc(n)  # type: ignore[attr-defined]
    with _lock:
        _tally[name] += n


def snapshot() -> dict[str, int]:
    """A copy of this process's tally."""
    with _lock:
        return dict(_tally)


def reset() -> None:
    """Forget the tally (one launcher process may run several pipelines, e.g. in tests)."""
    with _lock:
        _tally.clear()


def slide_progress_line(tally: dict[str, int], elapsed_s: float, n_models: int = 1) -> str:
    """Slides done of total, patch inferences done of planned, patches/s and an ETA."""
    slides_total = tally.get("slides_planned", 0) + tally.get("slides_failed", 0)
    slides_done = tally.get("slides_summarized", 0) + tally.get("slides_failed", 0)
    planned = tally.get("patches_planned", 0) * n_models - tally.get("patches_gated_out", 0)
    done = tally.get("patches_inferred", 0)
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    eta = f"{(planned - done) / rate:.0f}s" if rate > 0 and planned >= done else "?"
    return (
        f"slides {slides_done}/{slides_total} done, {done}/{planned} patch inferences, "
        f"{rate:.1f} patches/s, ETA {eta}"
    )


def text_progress_line(tally: dict[str, int], elapsed_s: float, n_models: int = 1) -> str:
    """Document results done of tokenized, windows inferred, document results/s."""
    tokenized, done = tally.get("documents_tokenized", 0), tally.get("documents_done", 0)
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    return (
        f"documents {done}/{tokenized} done over {n_models} model(s), "
        f"windows {tally.get('windows_inferred', 0)}/{tally.get('windows', 0)} inferred, "
        f"{rate:.1f} document results/s"
    )


ProgressLine = Callable[[dict[str, int], float, int], str]


class ProgressReporter:
    """Logs ``line(tally, elapsed_s, n_models)`` every ``interval_s`` seconds from a thread."""

    def __init__(self, interval_s: float, line: ProgressLine, n_models: int = 1) -> None:
        self._interval_s = interval_s
        self._line = line
        self._n_models = n_models
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._start = 0.0

    def __enter__(self) -> ProgressReporter:
        reset()
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=1)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            elapsed = time.monotonic() - self._start
            _LOG.info("progress: %s", self._line(snapshot(), elapsed, self._n_models))
