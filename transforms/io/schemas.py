"""Row schemas, defined once (``transforms.io.destinations`` writes them).

Each table is a tuple of ``Column``s; ``arrow_schema`` and ``bigquery_schema`` derive the Parquet
and BigQuery schemas from the same definition, so the two sinks cannot drift apart. Types follow
BigQuery's names: STRING, INT64, FLOAT64, RECORD; modes NULLABLE, REQUIRED, REPEATED. FLOAT32 is
float32 in Parquet (half the bytes of an embedding) and FLOAT64 in BigQuery, which has no other.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    mode: str = "NULLABLE"
    fields: tuple[Column, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class Table:
    """A table: its columns, the columns that identify one result (a rerun replaces the rows of
    a key), and BigQuery's clustering columns."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    cluster: tuple[str, ...]

    def __post_init__(self) -> None:
        names = {c.name for c in self.columns}
        missing = sorted((set(self.key) | set(self.cluster)) - names)
        if missing:
            raise ValueError(f"{self.name}: key/cluster columns {missing} are not columns")


_KEY_VALUE = (Column("key", "STRING", "REQUIRED"), Column("value", "STRING"))
RUN_COLUMNS = (
    Column("run_id", "STRING", "REQUIRED"),
    Column("run_date", "DATE", "REQUIRED", description="UTC start date; the BigQuery partition"),
)
SLIDE_KEY = ("slide_id", "model_name", "model_version")
SLIDE_CLUSTER = ("slide_id", "model_name")

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
        Column(
            "patches_gated_out",
            "INT64",
            description="gated models: planned patches their gate held back (planned = "
            "patch_count + gated out + dead letters)",
        ),
        Column(
            "coverage",
            "FLOAT64",
            description="share of the detected tissue the model's planned patches cover (grid "
            "tiling; each tissue pixel once, overlap or not)",
        ),
        Column("low_coverage", "BOOL", description="coverage under --min_coverage"),
        Column("tissue_area_mm2", "FLOAT64", description="from the tissue mask and the slide mpp"),
        Column(
            "tissue_method",
            "STRING",
            description="brightfield or fluorescence: how the tissue mask was made",
        ),
        *_CLASS_STATS,
        Column(
            "class_area_mm2",
            "FLOAT64",
            "REPEATED",
            description="segmentation models: tissue area per class, each pixel once (from the "
            "stitched mask: overlapping patches share their overlap)",
        ),
        Column(
            "analysed_tissue_mm2",
            "FLOAT64",
            description="segmentation models: the tissue (by the slide's tissue rule, at the "
            "patches' pixels) in the analysed patches, each pixel once",
        ),
        Column("class_names", "STRING", "REPEATED", description="--class_names, else empty"),
        Column("heatmap_uri", "STRING", description="heatmap, or class map of a segmentation"),
        Column(
            "mask_uri",
            "STRING",
            description="segmentation models: the stitched class mask, a pyramidal OME-TIFF at "
            "the model's output resolution (0 none, c + 1 class c)",
        ),
        Column(
            "regions_uri",
            "STRING",
            description="segmentation models: the mask's class regions as QuPath GeoJSON",
        ),
        Column("thumbnail_uri", "STRING", description="the slide's thumbnail (JPEG)"),
        Column(
            "viewer_uri",
            "STRING",
            description="the slide's zoomable viewer page (deep-zoom tiles, the models' "
            "overlays), one per slide",
        ),
        Column("metadata", "RECORD", "REPEATED", _KEY_VALUE, "extra slide manifest columns"),
        Column(
            "latency_s",
            "FLOAT64",
            description="stream: seconds from the slide's notification to its rows",
        ),
        *RUN_COLUMNS,
    ),
    SLIDE_KEY,
    SLIDE_CLUSTER,
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
        *RUN_COLUMNS,
    ),
    ("group_by", "group_value", "model_name", "model_version"),
    ("group_value", "model_name"),
)

