"""Read and validate slide, patch and document manifests: CSV/TSV, JSONL or Parquet files (local
or any fsspec URL), or a BigQuery table (``bq://PROJECT.DATASET.TABLE``).

A bad row never stops the run: it becomes a dead letter at stage ``ReadManifest`` naming the row,
the column and what is wrong. Slide URIs that are relative paths are taken relative to the
manifest's own folder, so a manifest and its slides can move together.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from google.api_core.exceptions import GoogleAPIError

from transforms.core.errors import DEAD_LETTER, ManifestError, dead_letter
from transforms.core.remote_io import filesystem, open_uri
from transforms.io.bigquery import BigQueryDataset, parse_table

STAGE = "ReadManifest"
_CHUNK_ROWS = 50_000
"""Rows of a CSV or Parquet manifest held at once: manifests are streamed, never read whole."""


@dataclass(frozen=True)
class ManifestSource:
    """Where a manifest is: a file (local or any fsspec URL), or a BigQuery table."""

    uri: str
    bigquery: BigQueryDataset | None = None
    table: str | None = None

    @property
    def name(self) -> str:
        """How dead letters name the manifest: its file name, or its table."""
        return self.table or posixpath.basename(self.uri)


def manifest_source(
    uri: str, name: str = "manifest", endpoint: str | None = None
) -> ManifestSource:
    """Parse ``uri`` once: ``bq://PROJECT.DATASET.TABLE`` (read through ``endpoint``; None:
    Google's) or a file. A malformed table name is a ``ConfigError`` naming ``name``."""
    if uri.startswith("bq://"):
        dataset, table = parse_table(uri, name, endpoint)
        return ManifestSource(uri, dataset, table)
    return ManifestSource(uri)


def read_rows(source: ManifestSource | str) -> Iterator[dict[str, Any] | ManifestError]:
    """Yield each data row of a manifest as a dict with its 1-based ``_row`` number.

    A JSONL line that is not a JSON object is yielded as a ``ManifestError`` instead.
    """
    if isinstance(source, str):
        source = manifest_source(source)
    if source.bigquery is not None and source.table is not None:
        from transforms.io.bigquery import read_table_rows

        for i, row in enumerate(read_table_rows(source.bigquery, source.table), start=1):
            yield {k: ("" if v is None else v) for k, v in row.items()} | {"_row": i}
        return
    uri = source.uri
    suffix = uri.lower().rsplit(".", 1)[-1]
    with open_uri(uri, "rb") as f:
        if suffix in ("csv", "tsv", "txt"):
            import pandas as pd

            chunks = pd.read_csv(
                f,
                sep="\t" if suffix == "tsv" else ",",
                dtype=str,
                keep_default_na=False,
                encoding="utf-8-sig",
                chunksize=_CHUNK_ROWS,
            )
            records = (row for frame in chunks for row in _stripped_records(frame))
            for i, row in enumerate(records, start=1):
                yield {**row, "_row": i}
        elif suffix in ("jsonl", "ndjson", "json"):
            for i, line in enumerate(f, start=1):
                try:
                    text = line.decode("utf-8-sig").strip()
                except UnicodeDecodeError as exc:
                    yield ManifestError(
                        f"row {i}: not valid UTF-8 ({exc.reason} at byte {exc.start})"
                    )
                    continue
                if not text:
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as exc:
                    yield ManifestError(f"row {i}: not valid JSON ({exc.msg})")
                    continue
                if not isinstance(row, dict):
                    yield ManifestError(
                        f"row {i}: expected a JSON object, got {type(row).__name__}"
                    )
                    continue
                yield {**row, "_row": i}
        elif suffix in ("parquet", "pq"):
            import pyarrow.parquet as pq

            batches = pq.ParquetFile(f).iter_batches(batch_size=_CHUNK_ROWS)
            records = (row for batch in batches for row in batch.to_pylist())
            for i, row in enumerate(records, start=1):
                yield {**row, "_row": i}
        else:
            raise ManifestError(
                f"manifest {uri}: unknown file type .{suffix}; use .csv, .tsv, .jsonl or .parquet"
            )


_SAMPLE_LINES = 1000


