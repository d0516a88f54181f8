"""Command-line options and the frozen job configs they become.

Flags are parsed by Beam's ``PipelineOptions`` (so every Beam flag works beside them) and turned
into validated dataclasses before the pipeline is built; a bad flag raises ``ConfigError`` naming
it, and nothing starts. Transforms never read ``PipelineOptions``.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from transforms.core.errors import ConfigError
from transforms.io.bigquery import parse_table, resolve_endpoint
from transforms.io.destinations import Destination, RunStamp, destination
from transforms.models.patch_inference import BatchingConfig
from transforms.models.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec
from transforms.slides.geometry import PatchingConfig
from transforms.text.batching import TokenBatchingConfig
from transforms.text.models import TextModelSpec
from transforms.text.windows import WindowConfig

LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
"""The local default: Beam 2.77's DirectRunner first tries to download a Prism binary."""

_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _truth(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def switch(parser: Any, flag: str, help: str) -> None:  # noqa: A002
    """A boolean flag given bare (``--flag``) or with a value (``--flag=false``), as a Flex
    Template launcher passes every parameter."""
    parser.add_argument(flag, nargs="?", const=True, default=False, type=_truth, help=help)


class InferenceOptions(PipelineOptions):
    """Flags both pipelines share. Beam parses every options class's flags together, so each
    flag is defined once, here or in one pipeline's class."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        add = parser.add_argument
        add("--model", action="append", default=[], help="NAME=URI, repeatable")
        add("--model_version", action="append", default=[], help="NAME=VERSION")
        add("--batch_size", type=int, default=None, help="fixed batch size (sets min and max)")
        add("--min_batch_size", type=int, default=None)
        add("--max_batch_size", type=int, default=None)
        switch(parser, "--require_gpu", "fail worker setup without a CUDA device")
        add(
            "--output",
            default="results",
            help="a folder of Parquet files (local or gs://bucket/prefix) or bq://PROJECT.DATASET",
        )
        add(
            "--artifacts",
            default=None,
            help="folder for heatmaps, local or gs:// (default: --output; needed with bq://)",
        )
        add(
            "--bigquery_endpoint",
            default=None,
            help="BigQuery API endpoint, e.g. a local emulator (default: $BIGQUERY_EMULATOR_HOST)",
        )
        switch(
            parser,
            "--skip_existing",
            "skip inputs that already have results for every model at its version",
        )
        add("--run_id", default=None, help="id stamped on every row (default: time + random)")
        add("--progress_interval_s", type=float, default=10.0)


class SlideInferenceOptions(PipelineOptions):
    """Flags of ``python -m pipelines.slide_inference`` (besides ``InferenceOptions``)."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        add = parser.add_argument
        add("--slides", help="slide manifest: CSV, TSV, JSONL or Parquet; local or gs://")
        add("--patches", help="optional patch manifest (slide_id, x_px, y_px, size_px[, level])")
        add(
            "--model_class",
            action="append",
            default=[],
            help="NAME=package.module:Class for a state_dict model file",
        )
        add("--model_mean", action="append", default=[], help="NAME=r,g,b (default ImageNet)")
        add("--model_std", action="append", default=[], help="NAME=r,g,b (default ImageNet)")
        add(
            "--model_activation",
            action="append",
            default=[],
            help="NAME=softmax|sigmoid|none applied to the model's logits (default softmax)",
        )
        add("--patch_px", type=int, default=224, help="patch edge handed to the models, px")
        add("--patch_mpp", type=float, default=None, help="patch resolution, µm/px (default 0.5)")
        add("--patch_level", type=int, default=None, help="tile at this level instead of an mpp")
        add("--overlap_px", type=int, default=0)
        add("--min_tissue", type=float, default=0.5, help="min tissue fraction of a grid patch")
        add("--tissue_method", default="brightfield", help="brightfield | fluorescence")
        add("--block_px", type=int, default=2048, help="work-unit block edge at the read level")
        add("--max_patches_per_unit", type=int, default=64)
        add("--group_by", default=None, help="slide-manifest column for case_summaries")
        switch(parser, "--no_heatmaps", "skip the heatmap PNGs")


class TextInferenceOptions(PipelineOptions):
    """Flags of ``python -m pipelines.text_inference`` (besides ``InferenceOptions``)."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        add = parser.add_argument
        add("--documents", help="documents: CSV, TSV, JSONL or Parquet with doc_id and text")
        add("--doc_id_column", default="doc_id", help="the documents' id column")
        add("--text_column", default="text", help="the documents' text column")
        add(
            "--task",
            action="append",
            default=[],
            help="NAME=token-classification|text-classification|embedding, one per --model",
        )
        add("--max_tokens_per_batch", type=int, default=8192, help="padded tokens per batch")
        add("--window_tokens", type=int, default=512, help="model window, specials included")
        add("--stride_tokens", type=int, default=64, help="overlap of consecutive windows")
        add("--sort_buffer", type=int, default=2048, help="windows sorted together by length")
        add("--max_padding", type=float, default=0.1, help="max padded share of a batch")


@dataclass(frozen=True)
class SlideJobConfig:
    """Everything ``pipelines.slide_inference.build`` needs, validated."""

    slides: str
    patches: str | None
    models: tuple[ModelSpec, ...]
    patching: PatchingConfig
    batching: BatchingConfig
    destination: Destination
    run: RunStamp
    skip_existing: bool
    group_by: str | None
    heatmaps: bool


_MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def named_values(pairs: list[str], flag: str) -> dict[str, str]:
    """``["a=1", "b=2"]`` -> ``{"a": "1", "b": "2"}``; raise ``ConfigError`` naming ``flag``.

    Names become stage labels, file names and row values: letters, digits, ``_.-``, 1-64.
    """
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(f"{flag} expects NAME=VALUE, got {pair!r}")
        if not _MODEL_NAME.match(name.strip()) or name.strip() in (".", ".."):
            raise ConfigError(
                f"{flag}: model name {name.strip()!r} must be 1-64 letters, digits, '_', '.' or '-'"
            )
        if name.strip() in out:
            raise ConfigError(f"{flag} gives {name.strip()!r} twice")
        out[name.strip()] = value.strip()
    return out


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} expects comma-separated numbers, got {text!r}") from None


def _batching(common: InferenceOptions) -> BatchingConfig:
    if common.batch_size is not None:
        return BatchingConfig(common.batch_size, common.batch_size)
    return BatchingConfig(common.min_batch_size or 1, common.max_batch_size or 32)


def _run(common: InferenceOptions) -> RunStamp:
    started = datetime.now(UTC)
    run_id = common.run_id or (started.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6])
    if not _RUN_ID.match(run_id):
        raise ConfigError(f"--run_id must match {_RUN_ID.pattern}, got {run_id!r}")
    return RunStamp(run_id, started.date())


def _destination(options: PipelineOptions, needs_artifacts: bool) -> Destination:
    common = options.view_as(InferenceOptions)
    return destination(
        common.output,
        common.artifacts,
        resolve_endpoint(common.bigquery_endpoint),
        options.view_as(GoogleCloudOptions).temp_location,
        needs_artifacts,
    )


def _check_manifest(uri: str, flag: str, options: PipelineOptions) -> None:
    """A ``bq://`` manifest must name a table; fail before launch if it does not."""
    if uri.startswith("bq://"):
        parse_table(
            uri, flag, resolve_endpoint(options.view_as(InferenceOptions).bigquery_endpoint)
        )


def _check_names(flag: str, values: dict[str, str], uris: dict[str, str]) -> None:
    unknown = sorted(set(values) - set(uris))
    if unknown:
        raise ConfigError(f"{flag} names {', '.join(unknown)}, which no --model defines")


def model_specs(options: PipelineOptions) -> tuple[ModelSpec, ...]:
    """The ``--model*`` flags as ``ModelSpec``s."""
    common = options.view_as(InferenceOptions)
    opts = options.view_as(SlideInferenceOptions)
    uris = named_values(common.model, "--model")
    if not uris:
        raise ConfigError("--model NAME=URI is required (repeat it for several models)")
    flags = {
        "--model_version": common.model_version,
        "--model_class": opts.model_class,
        "--model_mean": opts.model_mean,
        "--model_std": opts.model_std,
        "--model_activation": opts.model_activation,
    }
    extras = {flag: named_values(values, flag) for flag, values in flags.items()}
    for flag, values in extras.items():
        _check_names(flag, values, uris)
    means, stds = extras["--model_mean"], extras["--model_std"]
    return tuple(
        ModelSpec(
            name=name,
            uri=uri,
            version=extras["--model_version"].get(name, "unversioned"),
            model_class=extras["--model_class"].get(name),
            mean=_floats(means[name], "--model_mean") if name in means else IMAGENET_MEAN,
            std=_floats(stds[name], "--model_std") if name in stds else IMAGENET_STD,
            activation=extras["--model_activation"].get(name, "softmax"),
            require_gpu=common.require_gpu,
        )
        for name, uri in uris.items()
    )


def slide_job_config(options: PipelineOptions) -> SlideJobConfig:
    """Validate the slide pipeline's flags; raise ``ConfigError`` naming the first bad one."""
    common = options.view_as(InferenceOptions)
    opts = options.view_as(SlideInferenceOptions)
    if not opts.slides:
        raise ConfigError("--slides is required: a slide manifest with slide_id and uri columns")
    _check_manifest(opts.slides, "--slides", options)
    patch_mpp = opts.patch_mpp
    if patch_mpp is None and opts.patch_level is None:
        patch_mpp = 0.5
    return SlideJobConfig(
        slides=opts.slides,
        patches=opts.patches,
        models=model_specs(options),
        patching=PatchingConfig(
            patch_px=opts.patch_px,
            patch_mpp=patch_mpp,
            patch_level=opts.patch_level,
            overlap_px=opts.overlap_px,
            min_tissue=opts.min_tissue,
            tissue_method=opts.tissue_method,
            block_px=opts.block_px,
            max_patches_per_unit=opts.max_patches_per_unit,
        ),
        batching=_batching(common),
        destination=_destination(options, needs_artifacts=not opts.no_heatmaps),
        run=_run(common),
        skip_existing=common.skip_existing,
        group_by=opts.group_by,
        heatmaps=not opts.no_heatmaps,
    )


@dataclass(frozen=True)
class TextJobConfig:
    """Everything ``pipelines.text_inference.build`` needs, validated."""

    documents: str
    columns: dict[str, str]
    models: tuple[TextModelSpec, ...]
    windows: WindowConfig
    batching: TokenBatchingConfig
    destination: Destination
    run: RunStamp
    skip_existing: bool


def text_job_config(options: PipelineOptions) -> TextJobConfig:
    """Validate the text pipeline's flags; raise ``ConfigError`` naming the first bad one."""
    common = options.view_as(InferenceOptions)
    opts = options.view_as(TextInferenceOptions)
    if not opts.documents:
        raise ConfigError("--documents is required: a file with doc_id and text columns")
    _check_manifest(opts.documents, "--documents", options)
    uris = named_values(common.model, "--model")
    if not uris:
        raise ConfigError("--model NAME=URI is required (a Hugging Face model folder)")
    tasks = named_values(opts.task, "--task")
    versions = named_values(common.model_version, "--model_version")
    _check_names("--task", tasks, uris)
    _check_names("--model_version", versions, uris)
    missing = sorted(set(uris) - set(tasks))
    if missing:
        raise ConfigError(f"--task NAME=TASK is required for {', '.join(missing)}")
    for flag in ("batch_size", "min_batch_size"):
        if getattr(common, flag) is not None:
            raise ConfigError(
                f"--{flag} does not apply to the text pipeline, which batches by token budget: "
                "use --max_tokens_per_batch (padded tokens per batch) and --max_batch_size"
            )
    windows = WindowConfig(opts.window_tokens, opts.stride_tokens)
    batching = TokenBatchingConfig(
        opts.max_tokens_per_batch, common.max_batch_size or 64, opts.sort_buffer, opts.max_padding
    )
    if batching.max_tokens_per_batch < windows.window_tokens:
        raise ConfigError(
            f"--max_tokens_per_batch ({batching.max_tokens_per_batch}) must hold one window "
            f"(--window_tokens {windows.window_tokens})"
        )
    return TextJobConfig(
        documents=opts.documents,
        columns={
            c: ours
            for c, ours in ((opts.doc_id_column, "doc_id"), (opts.text_column, "text"))
            if c != ours
        },
        models=tuple(
            TextModelSpec(
                name, uri, tasks[name], versions.get(name, "unversioned"), common.require_gpu
            )
            for name, uri in uris.items()
        ),
        windows=windows,
        batching=batching,
        destination=_destination(options, needs_artifacts=False),
        run=_run(common),
        skip_existing=common.skip_existing,
    )
