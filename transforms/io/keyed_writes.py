"""A stream's writes, once per slide: to a folder, each slide's rows of a table in one file,
replaced whole; to BigQuery, a keyed merge per table and window (``bigquery_windows``).

    <folder>/<table>/<safe key>.parquet

A stream processes a slide again after a redelivery, a restart or a retried bundle. Each window's
rows are grouped by table and key (a slide), and the key's file is written whole
(``remote_io.write_whole``): whatever is processed twice, the folder holds one set of rows per key
(the same bytes, or the later run's: a restarted stream, with a new run id, replaces them too).
Readers read ``<folder>/<table>/*.parquet`` as they read a batch run's folder. Each write emits
``(key, table)`` once the file is in place, so what follows (``stream.inbox``: the slide is
done) happens only once its rows are durable.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import apache_beam as beam

from transforms.io.bigquery_windows import MergeWindow
from transforms.io.destinations import Destination, RunStamp
from transforms.io.schemas import Table, arrow_schema, safe_name


def keyed_file(folder: str, table: str, key: str) -> str:
    return f"{folder.rstrip('/')}/{table}/{safe_name(key)}.parquet"


class _WriteKey(beam.DoFn):
    def __init__(self, folder: str, table: Table) -> None:
        self._folder = folder
        self._table = table

    def process(self, element: tuple[str, Iterable[dict]]) -> Iterator[tuple[str, str]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from transforms.core.remote_io import write_whole

        key, rows = element
        schema = arrow_schema(self._table)
        data = pa.Table.from_pylist(
            [{c.name: r.get(c.name) for c in self._table.columns} for r in rows], schema
        )
        sink = pa.BufferOutputStream()
        pq.write_table(data, sink)
        write_whole(keyed_file(self._folder, self._table.name, key), sink.getvalue().to_pybytes())
        yield key, self._table.name


class WriteKeyedTables(beam.PTransform):
    """``{table name: rows}`` (windowed) -> each table's rows at ``dest``, once per key.

    A folder gets one Parquet file per table and slide, replaced whole; a BigQuery dataset a
    keyed merge per table and window (``bigquery_windows``). Rows are keyed by ``slide_id``
    (dead letters by their slide when they name one, else by their own key). Out:
    ``(slide, table)`` once that slide's rows of that table are in place.
    """

    def __init__(self, dest: Destination, run: RunStamp, tables: Iterable[Table]) -> None:
        super().__init__()
        self._dest = dest
        self._run = run
        self._tables = {t.name: t for t in tables}

    def expand(self, tables: dict[str, beam.PCollection]) -> beam.PCollection:
        written = []
        for name, rows in tables.items():
            stamped = rows | f"Stamp/{name}" >> beam.Map(_stamped, self._run)
            if self._dest.bigquery is None:  # per slide: one file each
                keyed, write = stamped | f"Key/{name}" >> beam.Map(_by_slide), self._write_file
            else:  # per window: one merge
                keyed, write = stamped | f"Key/{name}" >> beam.Map(_whole_window), self._merge
            written.append(
                keyed
                | f"Group/{name}" >> beam.GroupByKey()
                | f"Write/{name}" >> beam.ParDo(write(self._tables[name]))
            )
        return written | "AllWritten" >> beam.Flatten()

    def _write_file(self, table: Table) -> beam.DoFn:
        return _WriteKey(str(self._dest.folder), table)

    def _merge(self, table: Table) -> beam.DoFn:
        target = self._dest.bigquery
        assert target is not None
        return MergeWindow(target, table, self._run.run_id, str(self._dest.temp_location), key_of)


def _by_slide(row: dict) -> tuple[str, dict]:
    return key_of(row), row


def _whole_window(row: dict) -> tuple[None, dict]:
    return None, row


def _stamped(row: dict, run: RunStamp) -> dict:
    return {**row, "run_id": run.run_id, "run_date": run.run_date}


def key_of(row: dict, column: str = "slide_id") -> str:
    """The slide a row (or a dead letter) is of."""
    if row.get(column):
        return str(row[column])
    import json

    try:  # a dead letter: its input's slide, if it names one
        named = json.loads(row.get("input") or "{}").get(column)
    except (ValueError, AttributeError):
        named = None
    return str(named or row.get("key") or "unknown")