def manifest_columns(source: ManifestSource) -> list[str]:
    """The column names of a manifest, read cheaply: a CSV's header, a Parquet file's schema,
    a BigQuery table's schema, or the keys of a JSONL file's first 1,000 objects.

    Raises:
      FileNotFoundError: the file or table does not exist.
      ManifestError: the file cannot be read as its kind of manifest.
    """
    if source.bigquery is not None and source.table is not None:
        from google.api_core.exceptions import NotFound

        from transforms.io.bigquery import client

        try:
            table = client(source.bigquery).get_table(source.bigquery.table_id(source.table))
        except NotFound as exc:
            raise FileNotFoundError(f"no such BigQuery table: {source.uri}") from exc
        return [field.name for field in table.schema]
    suffix = source.uri.lower().rsplit(".", 1)[-1]
    fs, path = filesystem(source.uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"no such file: {source.uri}")
    with fs.open(path, "rb") as f:
        if suffix in ("csv", "tsv", "txt"):
            import pandas as pd

            sep = "\t" if suffix == "tsv" else ","
            header = pd.read_csv(f, sep=sep, dtype=str, nrows=0, encoding="utf-8-sig")
            return [str(c).strip() for c in header.columns]
        if suffix in ("parquet", "pq"):
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(f).schema_arrow.names)
        if suffix in ("jsonl", "ndjson", "json"):
            keys: dict[str, None] = {}
            for i, line in enumerate(f):
                if i >= _SAMPLE_LINES:
                    break
                try:
                    row = json.loads(line.decode("utf-8-sig") or "null")
                except (UnicodeDecodeError, json.JSONDecodeError):
                    continue  # a bad line is that row's dead letter, not the file's
                if isinstance(row, dict):
                    keys.update(dict.fromkeys(row))
            return list(keys)
    raise ManifestError(
        f"manifest {source.uri}: unknown file type .{suffix}; use .csv, .tsv, .jsonl or .parquet"
    )


def _stripped_records(frame: Any) -> list[dict[str, Any]]:
    """A CSV chunk's rows, with blanks around the column names dropped."""
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.to_dict(orient="records")


_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
"""A number as a manifest cell may write it: no underscores, no words."""


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def text_cell(row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    if is_missing(value):
        raise ManifestError(f"row {row.get('_row')}: column {column!r} is missing or empty")
    return str(value).strip()


def number_cell(row: dict[str, Any], column: str) -> float:
    value = row.get(column)
    if is_missing(value):
        raise ManifestError(f"row {row.get('_row')}: column {column!r} is missing or empty")
    try:
        if isinstance(value, bool) or value is None:
            raise ValueError
        if isinstance(value, str) and not _DECIMAL.fullmatch(value.strip()):
            raise ValueError  # float() also takes "0_5" (as 5) and "infinity"
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise ManifestError(
            f"row {row.get('_row')}: column {column!r} must be a number, got {value!r}"
        ) from None
    if not math.isfinite(number):
        raise ManifestError(f"row {row.get('_row')}: column {column!r} is {value!r}, not finite")
    return number


def integer_cell(row: dict[str, Any], column: str, minimum: int) -> int:
    number = number_cell(row, column)
    if number != int(number) or number < minimum:
        raise ManifestError(
            f"row {row.get('_row')}: column {column!r} must be a whole number >= {minimum}, "
            f"got {row.get(column)!r}"
        )
    return int(number)


def resolve_uri(uri: str, manifest_uri: str) -> str:
    """A relative local path in a manifest is relative to the manifest's folder."""
    if "://" in uri or uri.startswith("/") or manifest_uri.startswith("bq://"):
        return uri
    scheme, sep, path = manifest_uri.rpartition("://")
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(path) or ".", uri))
    return f"{scheme}{sep}{joined}"


@dataclass(frozen=True)
class RowRule:
    """What one kind of manifest row must hold, given by the pipeline that reads it (``io``
    knows no slide or document rule): its name, the id column that must be unique (None: no
    id), the columns the file must have, and ``check(row, manifest_uri)``, which turns a raw
    row into a clean one or raises ``ManifestError`` naming the row and the column."""

    kind: str
    id_column: str | None
    required: tuple[str, ...]
    check: Callable[[dict[str, Any], str], dict[str, Any]]


def extra_columns(row: dict[str, Any], reserved: Iterable[str]) -> dict[str, str]:
    """A row's other columns (not ``reserved``, not ours, not empty) as text: its metadata."""
    return {
        str(k): str(v).strip()
        for k, v in row.items()
        if k not in reserved and not str(k).startswith("_") and not is_missing(v)
    }


MAX_ID_CHARS = 256
"""A slide or document id longer than this is a dead letter: ids become file names, stage keys
and report rows (a 5 MB id made a 10 MB report for 2 slides)."""


def _checked_id(row: dict[str, Any], id_column: str | None) -> dict[str, Any]:
    if id_column is not None and len(row[id_column]) > MAX_ID_CHARS:
        raise ManifestError(
            f"row {row.get('row')}: column {id_column!r} has {len(row[id_column]):,} "
            f"characters, over the {MAX_ID_CHARS} limit"
        )
    return row


