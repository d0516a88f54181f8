"""A run's outcome: inputs, inputs with results, skipped and failed inputs, dead letters by stage.

Counted inside the job, so the launcher's summary and exit code and a Dataflow job's own state
agree: with a ``max_failed_fraction``, the job itself fails when more of its inputs than that
became dead letters, so a scheduler's alerting sees a failed job, not a green one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from transforms.core import progress
from transforms.core.errors import PipelineError

DEAD_LETTERS = "dead_letters/"
"""Counter-name prefix of the dead letters of one stage: ``dead_letters/<stage>``."""


OUTCOME = "outcome"
"""The key under which a pipeline's ``build`` returns ``JudgeRun``'s ``Outcome`` beside its
tables; ``write`` records it."""


class RunFailedError(PipelineError):
    """More inputs failed than the run allows."""


@dataclass(frozen=True)
class Outcome:
    """How a run's inputs ended. ``failed`` = inputs - with results - skipped."""

    inputs: int
    with_results: int
    skipped: int

    @property
    def failed(self) -> int:
        return max(0, self.inputs - self.with_results - self.skipped)

    @property
    def failed_fraction(self) -> float:
        return self.failed / self.inputs if self.inputs else 0.0


class _CountByStage(beam.DoFn):
    def process(self, row: dict) -> None:
        progress.count(DEAD_LETTERS + str(row.get("stage", "?")))


class _IdOf(beam.DoFn):
    def __init__(self, id_column: str) -> None:
        self._id_column = id_column

    def process(self, row: dict) -> Iterator[str]:
        yield row[self._id_column]


class _Judge(beam.DoFn):
    def __init__(self, max_failed_fraction: float | None) -> None:
        self._max = max_failed_fraction

    def process(self, _: Any, inputs: int, with_results: int, skipped: int) -> Iterator[Outcome]:
        outcome = Outcome(inputs, with_results, skipped)
        progress.count("inputs", outcome.inputs)
        progress.count("inputs_with_results", outcome.with_results)
        progress.count("inputs_skipped", outcome.skipped)
        progress.count("inputs_failed", outcome.failed)
        if self._max is not None and outcome.failed_fraction > self._max:
            raise RunFailedError(
                f"{outcome.failed} of {outcome.inputs} inputs ({outcome.failed_fraction:.1%}) "
                f"produced no result, over the allowed fraction {self._max:g} "
                "(max_failed_fraction); their dead letters say why"
            )
        yield outcome


class JudgeRun(beam.PTransform):
    """``{"inputs", "rejected", "results", "skipped_ids", "errors"}`` -> one ``Outcome``.

    ``inputs``: the clean input rows; ``rejected``: the input rows' dead letters; ``results``:
    result rows, each input counted once by its ``id_column``; ``skipped_ids`` (optional): inputs
    skipped as done already; ``errors``: every dead letter of the run, counted by stage.
    """

    def __init__(self, id_column: str, max_failed_fraction: float | None = None) -> None:
        super().__init__()
        self._id_column = id_column
        self._max = max_failed_fraction

    def expand(self, parts: dict[str, beam.PCollection]) -> beam.PCollection:
        _ = parts["errors"] | "CountByStage" >> beam.ParDo(_CountByStage())
        inputs = (parts["inputs"], parts["rejected"]) | "AllInputs" >> beam.Flatten()
        skipped = parts.get("skipped_ids")
        if skipped is None:
            skipped = parts["inputs"].pipeline | "NoneSkipped" >> beam.Create([])
        counts = {
            "inputs": inputs,
            "with_results": parts["results"]
            | "ResultIds" >> beam.ParDo(_IdOf(self._id_column))
            | "DistinctResults" >> beam.Distinct(),
            "skipped": skipped,
        }
        singles = [
            beam.pvalue.AsSingleton(pcoll | f"Count/{name}" >> beam.combiners.Count.Globally())
            for name, pcoll in counts.items()
        ]
        return (
            parts["inputs"].pipeline
            | "Once" >> beam.Create([None])
            | "Judge" >> beam.ParDo(_Judge(self._max), *singles)
        )