RUNS = Table(
    "runs",
    (
        Column("run_id", "STRING", "REQUIRED"),
        Column("pipeline", "STRING", "REQUIRED", description="slides or text"),
        Column("status", "STRING", "REQUIRED", description="succeeded, failed or submitted"),
        Column("error", "STRING", description="why a failed run failed"),
        Column("started_at", "TIMESTAMP", "REQUIRED"),
        Column("finished_at", "TIMESTAMP"),
        Column("wall_s", "FLOAT64"),
        Column("flags", "RECORD", "REPEATED", _KEY_VALUE, "the command line, secrets redacted"),
        Column("package_version", "STRING"),
        Column("git_commit", "STRING"),
        Column("container_image", "STRING"),
        Column(
            "environment",
            "RECORD",
            "REPEATED",
            _KEY_VALUE,
            "where the record was made: the lock that installed it (lock, lock_sha256), the "
            "digest of every installed package, its drift from the lock, and the versions of "
            "Python, Beam, torch, transformers, onnxruntime, tiffslide, wsidicom, numpy, pyarrow",
        ),
        Column("runner", "STRING"),
        Column("device", "STRING", description="cuda or cpu, on the worker that recorded it"),
        Column(
            "precision",
            "STRING",
            description="asked per model (the guard may lower it: precision_guard)",
        ),
        Column(
            "precision_guard",
            "RECORD",
            "REPEATED",
            (
                Column("model", "STRING", "REQUIRED"),
                Column("precision", "STRING", "REQUIRED", description="the reduced one checked"),
                Column("checked", "INT64", description="inputs run in both precisions"),
                Column("label_agreement", "FLOAT64"),
                Column("max_prob_diff", "FLOAT64"),
                Column("min_cosine", "FLOAT64"),
                Column("passed", "BOOL", description="false: workers fell back to fp32"),
                Column(
                    "speedup",
                    "FLOAT64",
                    description="fp32's time per input over the reduced precision's, measured",
                ),
                Column(
                    "kept",
                    "BOOL",
                    description="false: fp32 ran (guard failed, or auto measured no gain)",
                ),
            ),
            "the accuracy guard's figures per model, over every worker process",
        ),
        Column(
            "models",
            "RECORD",
            "REPEATED",
            (
                Column("name", "STRING", "REQUIRED"),
                Column("version", "STRING"),
                Column("uri", "STRING"),
                Column("sha256", "STRING", description="of the weights file, or of the folder"),
                Column("format", "STRING"),
                Column("output_kind", "STRING"),
                Column(
                    "precision",
                    "STRING",
                    description="what it ran in on the recording worker's device (auto resolved)",
                ),
                Column("recipe", "STRING", description="where its recipe was read"),
                Column(
                    "overrides",
                    "STRING",
                    description="the recipe's fields that flags overrode, said",
                ),
                Column("licence", "STRING", description="the model's, from its recipe"),
                Column("citation", "STRING", description="the model's, from its recipe"),
                Column(
                    "stain",
                    "STRING",
                    description="its stain normalisation and the reference stain, said",
                ),
            ),
        ),
        Column("inputs", "INT64", description="slides or documents in"),
        Column("inputs_with_results", "INT64"),
        Column("inputs_skipped", "INT64", description="skipped as done already"),
        Column("inputs_failed", "INT64"),
        Column(
            "outputs",
            "RECORD",
            "REPEATED",
            (
                Column("table_name", "STRING", "REQUIRED"),
                Column("row_count", "INT64", "REQUIRED"),
            ),
        ),
        Column(
            "dead_letters",
            "RECORD",
            "REPEATED",
            (
                Column("stage", "STRING", "REQUIRED"),
                Column("error_type", "STRING", "REQUIRED"),
                Column("count", "INT64", "REQUIRED"),
                Column("example", "STRING", description="one key and message"),
            ),
        ),
        Column("units", "STRING", description="what units_per_s counts: patches or tokens"),
        Column("units_done", "INT64"),
        Column(
            "coverage_min",
            "FLOAT64",
            description="the lowest tissue coverage of any slide x model (slide_summaries)",
        ),
        Column("low_coverage", "INT64", description="slide x models under --min_coverage"),
        Column("units_per_s", "FLOAT64"),
        Column("report_uri", "STRING"),
        Column(
            "inputs_ignored",
            "INT64",
            description="stream: notifications that announced no slide (not a slide, a delete)",
        ),
        Column("latency_p50_s", "FLOAT64", description="stream: the last window's median latency"),
        Column("latency_p95_s", "FLOAT64", description="stream: the last window's p95 latency"),
        Column(
            "composition",
            "RECORD",
            "REPEATED",
            (
                Column("source", "STRING", "REQUIRED", description="the gate, or the encoder"),
                Column("target", "STRING", "REQUIRED", description="the gated model, or head"),
                Column("kind", "STRING", "REQUIRED", description="gate or head"),
                Column("rule", "STRING", description="the --gate rule"),
                Column("inputs", "INT64", description="gate: patches planned; head: slides"),
                Column("passed", "INT64", description="gate: patches it let through"),
                Column("held_back", "INT64", description="gate: patches it held back"),
                Column("results", "INT64", description="patches with results, or predictions"),
            ),
            "how the models compose (--gate, --slide_model), with counts at each edge",
        ),
        RUN_COLUMNS[1],  # run_date; run_id is the first column
    ),
    ("run_id",),
    ("pipeline", "status"),
)

