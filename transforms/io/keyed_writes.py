"""Keyed Parquet writes for a stream: each key's rows of a table in one file, replaced whole.

    <folder>/<table>/<safe key>.parquet

A stream processes a slide again after a redelivery, a restart or a retried bundle. Each window's
rows are grouped by table and key (a slide), and the key's file is written whole to a temporary
name and moved into place: whatever is processed twice, the folder holds one set of rows per key
(the same bytes, or the later run's: a restarted stream, with a new run id, replaces them too).
Readers read ``<folder>/<table>/*.parquet`` as they read a
batch run's folder. Each write emits ``(key, table)`` once the file is in place, so what follows
(``stream.inbox``: the slide is done) happens only once its rows are durable.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator

import apache_beam as beam

from transforms.io.destinations import RunStamp
from transforms.io.schemas import Table, arrow_schema, safe_name


def keyed_file(folder: str, table: str, key: str) -> str:
    return f"{folder.rstrip('/')}/{table}/{safe_name(key)}.parquet"


class _WriteKey(beam.DoFn):
    def __init__(self, folder: str, table: Table, run: RunStamp) -> None:
        self._folder = folder
        self._table = table
        self._run = run

    def process(self, element: tuple[str, Iterable[dict]]) -> Iterator[tuple[str, str]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from transforms.core.remote_io import filesystem, open_uri

        key, rows = element
        stamped = [
            {**row, "run_id": self._run.run_id, "run_date": self._run.run_date} for row in rows
        ]
        schema = arrow_schema(self._table)
        data = pa.Table.from_pylist(
            [{c.name: r.get(c.name) for c in self._table.columns} for r in stamped], schema
        )
        uri = keyed_file(self._folder, self._table.name, key)
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "rows.parquet")
            pq.write_table(data, local)
            with open(local, "rb") as src, open_uri(uri + ".tmp", "wb", auto_mkdir=True) as dst:
                dst.write(src.read())
        fs, path = filesystem(uri)
        fs.mv(path + ".tmp", path)  # in place whole: a reader never sees half a file
        yield key, self._table.name


class WriteKeyedTables(beam.PTransform):
    """``{table name: rows}`` (windowed) -> one Parquet file per table and key in ``folder``.

    ``keys``: the column that keys each table's rows (default ``slide_id``; dead letters are keyed
    by their slide when they name one, else by their own key). Out: ``(key, table)`` for each file
    in place.
    """

    def __init__(
        self, folder: str, run: RunStamp, tables: Iterable[Table], key: str = "slide_id"
    ) -> None:
        super().__init__()
        self._folder = folder
        self._run = run
        self._tables = {t.name: t for t in tables}
        self._key = key

    def expand(self, tables: dict[str, beam.PCollection]) -> beam.PCollection:
        key = self._key
        written = []
        for name, rows in tables.items():
            keyed = rows | f"Key/{name}" >> beam.Map(lambda r, k=key: (_key_of(r, k), r))
            written.append(
                keyed
                | f"Group/{name}" >> beam.GroupByKey()
                | f"Write/{name}"
                >> beam.ParDo(_WriteKey(self._folder, self._tables[name], self._run))
            )
        return written | "AllWritten" >> beam.Flatten()


def _key_of(row: dict, column: str) -> str:
    if row.get(column):
        return str(row[column])
    import json

    try:  # a dead letter: its input's slide, if it names one
        named = json.loads(row.get("input") or "{}").get(column)
    except (ValueError, AttributeError):
        named = None
    return str(named or row.get("key") or "unknown")
