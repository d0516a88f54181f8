"""Read and validate slide and patch manifests (CSV/TSV, JSONL, Parquet; local or any fsspec URL).

A bad row never stops the run: it becomes a dead letter at stage ``ReadManifest`` naming the row,
the column and what is wrong. Slide URIs that are relative paths are taken relative to the
manifest's own folder, so a manifest and its slides can move together.
"""

from __future__ import annotations

import json
import math
import posixpath
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import fsspec

from transforms.errors import DEAD_LETTER, ManifestError, dead_letter

STAGE = "ReadManifest"
SLIDE_COLUMNS = ("slide_id", "uri")
PATCH_COLUMNS = ("slide_id", "x_px", "y_px", "size_px")
_RESERVED = {"slide_id", "uri", "mpp"}


def read_rows(uri: str) -> Iterator[dict[str, Any] | ManifestError]:
    """Yield each data row of a manifest as a dict with its 1-based ``_row`` number.

    A JSONL line that is not a JSON object is yielded as a ``ManifestError`` instead.
    """
    suffix = uri.lower().rsplit(".", 1)[-1]
    with fsspec.open(uri, "rb") as f:
        if suffix in ("csv", "tsv", "txt"):
            import pandas as pd

            frame = pd.read_csv(
                f,
                sep="\t" if suffix == "tsv" else ",",
                dtype=str,
                keep_default_na=False,
                encoding="utf-8-sig",
            )
            frame.columns = [str(c).strip() for c in frame.columns]
            for i, row in enumerate(frame.to_dict(orient="records"), start=1):
                yield {**row, "_row": i}
        elif suffix in ("jsonl", "ndjson", "json"):
            for i, line in enumerate(f, start=1):
                text = line.decode("utf-8-sig").strip()
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

            for i, row in enumerate(pq.read_table(f).to_pylist(), start=1):
                yield {**row, "_row": i}
        else:
            raise ManifestError(
                f"manifest {uri}: unknown file type .{suffix}; use .csv, .tsv, .jsonl or .parquet"
            )


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _text(row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    if _missing(value):
        raise ManifestError(f"row {row.get('_row')}: column {column!r} is missing or empty")
    return str(value).strip()


def _number(row: dict[str, Any], column: str) -> float:
    value = row.get(column)
    if _missing(value):
        raise ManifestError(f"row {row.get('_row')}: column {column!r} is missing or empty")
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise ManifestError(
            f"row {row.get('_row')}: column {column!r} must be a number, got {value!r}"
        ) from None
    if not math.isfinite(number):
        raise ManifestError(f"row {row.get('_row')}: column {column!r} is {value!r}, not finite")
    return number


def _integer(row: dict[str, Any], column: str, minimum: int) -> int:
    number = _number(row, column)
    if number != int(number) or number < minimum:
        raise ManifestError(
            f"row {row.get('_row')}: column {column!r} must be a whole number >= {minimum}, "
            f"got {row.get(column)!r}"
        )
    return int(number)


def resolve_uri(uri: str, manifest_uri: str) -> str:
    """A relative local path in a manifest is relative to the manifest's folder."""
    if "://" in uri or uri.startswith("/"):
        return uri
    scheme, sep, path = manifest_uri.rpartition("://")
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(path) or ".", uri))
    return f"{scheme}{sep}{joined}"


def validate_slide_row(row: dict[str, Any], manifest_uri: str = "") -> dict[str, Any]:
    """A clean slide row: ``slide_id, uri, mpp, metadata, row``; raise ``ManifestError``."""
    slide_id = _text(row, "slide_id")
    uri = resolve_uri(_text(row, "uri"), manifest_uri)
    mpp = None if _missing(row.get("mpp")) else _number(row, "mpp")
    if mpp is not None and not 0 < mpp < 1e4:
        raise ManifestError(f"row {row.get('_row')}: column 'mpp' must be > 0, got {mpp}")
    metadata = {
        str(k): str(v).strip()
        for k, v in row.items()
        if k not in _RESERVED and not str(k).startswith("_") and not _missing(v)
    }
    return {"slide_id": slide_id, "uri": uri, "mpp": mpp, "metadata": metadata, "row": row["_row"]}


def validate_patch_row(row: dict[str, Any]) -> dict[str, Any]:
    """A clean patch row: ``slide_id, x_px, y_px, size_px, level, row``; raise ``ManifestError``."""
    level = 0 if _missing(row.get("level")) else _integer(row, "level", 0)
    return {
        "slide_id": _text(row, "slide_id"),
        "x_px": _integer(row, "x_px", 0),
        "y_px": _integer(row, "y_px", 0),
        "size_px": _integer(row, "size_px", 1),
        "level": level,
        "row": row["_row"],
    }


class _ReadAndValidate(beam.DoFn):
    def __init__(self, kind: str) -> None:
        self._kind = kind

    def process(self, uri: str) -> Iterator[Any]:
        name = posixpath.basename(uri)
        try:
            for row in read_rows(uri):
                if isinstance(row, ManifestError):
                    yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(STAGE, name, row))
                    continue
                try:
                    if self._kind == "slides":
                        yield validate_slide_row(row, uri)
                    else:
                        yield validate_patch_row(row)
                except ManifestError as exc:
                    key = f"{name}:row {row['_row']}"
                    yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(STAGE, key, exc, row))
        except (OSError, ManifestError, ValueError) as exc:
            # An unreadable manifest file is one dead letter; the rest of the job still runs.
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(STAGE, name, exc, {"uri": uri}))


class _FirstOfDuplicates(beam.DoFn):
    """Keep the first row of each ``slide_id``; every later row is a dead letter."""

    def process(self, element: tuple[str, Iterable[dict[str, Any]]]) -> Iterator[Any]:
        slide_id, rows = element
        first, *rest = sorted(rows, key=lambda r: r["row"])
        yield first
        for row in rest:
            same = "the same uri" if row["uri"] == first["uri"] else f"uri {first['uri']!r}"
            error = ManifestError(
                f"duplicate slide_id {slide_id!r}: row {row['row']} repeats row {first['row']} "
                f"({same}); slide_id must be unique in the manifest"
            )
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(STAGE, slide_id, error, row))


def _by_slide_id(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return row["slide_id"], row


class ReadManifest(beam.PTransform):
    """Read a slide or patch manifest.

    In: the pipeline root. Out: a ``DoOutputsTuple`` with the clean rows as the main output
    (slide rows unique by ``slide_id``) and ``DEAD_LETTER`` rows.
    """

    def __init__(self, uri: str, kind: str) -> None:
        super().__init__()
        if kind not in ("slides", "patches"):
            raise ValueError(f"kind must be 'slides' or 'patches', got {kind!r}")
        self._uri = uri
        self._kind = kind

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        read = (
            pbegin
            | "ManifestUri" >> beam.Create([self._uri])
            | "ReadRows"
            >> beam.ParDo(_ReadAndValidate(self._kind)).with_outputs(DEAD_LETTER, main="rows")
        )
        if self._kind == "patches":
            return {"rows": read.rows, DEAD_LETTER: read[DEAD_LETTER]}
        unique = (
            read.rows
            | "KeyBySlideId" >> beam.Map(_by_slide_id)
            | "GroupBySlideId" >> beam.GroupByKey()
            | "DropDuplicates"
            >> beam.ParDo(_FirstOfDuplicates()).with_outputs(DEAD_LETTER, main="rows")
        )
        errors = (read[DEAD_LETTER], unique[DEAD_LETTER]) | "Errors" >> beam.Flatten()
        return {"rows": unique.rows, DEAD_LETTER: errors}