ERRORS = Table(
    "errors",
    (
        Column("stage", "STRING", "REQUIRED"),
        Column("key", "STRING", "REQUIRED"),
        Column("error_type", "STRING", "REQUIRED"),
        Column("message", "STRING", "REQUIRED"),
        Column("input", "STRING", description="the failed input as JSON, bulk data dropped"),
        *RUN_COLUMNS,
    ),
    ("stage", "key"),
    ("key", "stage"),
)

_ARROW_TYPES = {
    "STRING": "string",
    "INT64": "int64",
    "FLOAT64": "float64",
    "FLOAT32": "float32",
    "BOOL": "bool_",
    "DATE": "date32",
}


def _arrow_type(column: Column) -> Any:
    import pyarrow as pa

    if column.type == "TIMESTAMP":
        base = pa.timestamp("us", tz="UTC")
    elif column.type == "RECORD":
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
        kind = "FLOAT64" if column.type == "FLOAT32" else column.type
        out: dict[str, Any] = {"name": column.name, "type": kind, "mode": column.mode}
        if column.fields:
            out["fields"] = [field(c) for c in column.fields]
        if column.description:
            out["description"] = column.description
        return out

    return {"fields": [field(c) for c in table.columns]}


def metadata_record(metadata: dict[str, str]) -> list[dict[str, str]]:
    """A ``{key: value}`` dict as the REPEATED RECORD ``metadata`` column."""
    return [{"key": k, "value": v} for k, v in sorted(metadata.items())]


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


_HASHED = re.compile(r".*-[0-9a-f]{10}")
"""How an altered name ends: an unaltered one that ends so is hashed too, so no id can pass for
another id's altered name (``a_b-c14cddc033`` is how ``a/b`` comes out)."""


def safe_name(text: str, max_len: int = 100) -> str:
    """``text`` as a file or object name, one name per text (injective).

    Anything outside ``[A-Za-z0-9._-]`` and any run of dots become ``_``, leading dots go (no
    ``..`` or hidden files), and an altered or over-long name, or one that looks like an altered
    one, gets ``-`` and a hash of the whole text, so two ids never share a name.
    """
    cleaned = re.sub(r"\.{2,}", "_", _UNSAFE.sub("_", text)).lstrip(".") or "_"
    if cleaned == text and len(text) <= max_len and not _HASHED.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{cleaned[: max_len - 11]}-{digest}"


def file_name(slide_id: str, model_name: str | None, suffix: str) -> str:
    """The file of a slide's (and a model's) picture or export: ``<slide>.<model><suffix>``.
    Injective over (slide id, model name): ``safe_name`` is, and a model name holds no dot, so
    the last dot before the suffix parts the two (``s__x`` + ``tiny`` and ``s`` + ``x__tiny``
    both gave ``s__x__tiny.png``)."""
    model = f".{model_name}" if model_name else ""
    return f"{safe_name(slide_id)}{model}{suffix}"


BASE_TABLES = (SLIDE_SUMMARIES, CASE_SUMMARIES, RUNS, ERRORS)
"""The tables of no output kind or text task (those hold their own: ``models/kinds``,
``text/tasks.py``)."""
