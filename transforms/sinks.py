"""Row schemas, defined once, and the transforms that write them.

Each table is a tuple of ``Column``s; ``arrow_schema`` and ``bigquery_schema`` derive the Parquet
and BigQuery schemas from the same definition, so the two sinks cannot drift apart. Types follow
BigQuery's names: STRING, INT64, FLOAT64, RECORD; modes NULLABLE, REQUIRED, REPEATED.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import apache_beam as beam


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    mode: str = "NULLABLE"
    fields: tuple[Column, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]


_KEY_VALUE = (Column("key", "STRING", "REQUIRED"), Column("value", "STRING"))

PATCH_PREDICTIONS = Table(
    "patch_predictions",
    (
        Column("slide_id", "STRING", "REQUIRED"),
        Column("model_name", "STRING", "REQUIRED"),
        Column("model_version", "STRING", "REQUIRED"),
        Column("x_px", "INT64", "REQUIRED", description="level-0 left edge"),
        Column("y_px", "INT64", "REQUIRED", description="level-0 top edge"),
        Column("size_px", "INT64", "REQUIRED", description="level-0 edge of the square patch"),
        Column("level", "INT64", "REQUIRED", description="pyramid level the pixels were read from"),
        Column("mpp", "FLOAT64", description="microns per pixel of the pixels the model saw"),
        Column("probs", "FLOAT64", "REPEATED"),
        Column("label", "INT64", "REQUIRED", description="argmax of probs"),
        Column("run_id", "STRING", "REQUIRED"),
    ),
)

_CLASS_STATS = (
    Column("class_mean_prob", "FLOAT64", "REPEATED"),
    Column("class_fraction", "FLOAT64", "REPEATED", description="share of patches with label c"),
    Column("class_max_prob", "FLOAT64", "REPEATED"),
)

SLIDE_SUMMARIES = Table(
    "slide_summaries",
    (
        Column("slide_id", "STRING", "REQUIRED"),
        Column("model_name", "STRING", "REQUIRED"),
        Column("model_version", "STRING", "REQUIRED"),
        Column("uri", "STRING", "REQUIRED"),
        Column("width_px", "INT64", "REQUIRED"),
        Column("height_px", "INT64", "REQUIRED"),
        Column("slide_mpp", "FLOAT64"),
        Column("patches_planned", "INT64", "REQUIRED"),
        Column("patch_count", "INT64", "REQUIRED", description="patches with a prediction"),
        Column("tissue_area_mm2", "FLOAT64", description="from the tissue mask and the slide mpp"),
        *_CLASS_STATS,
        Column("heatmap_uri", "STRING"),
        Column("metadata", "RECORD", "REPEATED", _KEY_VALUE, "extra slide manifest columns"),
        Column("run_id", "STRING", "REQUIRED"),
    ),
)

CASE_SUMMARIES = Table(
    "case_summaries",
    (
        Column("group_by", "STRING", "REQUIRED", description="the manifest column grouped by"),
        Column("group_value", "STRING", "REQUIRED"),
        Column("model_name", "STRING", "REQUIRED"),
        Column("model_version", "STRING", "REQUIRED"),
        Column("slide_count", "INT64", "REQUIRED"),
        Column("slide_ids", "STRING", "REPEATED"),
        Column("patch_count", "INT64", "REQUIRED"),
        Column("tissue_area_mm2", "FLOAT64"),
        *_CLASS_STATS,
        Column("run_id", "STRING", "REQUIRED"),
    ),
)

_TEXT_KEYS = (
    Column("doc_id", "STRING", "REQUIRED"),
    Column("model_name", "STRING", "REQUIRED"),
    Column("model_version", "STRING", "REQUIRED"),
)
_TEXT_SHAPE = (
    Column("n_tokens", "INT64", "REQUIRED", description="tokens in the document, no specials"),
    Column("n_windows", "INT64", "REQUIRED", description="model windows the document took"),
    Column("run_id", "STRING", "REQUIRED"),
)

TEXT_ENTITIES = Table(
    "text_entities",
    (
        *_TEXT_KEYS,
        Column(
            "entities",
            "RECORD",
            "REPEATED",
            (
                Column("label", "STRING", "REQUIRED"),
                Column("score", "FLOAT64", "REQUIRED"),
                Column("start", "INT64", "REQUIRED", description="character offset, inclusive"),
                Column("end", "INT64", "REQUIRED", description="character offset, exclusive"),
                Column("text", "STRING", "REQUIRED", description="equals text[start:end]"),
            ),
        ),
        *_TEXT_SHAPE,
    ),
)

TEXT_LABELS = Table(
    "text_labels",
    (
        *_TEXT_KEYS,
        Column(
            "labels",
            "RECORD",
            "REPEATED",
            (Column("label", "STRING", "REQUIRED"), Column("score", "FLOAT64", "REQUIRED")),
            "every label with its score, best first",
        ),
        Column("top_label", "STRING", "REQUIRED"),
        *_TEXT_SHAPE,
    ),
)

TEXT_EMBEDDINGS = Table(
    "text_embeddings",
    (
        *_TEXT_KEYS,
        Column("embedding", "FLOAT64", "REPEATED", description="mean-pooled, L2-normalised"),
        Column("dim", "INT64", "REQUIRED"),
        *_TEXT_SHAPE,
    ),
)

ERRORS = Table(
    "errors",
    (
        Column("stage", "STRING", "REQUIRED"),
        Column("key", "STRING", "REQUIRED"),
        Column("error_type", "STRING", "REQUIRED"),
        Column("message", "STRING", "REQUIRED"),
        Column("input", "STRING", description="the failed input as JSON, bulk data dropped"),
        Column("run_id", "STRING", "REQUIRED"),
    ),
)

_ARROW_TYPES = {"STRING": "string", "INT64": "int64", "FLOAT64": "float64", "BOOL": "bool_"}


def _arrow_type(column: Column) -> Any:
    import pyarrow as pa

    if column.type == "RECORD":
        base = pa.struct([_arrow_field(c) for c in column.fields])
    else:
        base = getattr(pa, _ARROW_TYPES[column.type])()
    return pa.list_(base) if column.mode == "REPEATED" else base


def _arrow_field(column: Column) -> Any:
    import pyarrow as pa

    return pa.field(column.name, _arrow_type(column), nullable=column.mode != "REQUIRED")


def arrow_schema(table: Table) -> Any:
    """The pyarrow schema of ``table``."""
    import pyarrow as pa

    return pa.schema([_arrow_field(c) for c in table.columns])


def bigquery_schema(table: Table) -> dict[str, list[dict[str, Any]]]:
    """The BigQuery JSON schema of ``table`` (``{"fields": [...]}``)."""

    def field(column: Column) -> dict[str, Any]:
        out: dict[str, Any] = {"name": column.name, "type": column.type, "mode": column.mode}
        if column.fields:
            out["fields"] = [field(c) for c in column.fields]
        if column.description:
            out["description"] = column.description
        return out

    return {"fields": [field(c) for c in table.columns]}


def metadata_record(metadata: dict[str, str]) -> list[dict[str, str]]:
    """A ``{key: value}`` dict as the REPEATED RECORD ``metadata`` column."""
    return [{"key": k, "value": v} for k, v in sorted(metadata.items())]


class _AddRunId(beam.DoFn):
    def __init__(self, run_id: str) -> None:
        self._run_id = run_id

    def process(self, row: dict) -> Any:
        yield {**row, "run_id": self._run_id}


def _to_json(row: dict) -> str:
    return json.dumps(row, sort_keys=True)


class WriteTable(beam.PTransform):
    """Rows of ``table`` -> Parquet files under ``<output>/<table>/`` (local or any fsspec URL).

    File names start with the run id, so runs into the same folder never overwrite each other.
    """

    def __init__(self, table: Table, output: str, run_id: str) -> None:
        super().__init__()
        self._table = table
        self._prefix = f"{output.rstrip('/')}/{table.name}/{run_id}"

    def expand(self, rows: beam.PCollection) -> Any:
        return rows | "WriteParquet" >> beam.io.WriteToParquet(
            self._prefix,
            schema=arrow_schema(self._table),
            file_name_suffix=".parquet",
            row_group_buffer_size=8 << 20,
            record_batch_size=1000,
        )


class WriteErrors(beam.PTransform):
    """Dead letters -> JSON lines under ``<output>/errors/``, each with the run id."""

    def __init__(self, output: str, run_id: str) -> None:
        super().__init__()
        self._prefix = f"{output.rstrip('/')}/{ERRORS.name}/{run_id}"
        self._run_id = run_id

    def expand(self, rows: beam.PCollection) -> Any:
        return (
            rows
            | "AddRunId" >> beam.ParDo(_AddRunId(self._run_id))
            | "ToJson" >> beam.Map(_to_json)
            | "WriteJsonLines" >> beam.io.WriteToText(self._prefix, file_name_suffix=".jsonl")
        )


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, max_len: int = 100) -> str:
    """A file- and object-name-safe form of user text (a ``slide_id``, a model name).

    Anything outside ``[A-Za-z0-9._-]`` becomes ``_``, leading dots go (no ``..`` or hidden
    files), and an altered or over-long name gets a short hash so two ids never share a name.
    """
    cleaned = _UNSAFE.sub("_", text).lstrip(".") or "_"
    if cleaned == text and len(text) <= max_len:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{cleaned[: max_len - 11]}-{digest}"
