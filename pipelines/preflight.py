"""The configuration checked against the data before anything starts, wherever that is cheap.

Manifests exist and have the columns the flags name (a header, a schema: never the rows), and
model files exist and are of the format their name says (one header read or listing, no
download). Each failure is one ``ConfigError`` naming the flag (exit 2); row-level
problems stay dead letters. A dry run or a staged template reads nothing, and a job for remote
workers does not import ``--model_class`` modules that may exist only in the worker image.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.launch import is_dry_run, submit_only
from pipelines.options import LOCAL_RUNNER, SlideJobConfig, TextJobConfig
from transforms.core.errors import ConfigError, ManifestError, ModelLoadError
from transforms.core.remote_io import filesystem, is_transient
from transforms.io.manifests import ManifestSource, RowRule, manifest_columns
from transforms.models.loading import check_class_count
from transforms.models.presets import check_folder
from transforms.models.spec import ModelSpec
from transforms.slides.manifest_rows import PATCH_ROWS, SLIDE_ROWS

log = logging.getLogger(__name__)

_WHAT = {
    "slides": "a slide manifest",
    "patches": "a patch manifest",
    "documents": "a document file",
}


def _columns(source: ManifestSource, flag: str) -> list[str]:
    try:
        return manifest_columns(source)
    except FileNotFoundError as exc:
        raise ConfigError(f"{flag} {source.uri}: {exc}") from None
    except (ManifestError, OSError, ValueError) as exc:
        raise ConfigError(f"{flag} {source.uri}: cannot be read ({exc})") from None


def _require(columns: list[str], column: str, message: str) -> None:
    if column not in columns:
        raise ConfigError(f"{message} (its columns: {', '.join(columns) or 'none'})")


def _check_manifest(source: ManifestSource, flag: str, rule: RowRule) -> list[str]:
    columns = _columns(source, flag)
    for column in rule.required:
        _require(
            columns,
            column,
            f"{flag} {source.uri} has no {column!r} column; {_WHAT[rule.kind]} needs "
            f"{', '.join(rule.required)}",
        )
    return columns


def _check_model_file(flag: str, name: str, uri: str) -> None:
    fs, path = filesystem(uri)
    if not fs.exists(path):
        raise ConfigError(f"{flag} {name}={uri}: no such file or folder")


HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


def _check_model_format(spec: ModelSpec) -> None:
    """The model's files are what its format needs: one listing or header read, no download."""
    if spec.preset is not None:
        check_folder(spec.name, spec.preset, spec.uri)  # the files it needs, its architecture
        if spec.format == "timm":
            return
    fs, path = filesystem(spec.uri)
    where = f"--model {spec.name}={spec.uri}"
    if spec.format == "huggingface":
        if not fs.isdir(path):
            raise ConfigError(
                f"{where}: not a '.pt2' program, an '.onnx' graph or a Hugging Face folder "
                "(give a state_dict file with --model_class)"
            )
        names = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}
        if "config.json" not in names:
            raise ConfigError(f"{where}: a Hugging Face folder needs config.json (save_pretrained)")
        if not names & set(HF_WEIGHTS):
            raise ConfigError(
                f"{where}: the Hugging Face folder holds no weights ({', '.join(HF_WEIGHTS)}); "
                f"it has {', '.join(sorted(names))}"
            )
        _check_class_names(spec, fs, f"{path.rstrip('/')}/config.json")
        return
    try:
        with fs.open(path, "rb") as f:
            head = f.read(4)
    except Exception as exc:  # noqa: BLE001 - a store that stalls now is not a config error
        if not is_transient(exc):
            raise
        log.warning("--model %s: its header could not be read now (%s)", spec.name, exc)
        return  # the workers' load retries, and fails the job naming the model if it must
    if spec.format == "pt2" and head[:2] != b"PK":
        raise ConfigError(f"{where}: not a torch.export '.pt2' program (not a zip archive)")
    if spec.format == "onnx" and (not head or head[0] != 0x08):  # field 1 (ir_version), varint
        raise ConfigError(f"{where}: not an ONNX graph (its protobuf does not start as one)")


_HEADS = ("Classification", "Segmentation")


def _check_class_names(spec: ModelSpec, fs: Any, config: str) -> None:
    """``--class_names`` against a Hugging Face config's labels (``id2label``), before launch
    (other formats are checked when the model loads: ``loading.check_class_count``)."""
    if not spec.class_names or not spec.kind.has_classes:
        return
    with fs.open(config, "r") as f:
        settings = json.load(f)
    n_classes = len(settings.get("id2label") or ()) or settings.get("num_labels")
    heads = [a for a in settings.get("architectures") or () if a.endswith(_HEADS)]
    if n_classes is None and heads:
        n_classes = 2  # transformers writes neither for its default of two labels
    try:
        check_class_count(spec, n_classes, "its config.json id2label")
    except ModelLoadError as exc:
        raise ConfigError(str(exc)) from None


def _check_importable(name: str, model_class: str) -> None:
    module = model_class.split(":", 1)[0]
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise ConfigError(
            f"--model_class {name}={model_class}: module {module!r} cannot be imported; put "
            "its folder on PYTHONPATH or install it as a package (on Dataflow, in the worker "
            "image too)"
        )


def _checks_apply(options: PipelineOptions) -> tuple[bool, bool]:
    """(check at all, check what only a local run can: local imports)."""
    if is_dry_run(options) or submit_only(options):
        return False, False
    runner = options.view_as(StandardOptions).runner or LOCAL_RUNNER
    return True, runner in (LOCAL_RUNNER, "DirectRunner", "FnApiRunner")


def check_slide_inputs(cfg: SlideJobConfig, options: PipelineOptions) -> None:
    """Manifests, ``--group_by`` and models of a slide job; ``ConfigError`` naming the flag."""
    check, local = _checks_apply(options)
    if not check:
        return
    columns = _check_manifest(cfg.slides, "--slides", SLIDE_ROWS) if cfg.slides else []
    if cfg.patches is not None:
        _check_manifest(cfg.patches, "--patches", PATCH_ROWS)
    if cfg.group_by and cfg.slides is not None:
        _require(
            columns,
            cfg.group_by,
            f"--group_by {cfg.group_by}: the slide manifest {cfg.slides.uri} has no such column",
        )
    for spec in cfg.models:
        _check_model_file("--model", spec.name, spec.uri)
        _check_model_format(spec)
        if spec.model_class and local:
            _check_importable(spec.name, spec.model_class)


def check_text_inputs(cfg: TextJobConfig, options: PipelineOptions) -> None:
    """The document file's id and text columns and the model folders of a text job."""
    check, _ = _checks_apply(options)
    if not check:
        return
    columns = _columns(cfg.documents, "--documents")
    in_file = {ours: column for column, ours in cfg.columns.items()}
    for flag, ours in (("--doc_id_column", "doc_id"), ("--text_column", "text")):
        column = in_file.get(ours, ours)
        _require(
            columns,
            column,
            f"{flag} {column}: the documents {cfg.documents.uri} have no such column; name "
            f"it with {flag}",
        )
    for spec in cfg.models:
        _check_model_file("--model", spec.name, spec.uri)
