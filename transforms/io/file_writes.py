"""Beam's Parquet and text writes, with their in-flight files hidden from readers of the folder.

Beam's file sinks stage shards in ``beam-temp-<prefix>-<uuid>/`` beside the final files and
delete it when the write finalizes. A run that dies first leaves it there, half-written, and
``pandas.read_parquet(folder)`` (pyarrow datasets, Spark, DuckDB's hive reader) then fails on
it. Here the staging folder's name starts with ``_``, which those readers skip.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.io import parquetio, textio
from apache_beam.io.filesystems import FileSystems


class _HiddenTempDir:
    def _create_temp_dir(self, file_path_prefix: Any) -> str:
        staging = super()._create_temp_dir(file_path_prefix)  # type: ignore[misc]
        folder, name = FileSystems.split(staging)
        return FileSystems.join(folder, f"_{name}")


class _ParquetSink(_HiddenTempDir, parquetio._ParquetSink):
    pass


class _TextSink(_HiddenTempDir, textio._TextSink):
    pass


def write_parquet(prefix: str, schema: Any) -> beam.PTransform:
    """``WriteToParquet`` of row dicts to ``<prefix>-SSSSS-of-NNNNN.parquet``."""
    write = beam.io.WriteToParquet(
        prefix,
        schema=schema,
        file_name_suffix=".parquet",
        row_group_buffer_size=8 << 20,
        record_batch_size=1000,
    )
    write._sink.__class__ = _ParquetSink
    return write


def write_json_lines(prefix: str) -> beam.PTransform:
    """``WriteToText`` of JSON strings to ``<prefix>-SSSSS-of-NNNNN.jsonl``."""
    write = beam.io.WriteToText(prefix, file_name_suffix=".jsonl")
    write._sink.__class__ = _TextSink
    return write
