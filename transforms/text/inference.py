"""RunTextModel: document rows -> windows -> token-budget batches -> model -> table rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam

from transforms.core import progress
from transforms.core.errors import DEAD_LETTER
from transforms.core.guard import GUARD
from transforms.models.precision import GuardConfig, run_guarded
from transforms.models.runner import ModelRunner
from transforms.text.batching import SortAndBatchByTokens, TokenBatchingConfig
from transforms.text.merge import MergeWindows, RouteByWindows
from transforms.text.models import TextModelSpec
from transforms.text.tasks import task
from transforms.text.windows import TextWindow, TokenizeDocument, WindowConfig, window_length


class _RunTextModel(ModelRunner):
    """A batch of windows -> new windows with ``output`` (or ``error``) filled in."""

    def __init__(self, spec: TextModelSpec, guard: GuardConfig) -> None:
        super().__init__(spec.name, spec.shared_tag)
        self._spec = spec
        self._guard = guard
        self._labels: list[str] = []

    def load(self) -> Any:
        from transforms.text.models import load_text_model

        return load_text_model(self._spec)

    def setup(self) -> None:
        super().setup()
        id2label = self._model.id2label
        self._labels = [id2label.get(i, f"LABEL_{i}") for i in range(max(id2label, default=-1) + 1)]

    def infer(self, model: Any, batch: list[TextWindow]) -> list[Any]:
        from transforms.text.models import forward

        ids = [w.ids for w in batch]
        spec = self._spec
        return run_guarded(
            model, lambda k: forward(model, ids[:k]), task(spec.task), spec.name, self._guard
        )

    def process(self, batch: Sequence[TextWindow]) -> Iterator[TextWindow]:
        for window, out, error in self.outcomes(batch):
            # A failed window's document becomes a dead letter when its windows are merged.
            if error is not None:
                yield dataclasses.replace(window, error=f"{type(error).__name__}: {error}")
            else:
                yield dataclasses.replace(window, output=out, labels=self._labels)
        progress.count("windows_inferred", len(batch))
        yield from self.guard_outputs()


class RunTextModel(beam.PTransform):
    """Document rows -> rows of the task's table for one model.

    Out: a dict with ``rows``, ``DEAD_LETTER`` rows and the accuracy guard's ``GUARD`` rows.
    """

    def __init__(
        self,
        spec: TextModelSpec,
        windows: WindowConfig,
        batching: TokenBatchingConfig,
        run_id: str,
        guard: GuardConfig | None = None,
    ) -> None:
        super().__init__()
        self._spec, self._windows, self._batching, self._run_id = spec, windows, batching, run_id
        self._guard = guard or GuardConfig()

    def expand(self, docs: beam.PCollection) -> dict[str, beam.PCollection]:
        tokenized = docs | "Tokenize" >> beam.ParDo(
            TokenizeDocument(self._spec, self._windows)
        ).with_outputs(DEAD_LETTER, main="windows")
        inferred = (
            tokenized.windows
            | "SortAndBatch" >> SortAndBatchByTokens(self._batching, window_length)
            | "Infer"
            >> beam.ParDo(_RunTextModel(self._spec, self._guard)).with_outputs(
                GUARD, main="windows"
            )
        )
        routed = inferred.windows | "RouteByWindows" >> beam.ParDo(RouteByWindows()).with_outputs(
            RouteByWindows.MULTI, main="single"
        )
        grouped = routed[RouteByWindows.MULTI] | "GroupWindows" >> beam.GroupByKey()
        merged = (
            (routed.single, grouped)
            | "AllDocuments" >> beam.Flatten()
            | "MergeWindows"
            >> beam.ParDo(MergeWindows(self._spec, self._run_id)).with_outputs(
                DEAD_LETTER, main="rows"
            )
        )
        errors = (tokenized[DEAD_LETTER], merged[DEAD_LETTER]) | "Errors" >> beam.Flatten()
        return {"rows": merged.rows, DEAD_LETTER: errors, GUARD: inferred[GUARD]}
