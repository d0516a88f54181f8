"""Command-line options and the frozen job configs they become.

Flags are parsed by Beam's ``PipelineOptions`` (so every Beam flag works beside them) and turned
into validated dataclasses before the pipeline is built. The configs hold the defaults and raise
``ConfigError`` naming their fields; here those names become flag names, so a bad flag stops the
run naming it. Transforms never read ``PipelineOptions``.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
    WorkerOptions,
)

from pipelines.composition import Composition, composition
from pipelines.flags import (
    COMMON,
    SLIDES,
    STREAM_INPUT,
    TEXT,
    Group,
    add_flags,
    named_values,
    per_model_flags,
)
from transforms.core.errors import ConfigError
from transforms.io.bigquery import resolve_endpoint
from transforms.io.destinations import RUN_ID_PATTERN, Destination, RunStamp, destination
from transforms.io.manifests import ManifestSource, manifest_source
from transforms.io.runs import ModelInfo, RunInfo, code_version, flag_pairs
from transforms.models.precision import GuardConfig
from transforms.models.recipe import (
    Recipe,
    apply_recipe,
    check_fixed_size,
    load_recipe,
    relative_to,
    with_preset,
)
from transforms.models.spec import ModelSpec, model_format
from transforms.slides.geometry import PatchingConfig
from transforms.slides.qupath import MIN_PROB as QUPATH_MIN_PROB
from transforms.slides.regions import MIN_REGION_UM2 as QUPATH_MIN_REGION_UM2
from transforms.slides.run_model import BatchingConfig
from transforms.slides.stain_norm import resolve_reference
from transforms.slides.summaries import MIN_COVERAGE
from transforms.slides.viewer import VIEWER_MPP
from transforms.stream.record import WINDOW_S
from transforms.stream.series import MAX_WAIT_S, QUIET_S
from transforms.text.batching import TokenBatchingConfig
from transforms.text.models import TextModelSpec
from transforms.text.windows import WindowConfig

LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
"""The local default: Beam 2.77's DirectRunner first tries to download a Prism binary."""

_FLAGS = [f for _, flags in COMMON + SLIDES + TEXT for f in flags]
MODEL_FIELD_FLAGS = {
    "name": "--model",
    "uri": "--model",
    **{f.field: f"--{f.name}" for f in _FLAGS if f.field and f.per_model},
}
"""A model spec's fields and the flags that set them (from the flag table)."""
FIELD_FLAGS = {
    "name": "--model",
    "uri": "--model",
    **{
        f.field: f"--{f.name}"
        for f in _FLAGS
        if f.field and f.field not in {g.name for g in _FLAGS}
    },
}
"""Config fields whose flag is not ``--<field>`` (from the flag table)."""


class InferenceOptions(PipelineOptions):
    """Flags both pipelines share. Beam parses every options class's flags together, so each
    flag is defined once, here or in one pipeline's class (``pipelines.flags``)."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        add_flags(parser, COMMON)


class SlideInferenceOptions(PipelineOptions):
    """Flags of ``python -m pipelines.slide_inference`` (besides ``InferenceOptions``)."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        add_flags(parser, SLIDES)


