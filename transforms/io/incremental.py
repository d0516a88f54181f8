"""Incremental runs: drop manifest rows whose results already exist, before anything is read.

A row is done when every model of the run, at its version, has a result row for its id in the
destination (``slide_summaries`` for slides, each model's task table for documents). A new slide,
or a slide new to one model version, is processed again for all of the run's models; the
idempotent BigQuery write replaces what the other models had.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from transforms.core.progress import count
from transforms.io.destinations import Destination, existing_keys
from transforms.io.manifests import KeyById
from transforms.io.schemas import Table

ModelResult = tuple[Table, str, str]
"""Where one model's results are: (table, model name, model version)."""


class _DoneIds(beam.DoFn):
    def __init__(self, dest: Destination, id_column: str, results: tuple[ModelResult, ...]):
        self._dest = dest
        self._id_column = id_column
        self._results = results

    def process(self, _: Any) -> Iterator[tuple[str, None]]:
        done: set[str] | None = None
        columns = (self._id_column, "model_name", "model_version")
        keys_by_table: dict[str, set[tuple]] = {}  # one read per table, however many models
        for table, name, version in self._results:
            if table.name not in keys_by_table:
                keys_by_table[table.name] = existing_keys(self._dest, table, columns)
            ids = {key[0] for key in keys_by_table[table.name] if key[1:] == (name, version)}
            done = ids if done is None else done & ids
        for id_ in sorted(done or ()):
            yield id_, None


SKIPPED = "skipped"
"""Tag of SkipExisting's output with the ids it dropped."""


class _KeepNew(beam.DoFn):
    def process(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        id_, joined = element
        rows = list(joined["rows"])
        if not rows:
            return
        if list(joined["done"]):
            count("skipped_existing", len(rows))
            yield beam.pvalue.TaggedOutput(SKIPPED, id_)
            return
        yield from rows


class SkipExisting(beam.PTransform):
    """Manifest rows -> a dict: ``rows`` without results for every model in ``results``, and
    ``SKIPPED``, the ids of the rows dropped."""

    def __init__(self, dest: Destination, id_column: str, results: tuple[ModelResult, ...]) -> None:
        super().__init__()
        self._dest = dest
        self._id_column = id_column
        self._results = results

    def expand(self, rows: beam.PCollection) -> dict[str, beam.PCollection]:
        done = (
            rows.pipeline
            | "Once" >> beam.Create([None])
            | "ReadExisting" >> beam.ParDo(_DoneIds(self._dest, self._id_column, self._results))
        )
        keyed = rows | "KeyById" >> beam.ParDo(KeyById(self._id_column))
        kept = (
            {"rows": keyed, "done": done}
            | "JoinExisting" >> beam.CoGroupByKey()
            | "KeepNew" >> beam.ParDo(_KeepNew()).with_outputs(SKIPPED, main="rows")
        )
        return {"rows": kept.rows, SKIPPED: kept[SKIPPED]}