class _ReadAndValidate(beam.DoFn):
    def __init__(self, rule: RowRule, rename: dict[str, str]) -> None:
        self._rule = rule
        self._rename = rename

    def process(self, source: ManifestSource) -> Iterator[Any]:
        name, uri = source.name, source.uri
        try:
            for row in read_rows(source):
                if isinstance(row, ManifestError):
                    yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(STAGE, name, row))
                    continue
                for column, ours in self._rename.items():
                    if column in row:
                        row[ours] = row.pop(column)
                try:
                    yield _checked_id(self._rule.check(row, uri), self._rule.id_column)
                except ManifestError as exc:
                    key = f"{name}:row {row['_row']}"
                    yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(STAGE, key, exc, row))
        except (OSError, ManifestError, ValueError, GoogleAPIError) as exc:
            # An unreadable manifest file is one dead letter; the rest of the job still runs.
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(STAGE, name, exc, {"uri": uri}))


class _FirstOfDuplicates(beam.DoFn):
    """Keep the first row of each ``slide_id`` or ``doc_id``; later rows become dead letters."""

    def __init__(self, id_column: str) -> None:
        self._id_column = id_column

    def process(self, element: tuple[str, Iterable[dict[str, Any]]]) -> Iterator[Any]:
        key, rows = element
        first, *rest = sorted(rows, key=lambda r: r["row"])
        yield first
        for row in rest:
            error = ManifestError(
                f"duplicate {self._id_column} {key!r}: row {row['row']} repeats row "
                f"{first['row']}; {self._id_column} must be unique in the manifest"
            )
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(STAGE, key, error, row))


class KeyById(beam.DoFn):
    """A manifest row -> ``(row[id_column], row)``."""

    def __init__(self, id_column: str) -> None:
        self._id_column = id_column

    def process(self, row: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        yield row[self._id_column], row


class ReadManifest(beam.PTransform):
    """Read a slide, patch or document manifest.

    In: the pipeline root. Out: a dict with the clean ``rows`` (slides unique by ``slide_id``,
    documents by ``doc_id``) and ``DEAD_LETTER`` rows.
    """

    def __init__(
        self, source: ManifestSource | str, rule: RowRule, rename: dict[str, str] | None = None
    ) -> None:
        """``source``: a parsed ``ManifestSource`` (a plain string is a file's URI); ``rule``:
        what a row must hold (the pipeline's); ``rename`` maps a file's column names to ours,
        e.g. ``{"pmid": "doc_id"}``."""
        super().__init__()
        self._source = manifest_source(source) if isinstance(source, str) else source
        self._rule = rule
        self._rename = dict(rename or {})

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        read = (
            pbegin
            | "ManifestUri" >> beam.Create([self._source])
            | "ReadRows"
            >> beam.ParDo(_ReadAndValidate(self._rule, self._rename)).with_outputs(
                DEAD_LETTER, main="rows"
            )
        )
        id_column = self._rule.id_column
        if id_column is None:
            return {"rows": read.rows, DEAD_LETTER: read[DEAD_LETTER]}
        unique = (
            read.rows
            | "KeyById" >> beam.ParDo(KeyById(id_column))
            | "GroupById" >> beam.GroupByKey()
            | "DropDuplicates"
            >> beam.ParDo(_FirstOfDuplicates(id_column)).with_outputs(DEAD_LETTER, main="rows")
        )
        errors = (read[DEAD_LETTER], unique[DEAD_LETTER]) | "Errors" >> beam.Flatten()
        return {"rows": unique.rows, DEAD_LETTER: errors}


class _CheckRow(beam.DoFn):
    def __init__(self, rule: RowRule, stage: str) -> None:
        self._rule = rule
        self._stage = stage

    def process(self, row: dict[str, Any]) -> Iterator[Any]:
        try:
            yield _checked_id(self._rule.check(dict(row), ""), self._rule.id_column)
        except ManifestError as exc:
            key = str(row.get(self._rule.id_column or "", "") or row.get("_row"))
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(self._stage, key, exc, row))


class CheckRows(beam.PTransform):
    """Raw rows that came from elsewhere than a manifest file (a stream's notifications) ->
    clean rows by ``rule``, as ``ReadManifest`` makes them; a bad row is a dead letter at
    ``stage``. Out: a dict with ``rows`` and ``DEAD_LETTER``."""

    def __init__(self, rule: RowRule, stage: str) -> None:
        super().__init__()
        self._fn = _CheckRow(rule, stage)

    def expand(self, rows: beam.PCollection) -> dict[str, beam.PCollection]:
        out = rows | "Check" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER, main="rows")
        return {"rows": out.rows, DEAD_LETTER: out[DEAD_LETTER]}