class SlideStreamOptions(PipelineOptions):
    """Flags of ``python -m pipelines.slide_stream`` of its own (it takes the slide flags too)."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        add_flags(parser, (STREAM_INPUT,))


@dataclass(frozen=True)
class StreamConfig:
    """What the stream adds to the slide pipeline's config: where notifications come from and
    how long it waits."""

    subscriptions: tuple[str, ...]
    dicomweb_roots: dict[str, str]
    quiet_s: float = QUIET_S
    max_wait_s: float = MAX_WAIT_S
    window_s: float = WINDOW_S

    def __post_init__(self) -> None:
        from apache_beam.io.gcp.pubsub import parse_subscription

        if not self.subscriptions:
            raise ConfigError("--subscription is required: projects/P/subscriptions/S")
        for path in self.subscriptions:
            try:
                parse_subscription(path)
            except ValueError as exc:
                raise ConfigError(f"--subscription {path}: {exc}") from None
        for name, value in (
            ("quiet_s", self.quiet_s),
            ("max_wait_s", self.max_wait_s),
            ("window_s", self.window_s),
        ):
            if not value > 0:
                raise ConfigError(f"--{name} must be > 0, got {value}")
        if self.max_wait_s < self.quiet_s:
            raise ConfigError(
                f"--max_wait_s ({self.max_wait_s:g}) must be at least --quiet_s ({self.quiet_s:g})"
            )


def stream_config(options: PipelineOptions) -> tuple[SlideJobConfig, StreamConfig]:
    """Validate the stream's flags; ``ConfigError`` naming the first bad one."""
    opts = options.view_as(SlideStreamOptions)
    stream = StreamConfig(
        tuple(opts.subscription or ()),
        {store: url for store, _, url in (r.partition("=") for r in opts.dicomweb_root or ())},
        **given(quiet_s=opts.quiet_s, max_wait_s=opts.max_wait_s, window_s=opts.window_s),
    )
    for text in opts.dicomweb_root or ():
        if "=" not in text or not text.startswith("projects/"):
            raise ConfigError(
                f"--dicomweb_root expects STORE=URL (STORE: projects/…), got {text!r}"
            )
    cfg = slide_job_config(options, stream=True)
    return cfg, stream


class TextInferenceOptions(PipelineOptions):
    """Flags of ``python -m pipelines.text_inference`` (besides ``InferenceOptions``)."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        add_flags(parser, TEXT)


@contextmanager
def flags_named(fields: dict[str, str] = FIELD_FLAGS) -> Iterator[None]:
    """Re-raise a config's ``ConfigError`` with its `field` names turned into flag names."""
    try:
        yield
    except ConfigError as exc:
        text = re.sub(r"`(\w+)`", lambda m: fields.get(m[1], f"--{m[1]}"), str(exc))
        raise ConfigError(text) from None


def given(**values: Any) -> dict[str, Any]:
    """The values that were given (not None): the config's own defaults fill in the rest."""
    return {k: v for k, v in values.items() if v is not None}


def _check_names(flag: str, values: dict[str, str], uris: dict[str, str]) -> None:
    unknown = sorted(set(values) - set(uris))
    if unknown:
        raise ConfigError(f"{flag} names {', '.join(unknown)}, which no --model defines")


def _per_model(
    options: PipelineOptions, groups: tuple[Group, ...]
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """``--model`` URIs by name, and by name the spec fields every per-model flag of ``groups``
    sets (``Flag.field``, values converted by the flag's type); names checked."""
    given_values = options.get_all_options()
    uris = named_values(given_values["model"], "--model")
    if not uris:
        raise ConfigError("--model NAME=URI is required (repeat it for several models)")
    fields: dict[str, dict[str, Any]] = {name: {} for name in uris}
    for flag in per_model_flags(groups):
        values = flag.values(given_values[flag.name] or [])
        _check_names(f"--{flag.name}", values, uris)
        for name, value in values.items():
            fields[name][str(flag.field)] = value
    return uris, fields


def _run(common: InferenceOptions) -> RunStamp:
    started = datetime.now(UTC)
    run_id = common.run_id or (started.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6])
    if re.fullmatch(RUN_ID_PATTERN, run_id) is None:
        raise ConfigError(f"--run_id must match {RUN_ID_PATTERN}, got {run_id!r}")
    return RunStamp(run_id, started.date())


def _endpoint(options: PipelineOptions) -> str | None:
    return resolve_endpoint(options.view_as(InferenceOptions).bigquery_endpoint)


def _destination(options: PipelineOptions, needs_artifacts: bool) -> Destination:
    common = options.view_as(InferenceOptions)
    return destination(
        common.output,
        common.artifacts,
        options.view_as(GoogleCloudOptions).temp_location,
        needs_artifacts,
        _endpoint(options),
    )


