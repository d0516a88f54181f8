"""Batch bisection: run a batch function so that only the elements that fail on their own fail."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from transforms.core import progress
from transforms.core.errors import ModelLoadError

Outcome = tuple[Any, Any, BaseException | None]
"""``(element, result, error)``: exactly one of result and error is meaningful."""


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA or CPU out-of-memory error (torch's, or Python's MemoryError)."""
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    return name == "OutOfMemoryError" or "out of memory" in str(exc).lower()


class SplittingRunner:
    """Run a batch function so that only the elements that fail on their own fail.

    A failing batch is split in halves and retried, down to single elements (bisection), so one
    bad input costs O(log n) extra calls and every other element still gets its result. An
    out-of-memory error also lowers the batch-size cap for later batches (Beam has had an open
    request for this since 2022: apache/beam#21447).
    """

    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], max_size: int) -> None:
        self._fn = fn
        self.cap = max_size

    def run(self, batch: Sequence[Any]) -> list[Outcome]:
        """``(element, result, error)`` for every element, in order."""
        out: list[Outcome] = []
        for start in range(0, len(batch), self.cap):
            out += self._run(list(batch[start : start + self.cap]))
        return out

    def _run(self, batch: list[Any]) -> list[Outcome]:
        try:
            return [(x, r, None) for x, r in zip(batch, self._fn(batch), strict=True)]
        except ModelLoadError:
            raise  # the model itself is unusable (e.g. its precision guard failed, strict)
        except Exception as exc:  # noqa: BLE001 - split, then blame single elements only
            if len(batch) == 1:
                return [(batch[0], None, exc)]
            if is_out_of_memory(exc):
                self.cap = max(1, min(self.cap, len(batch) // 2))
                progress.count("oom_backoffs")
            progress.count("batch_splits")
            mid = len(batch) // 2
            return self._run(batch[:mid]) + self._run(batch[mid:])
