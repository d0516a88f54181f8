"""Parquet and JSON-lines files through Beam's public ``fileio.WriteToFiles``, with their
in-flight files hidden from readers of the folder.

``WriteToFiles`` writes each bundle's file into a staging folder and moves the finished files to
their final names at the end. A run that dies first leaves that folder behind, half-written, and
``pandas.read_parquet(folder)`` (pyarrow datasets, Spark, DuckDB's hive reader) would fail on it.
Here the staging folder sits inside the table's folder under a name starting with ``_``, which
those readers skip, and it is removed once the files are in place. A run that writes no rows
still leaves one empty file with the table's schema, so readers find the table.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.value_provider import StaticValueProvider

ROWS_PER_BATCH = 1000
ROW_GROUP_BYTES = 8 << 20
"""Rows are converted to Arrow 1,000 at a time and written as row groups of about 8 MiB."""


def parquet_encoding(schema: Any) -> dict[str, Any]:
    """Writer options for ``schema``: zstd throughout; float32 vectors (embeddings) without
    dictionaries and byte-stream-split, since their values never repeat. Measured on 384-d
    embeddings: 1,329 bytes per row, against 2,401 with pyarrow's defaults (raw: 1,536)."""
    import pyarrow as pa

    vectors = [
        f"{field.name}.list.element"
        for field in schema
        if pa.types.is_list(field.type) and pa.types.is_float32(field.type.value_type)
    ]
    plain = [f.name for f in schema if f"{f.name}.list.element" not in vectors]
    if not vectors:
        return {"compression": "zstd"}
    return {
        "compression": "zstd",
        "use_dictionary": plain,
        "column_encoding": dict.fromkeys(vectors, "BYTE_STREAM_SPLIT"),
    }


class ParquetSink(fileio.FileSink):
    """A ``FileSink`` of row dicts to one Parquet file with ``schema`` (a ``pyarrow.Schema``)."""

    def __init__(self, schema: Any) -> None:
        self._schema = schema
        self._writer: Any = None
        self._rows: list[dict] = []
        self._batches: list[Any] = []
        self._buffered_bytes = 0

    def open(self, fh: Any) -> None:
        import pyarrow.parquet as pq

        self._writer = pq.ParquetWriter(fh, self._schema, **parquet_encoding(self._schema))
        self._rows, self._batches, self._buffered_bytes = [], [], 0

    def write(self, record: dict) -> None:
        self._rows.append(record)
        if len(self._rows) >= ROWS_PER_BATCH:
            self._to_batch()
            if self._buffered_bytes >= ROW_GROUP_BYTES:
                self._write_row_group()

    def flush(self) -> None:
        """Write what is buffered and the file's footer (Beam closes the file after this)."""
        self._to_batch()
        self._write_row_group()
        self._writer.close()

    def _to_batch(self) -> None:
        import pyarrow as pa

        if self._rows:
            batch = pa.RecordBatch.from_pylist(self._rows, schema=self._schema)
            self._batches.append(batch)
            self._buffered_bytes += batch.nbytes
            self._rows = []

    def _write_row_group(self) -> None:
        import pyarrow as pa

        if self._batches:
            self._writer.write_table(pa.Table.from_batches(self._batches, schema=self._schema))
            self._batches, self._buffered_bytes = [], 0


SinkFactory = Callable[[], fileio.FileSink]


class _SinkPerFile:
    """``WriteToFiles``' sink argument: a new sink for every file (of any destination)."""

    def __init__(self, sink_factory: SinkFactory) -> None:
        self._factory = sink_factory

    def __call__(self, destination: Any) -> fileio.FileSink:
        return self._factory()


def _file_naming(run_id: str, suffix: str) -> Callable[..., str]:
    def name(window: Any, pane: Any, shard: int, total: int, compression: Any, dest: Any) -> str:
        return f"{run_id}-{shard:05d}-of-{total:05d}{suffix}"

    return name


class _Finish(beam.DoFn):
    """After the files are in place: remove the staging folder; with no file, write one empty."""

    def __init__(
        self, folder: str, staging: str, run_id: str, suffix: str, sink_factory: SinkFactory
    ) -> None:
        self._folder = folder
        self._staging = staging
        self._run_id = run_id
        self._suffix = suffix
        self._factory = sink_factory

    def process(self, _: Any, written: list[Any]) -> Iterator[str]:
        if not written:
            path = FileSystems.join(self._folder, f"{self._run_id}-00000-of-00001{self._suffix}")
            fh, sink = FileSystems.create(path), self._factory()
            sink.open(fh)
            sink.flush()
            fh.close()
            yield path
        if FileSystems.exists(self._staging):
            FileSystems.delete([self._staging])
        for result in written:
            yield FileSystems.join(self._folder, result.file_name)


class WriteFiles(beam.PTransform):
    """Elements -> files ``<folder>/<run_id>-SSSSS-of-NNNNN<suffix>``; out: the files' paths.

    In-flight files are staged in ``<folder>/_beam-temp-<run_id>-<random>/`` (``staging``).
    """

    def __init__(self, folder: str, run_id: str, suffix: str, sink_factory: SinkFactory) -> None:
        super().__init__()
        self._folder = folder.rstrip("/")
        self._run_id = run_id
        self._suffix = suffix
        self._factory = sink_factory
        self.staging = FileSystems.join(self._folder, f"_beam-temp-{run_id}-{uuid.uuid4().hex[:8]}")

    def expand(self, elements: beam.PCollection) -> beam.PCollection:
        written = elements | "WriteToFiles" >> fileio.WriteToFiles(
            path=self._folder,
            file_naming=_file_naming(self._run_id, self._suffix),
            # a ValueProvider: Beam 2.77 calls .get() on it, although a str is documented
            temp_directory=StaticValueProvider(str, self.staging),
            sink=_SinkPerFile(self._factory),
            shards=1,
        )
        return (
            elements.pipeline
            | "Once" >> beam.Create([None])
            | "Finish"
            >> beam.ParDo(
                _Finish(self._folder, self.staging, self._run_id, self._suffix, self._factory),
                beam.pvalue.AsList(written),
            )
        )


def write_parquet(folder: str, run_id: str, schema: Any) -> WriteFiles:
    """Row dicts -> Parquet files with ``schema`` in ``folder``, named for the run."""
    return WriteFiles(folder, run_id, ".parquet", functools.partial(ParquetSink, schema))


def write_json_lines(folder: str, run_id: str) -> WriteFiles:
    """JSON strings -> ``.jsonl`` files in ``folder``, named for the run."""
    return WriteFiles(folder, run_id, ".jsonl", fileio.TextSink)