def _source(uri: str | None, flag: str, options: PipelineOptions, what: str) -> ManifestSource:
    if not uri:
        raise ConfigError(f"{flag} is required: {what}")
    return manifest_source(uri, flag, _endpoint(options))


@dataclass(frozen=True)
class SlideJobConfig:
    """Everything ``pipelines.slide_inference.build`` needs, validated."""

    slides: ManifestSource | None
    """None in a stream: its slides come from notifications."""
    patches: ManifestSource | None
    models: tuple[ModelSpec, ...]
    patching: PatchingConfig
    batching: BatchingConfig
    destination: Destination
    run: RunStamp
    skip_existing: bool
    group_by: str | None
    heatmaps: bool
    max_failed_fraction: float | None = None
    info: RunInfo | None = None
    """What the run's record says of its launch (flags, code, models)."""
    qupath_min_prob: float = QUPATH_MIN_PROB
    qupath_min_region_um2: float = QUPATH_MIN_REGION_UM2
    qupath_merge: bool = False
    features_h5: bool = False
    viewer_mpp: float = VIEWER_MPP
    min_coverage: float = MIN_COVERAGE
    guard: GuardConfig = GuardConfig()
    geometries: tuple[PatchingConfig, ...] = ()
    """The distinct patch geometries the models take (``ModelSpec.geometry`` indexes them);
    empty: just ``patching``."""
    composition: Composition = Composition()
    """Gates, slide-level heads and per-stage resource hints."""

    def __post_init__(self) -> None:
        if not 0 < self.viewer_mpp <= 1000:
            raise ConfigError(f"`viewer_mpp` must be in (0, 1000] µm/px, got {self.viewer_mpp}")
        if self.qupath_min_region_um2 < 0:
            raise ConfigError(
                f"`qupath_min_region_um2` must be >= 0, got {self.qupath_min_region_um2}"
            )

    @property
    def patch_geometries(self) -> tuple[PatchingConfig, ...]:
        return self.geometries or (self.patching,)


def run_info(
    options: PipelineOptions,
    pipeline: str,
    run: RunStamp,
    models: tuple[ModelInfo, ...],
    units: str,
    composition: tuple[dict[str, str], ...] = (),
) -> RunInfo:
    """The launch side of a run's record: its flags (as given, secrets redacted), the code, the
    runner, the worker image and the models."""
    given_flags = options.get_all_options(drop_default=True, retain_unknown_options=True)
    flags = flag_pairs(
        [f"--{name}={_flag_text(value)}" for name, value in sorted(given_flags.items())]
    )
    version, commit = code_version()
    image = options.view_as(WorkerOptions).sdk_container_image
    return RunInfo(
        run_id=run.run_id,
        pipeline=pipeline,
        started_at=datetime.now(UTC),
        flags=flags,
        runner=options.view_as(StandardOptions).runner or LOCAL_RUNNER.rsplit(".", 1)[-1],
        container_image=image,
        package_version=version,
        git_commit=commit,
        models=models,
        units=units,
        composition=composition,
    )


def _flag_text(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)


