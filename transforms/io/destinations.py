"""Where a run's results go, how each table is written there, and which results exist already.

A destination is a folder (local or ``gs://``) of Parquet files, one set per run, or a BigQuery
dataset (``bq://PROJECT.DATASET``) where a rerun replaces earlier rows of the same key. Heatmaps
and other files go to ``artifacts``: a folder, local or ``gs://``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from transforms.core.errors import ConfigError
from transforms.io.bigquery import BigQueryDataset, WriteToBigQueryTable, parse_dataset, query_keys
from transforms.io.commits import commit, pending_dir
from transforms.io.file_writes import write_json_lines, write_parquet
from transforms.io.schemas import ERRORS, Table, arrow_schema, safe_name

DEFAULT_OUTPUT = "results"
RUN_ID_PATTERN = "[A-Za-z0-9_-]{1,64}"
"""A run id: it is stamped on every row and starts file and folder names."""


@dataclass(frozen=True)
class RunStamp:
    """Stamped on every row: the run's id and its UTC start date (BigQuery's partition)."""

    run_id: str
    run_date: dt.date


@dataclass(frozen=True)
class Destination:
    """A folder of Parquet files or a BigQuery dataset, and a folder for artifacts."""

    folder: str | None = None
    bigquery: BigQueryDataset | None = None
    temp_location: str | None = None
    artifacts: str | None = None

    def describe(self) -> str:
        if self.bigquery is not None:
            return f"bq://{self.bigquery.project}.{self.bigquery.dataset}"
        return str(self.folder)


def destination(
    output: str | None,
    artifacts: str | None = None,
    temp_location: str | None = None,
    needs_artifacts: bool = True,
    endpoint: str | None = None,
) -> Destination:
    """Validate ``output`` (default ``results``), ``artifacts`` and ``temp_location``; a
    ``ConfigError`` names the field. ``endpoint``: BigQuery's API endpoint (None: Google's)."""
    output = output or DEFAULT_OUTPUT
    if not output.startswith("bq://"):
        folder = output.rstrip("/")
        return Destination(folder=folder, artifacts=(artifacts or folder).rstrip("/"))
    target = parse_dataset(output, "`output`", endpoint)
    if not temp_location or not temp_location.startswith("gs://"):
        raise ConfigError(
            "`temp_location` gs://BUCKET/PREFIX is required with a bq:// `output`: BigQuery "
            "load jobs read their files from Cloud Storage"
        )
    if needs_artifacts and not artifacts:
        raise ConfigError(
            "`artifacts` (a gs:// or local folder for heatmaps) is required with a bq:// "
            "`output`, unless heatmaps are off (`no_heatmaps`)"
        )
    return Destination(
        bigquery=target,
        temp_location=temp_location.rstrip("/"),
        artifacts=artifacts.rstrip("/") if artifacts else None,
    )


class _PrepareDataset(beam.DoFn):
    """Once, when the job runs: create the dataset (Beam's load jobs need it) and drop staging
    tables that runs which died before their merge left behind."""

    def __init__(self, target: BigQueryDataset) -> None:
        self._target = target

    def process(self, _: Any) -> Iterator[None]:
        from transforms.io.bigquery import prepare_dataset

        prepare_dataset(self._target)
        yield None


class _AfterPrepared(beam.DoFn):
    """Rows pass once the dataset is prepared: the side input orders the two."""

    def process(self, row: dict, prepared: list[None]) -> Iterator[dict]:
        yield row


class _StampRun(beam.DoFn):
    def __init__(self, run: RunStamp) -> None:
        self._run = run

    def process(self, row: dict) -> Iterator[dict]:
        yield {**row, "run_id": self._run.run_id, "run_date": self._run.run_date}


def _to_json(row: dict) -> str:
    return json.dumps(row, sort_keys=True, default=str)


class WriteRows(beam.PTransform):
    """Rows of ``table`` -> the destination, each stamped with the run.

    Folders get Parquet under ``<folder>/<table>/`` (dead letters as JSON lines under
    ``errors/``), file names starting with the run id so runs never overwrite each other.
    BigQuery gets ``WriteToBigQueryTable``, an idempotent replace of the staged keys, after
    ``prepared`` (a PCollection computed once the dataset exists) when one is given.
    """

    def __init__(
        self,
        table: Table,
        dest: Destination,
        run: RunStamp,
        prepared: beam.PCollection | None = None,
    ) -> None:
        super().__init__()
        self._table = table
        self._dest = dest
        self._run = run
        self._prepared = prepared

    def expand(self, rows: beam.PCollection) -> Any:
        stamped = rows | "StampRun" >> beam.ParDo(_StampRun(self._run))
        if self._dest.bigquery is not None:
            if self._prepared is not None:
                stamped = stamped | "AfterPrepared" >> beam.ParDo(
                    _AfterPrepared(), beam.pvalue.AsList(self._prepared)
                )
            return stamped | "ToBigQuery" >> WriteToBigQueryTable(
                self._table, self._dest.bigquery, self._run.run_id, str(self._dest.temp_location)
            )
        # Written where no reader looks until the run commits every table (``commits.py``).
        folder = f"{pending_dir(str(self._dest.folder), self._run.run_id)}/{self._table.name}"
        if self._table is ERRORS:
            return (
                stamped
                | "ToJson" >> beam.Map(_to_json)
                | "WriteJsonLines" >> write_json_lines(folder, self._run.run_id)
            )
        return stamped | "WriteParquet" >> write_parquet(
            folder, self._run.run_id, arrow_schema(self._table)
        )


class _Commit(beam.DoFn):
    """Once every table is written: move the run's files into place together."""

    def __init__(self, folder: str, run_id: str) -> None:
        self._folder = folder
        self._run_id = run_id

    def process(self, _: Any, files: list[str]) -> Iterator[str]:
        yield from commit(self._folder, self._run_id, files)


class WriteTables(beam.PTransform):
    """``{table name: rows}`` -> every table written to the destination, each by its schema
    among ``tables`` (the pipeline says which: its output kinds' or tasks' tables, summaries,
    errors).

        A BigQuery dataset is prepared once, by the job when it runs: never at launch, so a
        ``--dry_run`` or a staged template touches nothing and needs no credentials.
    """

    def __init__(self, dest: Destination, run: RunStamp, tables: Sequence[Table]) -> None:
        super().__init__()
        self._dest = dest
        self._run = run
        self._tables = {table.name: table for table in tables}

    def expand(self, tables: dict[str, beam.PCollection]) -> dict[str, Any]:
        prepared = None
        if self._dest.bigquery is not None:
            prepared = (
                next(iter(tables.values())).pipeline
                | "Once" >> beam.Create([None])
                | "PrepareDataset" >> beam.ParDo(_PrepareDataset(self._dest.bigquery))
            )
        written = {
            name: rows | name >> WriteRows(self._tables[name], self._dest, self._run, prepared)
            for name, rows in tables.items()
        }
        if self._dest.folder is None:
            return written
        files = list(written.values()) | "AllFiles" >> beam.Flatten()
        committed = (
            files.pipeline
            | "OnceWritten" >> beam.Create([None])
            | "Commit"
            >> beam.ParDo(_Commit(self._dest.folder, self._run.run_id), beam.pvalue.AsList(files))
        )
        return dict.fromkeys(written, committed)


def report_dir(dest: Destination, run: RunStamp) -> str | None:
    """Where a run's HTML report goes: ``<artifacts>/report/<run_id>`` (None without an
    artifacts folder, e.g. a BigQuery run with --no_heatmaps and no --artifacts)."""
    if not dest.artifacts:
        return None
    return f"{dest.artifacts.rstrip('/')}/report/{safe_name(run.run_id)}"


def existing_keys(dest: Destination, table: Table, columns: tuple[str, ...]) -> set[tuple]:
    """Distinct ``columns`` of the results already in ``dest``'s ``table`` (none: empty)."""
    if dest.bigquery is not None:
        return query_keys(dest.bigquery, table, columns)

    from transforms.core.remote_io import filesystem, read_parquet

    fs, root = filesystem(f"{dest.folder}/{table.name}")
    keys: set[tuple] = set()
    for path in sorted(fs.glob(f"{root}/*.parquet")):
        with fs.open(path, "rb") as f:
            data = read_parquet(f, list(columns)).to_pylist()
        keys.update(tuple(row[c] for c in columns) for row in data)
    return keys
