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

from apache_beam.options.pipeline_options import PipelineOptions

from transforms.errors import ConfigError
from transforms.geometry import PatchingConfig
from transforms.inference import BatchingConfig
from transforms.models import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
"""The local default: Beam 2.77's DirectRunner first tries to download a Prism binary."""

_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class SlideInferenceOptions(PipelineOptions):
    """Flags of ``python -m pipelines.slide_inference``."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:  # type: ignore[no-untyped-def]
        add = parser.add_argument
        add("--slides", help="slide manifest: CSV, TSV, JSONL or Parquet; local or gs://")
        add("--patches", help="optional patch manifest (slide_id, x_px, y_px, size_px[, level])")
        add("--model", action="append", default=[], help="NAME=URI (.pt2), repeatable")
        add("--model_version", action="append", default=[], help="NAME=VERSION")
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
        add("--batch_size", type=int, default=None, help="fixed batch size (sets min and max)")
        add("--min_batch_size", type=int, default=None)
        add("--max_batch_size", type=int, default=None)
        add("--require_gpu", action="store_true", help="fail worker setup without a CUDA device")
        add("--output", default="results", help="output folder: local path or gs://bucket/prefix")
        add("--group_by", default=None, help="slide-manifest column for case_summaries")
        add("--no_heatmaps", action="store_true", help="skip the heatmap PNGs")
        add("--run_id", default=None, help="id stamped on every row (default: time + random)")
        add("--progress_interval_s", type=float, default=10.0)


@dataclass(frozen=True)
class SlideJobConfig:
    """Everything ``pipelines.slide_inference.build`` needs, validated."""

    slides: str
    patches: str | None
    models: tuple[ModelSpec, ...]
    patching: PatchingConfig
    batching: BatchingConfig
    output: str
    group_by: str | None
    run_id: str
    heatmaps: bool


def named_values(pairs: list[str], flag: str) -> dict[str, str]:
    """``["a=1", "b=2"]`` -> ``{"a": "1", "b": "2"}``; raise ``ConfigError`` naming ``flag``."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(f"{flag} expects NAME=VALUE, got {pair!r}")
        if name.strip() in out:
            raise ConfigError(f"{flag} gives {name.strip()!r} twice")
        out[name.strip()] = value.strip()
    return out


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} expects comma-separated numbers, got {text!r}") from None


def model_specs(opts: SlideInferenceOptions) -> tuple[ModelSpec, ...]:
    """The ``--model*`` flags as ``ModelSpec``s."""
    uris = named_values(opts.model, "--model")
    if not uris:
        raise ConfigError("--model NAME=URI is required (repeat it for several models)")
    extras = {
        flag: named_values(getattr(opts, flag[2:]), flag)
        for flag in (
            "--model_version",
            "--model_class",
            "--model_mean",
            "--model_std",
            "--model_activation",
        )
    }
    for flag, values in extras.items():
        unknown = sorted(set(values) - set(uris))
        if unknown:
            raise ConfigError(f"{flag} names {', '.join(unknown)}, which no --model defines")
    return tuple(
        ModelSpec(
            name=name,
            uri=uri,
            version=extras["--model_version"].get(name, "unversioned"),
            model_class=extras["--model_class"].get(name),
            mean=_floats(extras["--model_mean"][name], "--model_mean")
            if name in extras["--model_mean"]
            else IMAGENET_MEAN,
            std=_floats(extras["--model_std"][name], "--model_std")
            if name in extras["--model_std"]
            else IMAGENET_STD,
            activation=extras["--model_activation"].get(name, "softmax"),
            require_gpu=opts.require_gpu,
        )
        for name, uri in uris.items()
    )


def slide_job_config(opts: SlideInferenceOptions) -> SlideJobConfig:
    """Validate the flags; raise ``ConfigError`` naming the first bad one."""
    if not opts.slides:
        raise ConfigError("--slides is required: a slide manifest with slide_id and uri columns")
    if opts.output.startswith("bq://"):
        raise ConfigError("--output bq://... is not available yet: give a folder or gs:// prefix")
    patch_mpp = opts.patch_mpp
    if patch_mpp is None and opts.patch_level is None:
        patch_mpp = 0.5
    if opts.batch_size is not None:
        batching = BatchingConfig(opts.batch_size, opts.batch_size)
    else:
        batching = BatchingConfig(opts.min_batch_size or 1, opts.max_batch_size or 32)
    run_id = opts.run_id or (
        datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    )
    if not _RUN_ID.match(run_id):
        raise ConfigError(f"--run_id must match {_RUN_ID.pattern}, got {run_id!r}")
    return SlideJobConfig(
        slides=opts.slides,
        patches=opts.patches,
        models=model_specs(opts),
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
        batching=batching,
        output=opts.output,
        group_by=opts.group_by,
        run_id=run_id,
        heatmaps=not opts.no_heatmaps,
    )