def patch_geometries(
    base: PatchingConfig,
    models: tuple[ModelSpec, ...],
    manifest: bool,
    apart: frozenset[str] = frozenset(),
) -> tuple[tuple[PatchingConfig, ...], tuple[ModelSpec, ...]]:
    """The distinct patch geometries of ``models`` (the job's, with each model's own patch px
    and mpp), and the models with their geometry's index set. A model in ``apart`` (a gated
    one: its units are cut down before they are read) has a stream of its own. ``ConfigError``
    for a model mpp where the patches are not cut at an mpp (``--patch_level``, or a patch
    manifest)."""
    geometries: list[PatchingConfig] = []
    keys: list[tuple[PatchingConfig, str | None]] = []
    resolved = []
    for model in models:
        if model.patch_mpp is not None and (manifest or base.patch_level is not None):
            how = "a patch manifest gives each patch's box" if manifest else "--patch_level is set"
            raise ConfigError(
                f"--model_mpp {model.name}: {how}, so patches are not cut at an mpp; only "
                "--model_patch_px can differ per model"
            )
        geometry = dataclasses.replace(
            base,
            patch_px=model.patch_px or base.patch_px,
            patch_mpp=model.patch_mpp or base.patch_mpp,
            min_tissue=base.min_tissue if model.min_tissue is None else model.min_tissue,
            max_upsample=(
                base.max_upsample if model.mpp_tolerance is None else 1.0 + model.mpp_tolerance
            ),
        )
        key = (geometry, model.name if model.name in apart else None)
        if key not in keys:
            keys.append(key)
            geometries.append(geometry)
        resolved.append(dataclasses.replace(model, geometry=keys.index(key)))
    return tuple(geometries), tuple(resolved)


def model_specs(options: PipelineOptions) -> tuple[ModelSpec, ...]:
    """The ``--model`` flags as ``ModelSpec``s: each model's recipe (``models/recipe.py``) gives
    its defaults, and the per-model flags of the table override the fields they name."""
    opts = options.view_as(SlideInferenceOptions)
    common = options.view_as(InferenceOptions)
    uris, fields = _per_model(options, COMMON + SLIDES)
    compiled = set(opts.compile)
    _check_names("--compile", dict.fromkeys(compiled, ""), uris)
    job = given(patch_px=opts.patch_px, patch_mpp=opts.patch_mpp, min_tissue=opts.min_tissue)
    specs = []
    with flags_named(MODEL_FIELD_FLAGS):
        for name, uri in uris.items():
            fmt = model_format(uri, fields[name].get("model_class"))
            recipe = load_recipe(uri, fmt)
            if fields[name].get("preset"):
                recipe = with_preset(fields[name]["preset"], recipe)
            merged, overrides = apply_recipe(name, recipe, fields[name], job)
            merged["stain_reference"] = stain_reference(name, recipe, merged)
            if opts.patches and "patch_mpp" not in fields[name] and merged.get("patch_mpp"):
                overrides += (  # the recipe's resolution cannot apply to given boxes
                    f"patch_mpp {merged.pop('patch_mpp'):g} of the recipe not used: the patch "
                    "manifest gives each patch's box",
                )
            if recipe is not None and recipe.get("guard"):
                merged["guard"] = model_guard(recipe.get("guard"), common)
            if fmt == "onnx":
                px, how = _patch_edge(fields[name], recipe, merged, opts.patch_px)
                check_fixed_size(name, uri, px, how)
            specs.append(
                ModelSpec(
                    name=name,
                    uri=uri,
                    require_gpu=common.require_gpu,
                    compile=name in compiled,
                    recipe=recipe.uri if recipe else None,
                    overrides=overrides,
                    **merged,
                )
            )
    return tuple(specs)


def stain_reference(name: str, recipe: Recipe | None, merged: dict[str, Any]) -> Any:
    """A model's reference stain, read now (workers never read it): its flag's or recipe's (a
    URI relative to the recipe's folder), else its method's default; None without a method."""
    method, value = merged.get("stain_norm", "none"), merged.get("stain_reference")
    if method == "none":
        if value is not None and "stain_reference" not in (recipe.values if recipe else {}):
            raise ConfigError(f"`stain_reference` {name}=: give a method too (--model_stain)")
        return None
    if isinstance(value, str) and recipe is not None and value == recipe.get("stain_reference"):
        value = relative_to(recipe.uri, value)
    return resolve_reference(method, value, f"stain_reference` of `{name}")


