"""A document's windows -> one row of its model's table: entities, labels or an embedding.

What a document's row holds is its task's (``tasks.py``); entities come back with character
offsets into the ORIGINAL text (``entities.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from transforms.core import progress
from transforms.core.errors import DEAD_LETTER, PipelineError, dead_letter
from transforms.text.models import TextModelSpec
from transforms.text.tasks import task
from transforms.text.windows import TextWindow


class RouteByWindows(beam.DoFn):
    """Single-window documents skip the shuffle; only windowed documents are grouped."""

    MULTI = "multi"

    def process(self, window: TextWindow) -> Iterator[Any]:
        if window.n_windows == 1:
            yield window.doc_id, [window]
        else:
            yield beam.pvalue.TaggedOutput(self.MULTI, (window.doc_id, window))


class MergeWindows(beam.DoFn):
    def __init__(self, spec: TextModelSpec, run_id: str) -> None:
        self._spec = spec
        self._run_id = run_id

    def process(self, element: tuple[str, Iterable[TextWindow]]) -> Iterator[Any]:
        doc_id, windows = element
        windows = sorted(windows, key=lambda w: w.index)
        stage = f"RunModel/{self._spec.name}"
        failed = next((w.error for w in windows if w.error), None)
        if failed or len(windows) != windows[0].n_windows:
            reason = failed or f"{len(windows)} of {windows[0].n_windows} windows came back"
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER, dead_letter(stage, doc_id, PipelineError(reason), {"doc_id": doc_id})
            )
            return
        row = {
            "doc_id": doc_id,
            "model_name": self._spec.name,
            "model_version": self._spec.version,
            "n_tokens": windows[0].n_tokens,
            "n_windows": len(windows),
            "run_id": self._run_id,
        }
        names = windows[0].labels

        def label_of(i: int) -> str:
            return names[i] if i < len(names) else f"LABEL_{i}"

        row.update(task(self._spec.task).document(windows, label_of))
        progress.count("documents_done")
        yield row