def _patch_edge(
    flagged: dict[str, Any], recipe: Recipe | None, merged: dict[str, Any], job_px: int | None
) -> tuple[int, str]:
    """A model's patch edge and where it came from (for messages): its own flag, else the job's
    flag (which overrides a recipe's edge too: ``recipe.JOB_FIELDS``), else its recipe."""
    if "patch_px" in flagged:
        return merged["patch_px"], "--model_patch_px"
    if job_px is not None:
        return job_px, "--patch_px"
    if merged.get("patch_px") is not None:
        return merged["patch_px"], "its recipe"
    return PatchingConfig().patch_px, "the default --patch_px"


def _slide_batching(options: PipelineOptions) -> BatchingConfig:
    opts = options.view_as(SlideInferenceOptions)
    common = options.view_as(InferenceOptions)
    with flags_named():
        if opts.batch_size is not None:
            return BatchingConfig.fixed(opts.batch_size)
        return BatchingConfig(
            **given(min_batch_size=opts.min_batch_size, max_batch_size=common.max_batch_size)
        )


def model_guard(tolerances: dict[str, float], common: InferenceOptions) -> GuardConfig:
    """A model's accuracy guard: its recipe's tolerances over the job's defaults, and the
    job's guard flags over both where the user gave them."""
    return GuardConfig(**{**tolerances, **_guard_flags(common)})


def _guard_flags(common: InferenceOptions) -> dict[str, Any]:
    return {
        **given(
            min_agreement=common.guard_min_agreement,
            max_prob_diff=common.guard_max_prob_diff,
            min_cosine=common.guard_min_cosine,
        ),
        "strict": bool(common.precision_strict),
    }


def _guard(common: InferenceOptions) -> GuardConfig:
    return GuardConfig(**_guard_flags(common))


def _failed_fraction(common: InferenceOptions) -> float | None:
    fraction = common.max_failed_fraction
    if fraction is not None and not 0.0 <= fraction < 1.0:
        raise ConfigError(f"--max_failed_fraction must be in [0, 1), got {fraction}")
    return fraction


def slide_job_config(options: PipelineOptions, stream: bool = False) -> SlideJobConfig:
    """Validate the slide pipeline's flags; raise ``ConfigError`` naming the first bad one.
    ``stream``: the stream's (``stream_config``), whose slides come from notifications."""
    common = options.view_as(InferenceOptions)
    opts = options.view_as(SlideInferenceOptions)
    slides, patches = None, None
    if not stream:
        what = "a manifest with slide_id and uri columns"
        slides = _source(opts.slides, "--slides", options, what)
        patches = _source(opts.patches, "--patches", options, "") if opts.patches else None
    patching = given(
        patch_px=opts.patch_px,
        patch_mpp=opts.patch_mpp,
        patch_level=opts.patch_level,
        overlap_px=opts.overlap_px,
        min_tissue=opts.min_tissue,
        tissue_method=opts.tissue_method,
        block_px=opts.block_px,
        max_patches_per_unit=opts.max_patches_per_unit,
    )
    if opts.patch_level is not None and opts.patch_mpp is None:
        patching["patch_mpp"] = None  # tiling by level, not at an mpp
    with flags_named():
        base = PatchingConfig(**patching)
        models = model_specs(options)
        composed = composition(options, models)
        geometries, models = patch_geometries(
            base, models, manifest=patches is not None, apart=frozenset(composed.gates)
        )
        stains = any(m.needs_stains for m in models)
        targets = tuple(dict.fromkeys(t for m in models if (t := m.stain_target)))
        geometries = tuple(
            dataclasses.replace(g, stain_basis=stains, stain_targets=targets) for g in geometries
        )
        run = _run(common)
        info = run_info(
            options,
            "slides",
            run,
            tuple(
                ModelInfo(
                    m.name,
                    m.version,
                    m.uri,
                    m.format,
                    m.output_kind,
                    m.precision,
                    recipe=m.recipe,
                    overrides="; ".join(m.overrides) or None,
                    licence=m.licence,
                    citation=m.citation,
                    stain=(
                        m.stain_reference.said(m.stain_norm)
                        if m.stain_reference is not None
                        else None
                    ),
                )
                for m in models
            )
            + tuple(
                ModelInfo(h.name, h.version, h.uri, h.uri.rsplit(".", 1)[-1], "slide_head", "fp32")
                for h in composed.heads
            ),
            "patches",
            composed.edges(),
        )
        return SlideJobConfig(
            slides=slides,
            patches=patches,
            models=models,
            patching=dataclasses.replace(base, stain_basis=stains, stain_targets=targets),
            geometries=geometries,
            batching=_slide_batching(options),
            destination=_destination(
                options, needs_artifacts=not opts.no_heatmaps or opts.features_h5
            ),
            run=run,
            skip_existing=common.skip_existing and not stream,
            group_by=None if stream else opts.group_by,
            heatmaps=not opts.no_heatmaps,
            max_failed_fraction=_failed_fraction(common),
            info=info,
            **given(
                qupath_min_prob=opts.qupath_min_prob,
                qupath_min_region_um2=opts.qupath_min_region_um2,
                viewer_mpp=opts.viewer_mpp,
                qupath_merge=opts.qupath_merge,
                features_h5=opts.features_h5,
                min_coverage=opts.min_coverage,
            ),
            guard=_guard(common),
            composition=composed,
        )


@dataclass(frozen=True)
class TextJobConfig:
    """Everything ``pipelines.text_inference.build`` needs, validated."""

    documents: ManifestSource
    columns: dict[str, str]
    models: tuple[TextModelSpec, ...]
    windows: WindowConfig
    batching: TokenBatchingConfig
    destination: Destination
    run: RunStamp
    skip_existing: bool
    max_failed_fraction: float | None = None
    info: RunInfo | None = None
    guard: GuardConfig = GuardConfig()


def text_job_config(options: PipelineOptions) -> TextJobConfig:
    """Validate the text pipeline's flags; raise ``ConfigError`` naming the first bad one."""
    common = options.view_as(InferenceOptions)
    opts = options.view_as(TextInferenceOptions)
    documents = _source(
        opts.documents, "--documents", options, "a file with doc_id and text columns"
    )
    uris, fields = _per_model(options, COMMON + TEXT)
    missing = sorted(name for name in uris if "task" not in fields[name])
    if missing:
        raise ConfigError(f"--task NAME=TASK is required for {', '.join(missing)}")
    with flags_named():
        windows = WindowConfig(
            **given(window_tokens=opts.window_tokens, stride_tokens=opts.stride_tokens)
        )
        batching = TokenBatchingConfig(
            **given(
                max_tokens_per_batch=opts.max_tokens_per_batch,
                max_batch_size=common.max_batch_size,
                buffer_size=opts.sort_buffer,
                max_padding=opts.max_padding,
            )
        )
        if batching.max_tokens_per_batch < windows.window_tokens:
            raise ConfigError(
                f"`max_tokens_per_batch` ({batching.max_tokens_per_batch}) must hold one window "
                f"(`window_tokens` {windows.window_tokens})"
            )
        with flags_named(MODEL_FIELD_FLAGS):
            models = tuple(
                TextModelSpec(name=name, uri=uri, require_gpu=common.require_gpu, **fields[name])
                for name, uri in uris.items()
            )
        columns = {
            column: ours
            for column, ours in ((opts.doc_id_column, "doc_id"), (opts.text_column, "text"))
            if column and column != ours
        }
        run = _run(common)
        info = run_info(
            options,
            "text",
            run,
            tuple(
                ModelInfo(m.name, m.version, m.uri, "huggingface", m.task, m.precision)
                for m in models
            ),
            "tokens",
        )
        return TextJobConfig(
            documents=documents,
            columns=columns,
            models=models,
            windows=windows,
            batching=batching,
            destination=_destination(options, needs_artifacts=False),
            run=run,
            skip_existing=common.skip_existing,
            max_failed_fraction=_failed_fraction(common),
            info=info,
            guard=_guard(common),
        )
