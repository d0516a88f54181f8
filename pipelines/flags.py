"""Every pipeline flag once: its group, help and shown default; ``--help``; unknown-flag errors.

Each flag is declared in one table below, which feeds three things: Beam's option parsing (the
``PipelineOptions`` classes in ``options.py``), ``--help``, and the check that stops a run on a
flag that neither Beam nor the pipeline knows. Defaults shown in ``--help`` are read from the
config dataclasses, the one place they live; parsed values stay ``None`` when a flag is not given.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any, NoReturn, cast

from apache_beam.options.pipeline_options import PipelineOptions

from transforms.core.errors import ConfigError
from transforms.io.destinations import DEFAULT_OUTPUT, RUN_ID_PATTERN
from transforms.models.kinds import KINDS, OUTPUT_KINDS
from transforms.models.precision import PRECISIONS, GuardConfig
from transforms.models.presets import preset_names
from transforms.models.spec import (
    ACTIVATIONS,
    INPUTS,
    MODALITIES,
    MODEL_NAME_PATTERN,
    STAIN_METHODS,
    ModelSpec,
    check_model_name,
)
from transforms.slides.gates import COVERS
from transforms.slides.geometry import TISSUE_METHODS, PatchingConfig
from transforms.slides.heads import SLIDE_MAX_PATCHES
from transforms.slides.qupath import MIN_PROB as QUPATH_MIN_PROB
from transforms.slides.regions import MIN_REGION_UM2 as QUPATH_MIN_REGION_UM2
from transforms.slides.run_model import BatchingConfig
from transforms.slides.summaries import MIN_COVERAGE
from transforms.slides.viewer import VIEWER_MPP
from transforms.stream.record import WINDOW_S
from transforms.stream.series import MAX_WAIT_S, QUIET_S
from transforms.text.batching import TokenBatchingConfig
from transforms.text.tasks import TASK_NAMES, TASKS
from transforms.text.windows import WindowConfig

PROGRESS_INTERVAL_S = 10.0


def default_of(config: type, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``config``."""
    for f in fields(config):
        if f.name == name:
            return f.default if f.default is not MISSING else None
    raise KeyError(name)


TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no", "")


def is_true(text: object) -> bool:
    """Whether a flag's text (or value) says true: ``true``, ``1`` or ``yes``, any case."""
    return str(text).strip().lower() in TRUE_WORDS


def _truth(text: str) -> bool:
    value = text.strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


# What one value of a flag may be in a Flex Template (the template's regexes are built from these
# and from each flag's choices; a template runs on Dataflow, so its files are on gs:// or bq://).
_GCS = r"gs://[a-z0-9][a-z0-9._-]{1,220}"
_BQ_DATASET = r"bq://[a-z][a-z0-9.:-]{3,90}\.[A-Za-z_][A-Za-z0-9_]{0,1023}"
GCS_FILE = _GCS + "/.+"
GCS_FOLDER = _GCS + "(/.*)?"
MANIFEST_URI = f"({GCS_FILE}|{_BQ_DATASET}\\.[A-Za-z0-9_][A-Za-z0-9_-]{{0,1023}})"
OUTPUT_URI = f"({_BQ_DATASET}|{GCS_FOLDER})"
POSITIVE_INT = "[1-9][0-9]{0,6}"
COUNT = "[0-9]{1,7}"
NUMBER = r"[0-9]{0,6}\.?[0-9]{1,6}"
THREE_NUMBERS = f"{NUMBER},{NUMBER},{NUMBER}"
FRACTION = r"(0(\.[0-9]+)?|1(\.0+)?)"
SIGNED_FRACTION = "-?" + FRACTION
FAILED_FRACTION = r"(0|0?\.[0-9]+)"
COLUMN = "[A-Za-z_][A-Za-z0-9_]{0,127}"
VERSION = "[A-Za-z0-9_.:+-]{1,128}"
CLASS_PATH = "[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*"
NAMES = "[^,=]+(,[^,=]+)*"
OUTPUT_NAME = "[A-Za-z0-9_.:-]{1,128}"
GPU_PRESETS = ("t4", "l4", "a100")
"""The ``--gpu`` presets (``pipelines/gpu.py`` holds what each sets)."""


def _floats(text: str) -> tuple[float, ...]:
    """``r,g,b`` -> three floats (``ModelSpec`` checks the count)."""
    return tuple(float(v) for v in text.split(","))


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(","))


def named_values(pairs: list[str], flag: str) -> dict[str, str]:
    """``["a=1", "b=2"]`` -> ``{"a": "1", "b": "2"}``; raise ``ConfigError`` naming ``flag``.

    Names are model names (``models.spec.MODEL_NAME_PATTERN``).
    """
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = (part.strip() for part in pair.partition("="))
        if not sep or not name or not value:
            raise ConfigError(f"{flag} expects NAME=VALUE, got {pair!r}")
        try:
            check_model_name(name)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("`name`", f"{flag}: model name")) from None
        if name in out:
            raise ConfigError(f"{flag} gives {name!r} twice")
        out[name] = value
    return out


@dataclass(frozen=True)
class Flag:
    """One command-line flag, and every surface of it: argparse, ``--help``, README's flag
    reference, the per-model ``NAME=VALUE`` parsing and the Flex Template metadata.

    ``shown`` is the default ``--help`` states (None: no default). A repeatable flag whose
    metavar starts with ``NAME=`` is per model: its values are ``NAME=VALUE``, ``type`` converts
    the VALUE and ``field`` names the model spec's field it sets. ``label`` offers the flag in
    the Flex Template (empty: a local-only flag), where ``pattern`` (or ``choices``) says what a
    value may be.
    """

    name: str
    help: str
    shown: Any = None
    type: Callable[[str], Any] = str
    metavar: str | None = None
    repeat: bool = False
    switch: bool = False
    choices: Sequence[str] | None = None
    label: str = ""
    pattern: str | None = None
    field: str | None = None
    required: bool = False

    @property
    def per_model(self) -> bool:
        return self.repeat and (self.metavar or "").startswith("NAME=")

    def template_regex(self) -> str | None:
        """The Flex Template's regex of this flag's value (None: any text)."""
        if self.switch:
            value: str | None = "(true|false)"
        elif self.choices:
            value = "(" + "|".join(re.escape(c) for c in self.choices) + ")"
        else:
            value = self.pattern
        if value is None:
            return None
        return f"^{MODEL_NAME_PATTERN}={value}$" if self.per_model else f"^{value}$"

    def template_parameter(self) -> dict[str, Any]:
        """This flag as a Flex Template metadata parameter."""
        param: dict[str, Any] = {
            "name": self.name,
            "label": self.label,
            "helpText": self.help,
            "isOptional": not self.required,
        }
        regex = self.template_regex()
        if regex:
            param["regexes"] = [regex]
        return param

    def add_to(self, parser: Any) -> None:
        """Add to an argparse parser; a flag not given parses as None ([] or False)."""
        flag = f"--{self.name}"
        if self.switch:  # bare, or with a value as a Flex Template launcher passes it
            parser.add_argument(
                flag, nargs="?", const=True, default=False, type=_truth, help=self.help
            )
        elif self.repeat:
            parser.add_argument(
                flag, action="append", default=[], metavar=self.metavar, help=self.help
            )
        else:
            parser.add_argument(
                flag,
                type=self.type,
                default=None,
                metavar=self.metavar,
                choices=self.choices,
                help=self.help,
            )

    def values(self, given: list[str]) -> dict[str, Any]:
        """A per-model flag's ``NAME=VALUE`` texts -> ``{name: value}``, each value converted
        by ``type``; ``ConfigError`` naming the flag."""
        out = {}
        for name, text in named_values(given, f"--{self.name}").items():
            try:
                out[name] = self.type(text)
            except ValueError:
                raise ConfigError(
                    f"--{self.name} {name}={text}: expected {self.metavar or 'a value'}"
                ) from None
        return out


Group = tuple[str, tuple[Flag, ...]]

_PATCHING, _MODEL = PatchingConfig, ModelSpec

COMMON: tuple[Group, ...] = (
    (
        "models",
        (
            Flag(
                "model",
                "NAME=URI of a model; repeat for several models",
                metavar="NAME=URI",
                repeat=True,
                label="Model",
                pattern=GCS_FILE,
                required=True,
            ),
            Flag(
                "model_version",
                "NAME=VERSION stamped on the model's rows",
                default_of(_MODEL, "version"),
                metavar="NAME=VERSION",
                repeat=True,
                label="Model version",
                pattern=VERSION,
                field="version",
            ),
            Flag(
                "require_gpu",
                "fail worker setup without a CUDA device",
                False,
                switch=True,
                label="Require a GPU",
            ),
            Flag(
                "precision",
                "NAME=fp32|bf16|fp16|auto: autocast around the forward pass, checked by the "
                "accuracy guard (auto: fp16 on CUDA, bf16 on a CPU, each kept only where the "
                "guard passed and measured it faster than fp32)",
                default_of(_MODEL, "precision"),
                metavar="NAME=PRECISION",
                repeat=True,
                label="Precision",
                choices=PRECISIONS,
                field="precision",
            ),
            Flag(
                "precision_strict",
                "fail the job when the accuracy guard fails, instead of falling back to fp32",
                False,
                switch=True,
                label="Fail on a failed precision guard",
            ),
            Flag(
                "guard_min_agreement",
                "accuracy guard: least share of labels equal to fp32's",
                str(GuardConfig.min_agreement),
                float,
                "SHARE",
                label="Guard: least label agreement",
                pattern=FRACTION,
            ),
            Flag(
                "guard_max_prob_diff",
                "accuracy guard: largest probability difference from fp32",
                str(GuardConfig.max_prob_diff),
                float,
                "P",
                label="Guard: largest probability difference",
                pattern=FRACTION,
            ),
            Flag(
                "guard_min_cosine",
                "accuracy guard: least cosine similarity of an embedding to fp32's",
                str(GuardConfig.min_cosine),
                float,
                "COS",
                label="Guard: least embedding cosine",
                pattern=SIGNED_FRACTION,
            ),
        ),
    ),
    (
        "output",
        (
            Flag(
                "output",
                "a folder of Parquet files (local or gs://) or bq://PROJECT.DATASET",
                DEFAULT_OUTPUT,
                metavar="FOLDER|bq://PROJECT.DATASET",
                label="Results",
                pattern=OUTPUT_URI,
                required=True,
            ),
            Flag(
                "artifacts",
                "folder for heatmaps and other files, local or gs:// (needed with "
                "a bq:// --output)",
                "--output",
                metavar="FOLDER",
                label="Heatmap folder",
                pattern=GCS_FOLDER,
            ),
            Flag(
                "bigquery_endpoint",
                "BigQuery API endpoint, e.g. a local emulator",
                "$BIGQUERY_EMULATOR_HOST, else Google's",
                metavar="URL",
            ),
            Flag(
                "skip_existing",
                "skip inputs that already have results for every model at its version",
                False,
                switch=True,
                label="Skip existing",
            ),
            Flag(
                "run_id",
                "id stamped on every row and output file name",
                "UTC time + random",
                metavar="ID",
                label="Run id",
                pattern=RUN_ID_PATTERN,
            ),
        ),
    ),
    (
        "run",
        (
            Flag(
                "max_batch_size",
                "largest batch handed to a model",
                f"{default_of(BatchingConfig, 'max_batch_size')} patches; "
                f"{default_of(TokenBatchingConfig, 'max_batch_size')} windows",
                int,
                "N",
                label="Max batch size",
                pattern=POSITIVE_INT,
            ),
            Flag(
                "max_failed_fraction",
                "fail the run (and the Dataflow job) when more than this "
                "fraction of the inputs produce no result",
                "none",
                float,
                "F",
                label="Largest failed fraction",
                pattern=FAILED_FRACTION,
            ),
            Flag(
                "progress_interval_s",
                "seconds between progress lines (local runs)",
                PROGRESS_INTERVAL_S,
                float,
                "S",
            ),
            Flag(
                "gpu",
                "Dataflow GPU preset: accelerator, machine type, one SDK process, harness "
                "threads, --require_gpu: t4, l4 or a100",
                "none",
                label="GPU preset",
                choices=GPU_PRESETS,
            ),
            Flag("verbose", "show tracebacks of errors that stop the run", False, switch=True),
        ),
    ),
)

SLIDES: tuple[Group, ...] = (
    (
        "input",
        (
            Flag(
                "slides",
                "slide manifest (slide_id, uri[, mpp, tissue_method, ...]): CSV, TSV, "
                "JSONL or Parquet, local or gs://, or bq://PROJECT.DATASET.TABLE",
                metavar="MANIFEST",
                label="Slide manifest",
                pattern=MANIFEST_URI,
                required=True,
            ),
            Flag(
                "patches",
                "optional patch manifest (slide_id, x_px, y_px, size_px[, level]); "
                "without it patches are planned on each slide's tissue",
                metavar="MANIFEST",
                label="Patch manifest",
                pattern=GCS_FILE,
            ),
            Flag(
                "group_by",
                "slide-manifest column whose values group slides into case_summaries",
                metavar="COLUMN",
                label="Case column",
                pattern=COLUMN,
            ),
        ),
    ),
    (
        "models",
        (
            Flag(
                "model_class",
                "NAME=package.module:Class for a state_dict model file (the "
                "module must be importable: on PYTHONPATH or installed)",
                metavar="NAME=CLASS",
                repeat=True,
                label="Model class",
                pattern=CLASS_PATH,
                field="model_class",
            ),
            Flag(
                "model_output",
                f"NAME={'|'.join(KINDS)}: what the model returns ("
                + ", ".join(f"{k.name}: {k.help}" for k in KINDS.values())
                + ") and so which table it writes",
                default_of(_MODEL, "output_kind"),
                metavar="NAME=KIND",
                repeat=True,
                label="Model output kind",
                choices=OUTPUT_KINDS,
                field="output_kind",
            ),
            Flag(
                "compile",
                "NAME: torch.compile the model once per worker process, at setup, for batches "
                "of --max_batch_size (pays off in long jobs: see README)",
                metavar="NAME",
                repeat=True,
                label="Compile models",
                pattern=MODEL_NAME_PATTERN,
            ),
            Flag(
                "model_patch_px",
                "NAME=PX the model's own patch edge (models with one patch geometry share one "
                "decoded patch stream; each slide is still surveyed once)",
                "--patch_px",
                metavar="NAME=PX",
                repeat=True,
                label="Model patch size",
                pattern=POSITIVE_INT,
                field="patch_px",
                type=int,
            ),
            Flag(
                "model_mpp",
                "NAME=MPP the model's own patch resolution, µm/px (grid tiling by mpp only)",
                "--patch_mpp",
                metavar="NAME=MPP",
                repeat=True,
                label="Model patch mpp",
                pattern=NUMBER,
                field="patch_mpp",
                type=float,
            ),
            Flag(
                "model_input",
                "NAME=rgb|eho: the patch's RGB, or its EHO stain channels (eosin, hematoxylin, "
                "optical density) scaled by its slide's H&E stain basis",
                default_of(_MODEL, "input"),
                metavar="NAME=INPUT",
                repeat=True,
                label="Model input",
                choices=INPUTS,
                field="input",
            ),
            Flag(
                "preset",
                "NAME=PRESET: the recipe of a foundation model whose folder you bring (uni, "
                "uni2-h, virchow2, h-optimus-0, prov-gigapath, phikon-v2, conch-v1.5, "
                "ctranspath); the folder is checked to be that architecture before launch",
                metavar="NAME=PRESET",
                repeat=True,
                label="Foundation-model preset",
                choices=preset_names(),
                field="preset",
            ),
            Flag(
                "model_stain",
                "NAME=none|macenko|reinhard: normalise the model's patches towards a reference "
                "stain, with each slide's stain basis from its survey (no second pass)",
                "its recipe's, else none",
                metavar="NAME=METHOD",
                repeat=True,
                label="Stain normalisation",
                choices=STAIN_METHODS,
                field="stain_norm",
            ),
            Flag(
                "stain_reference",
                "NAME=URI: the reference stain, a JSON object (h, e, max_c, io; lab_mean, "
                "lab_std) or an H&E image (.png, .jpg, .tif) it is estimated from",
                "its recipe's, else Macenko's H&E",
                metavar="NAME=URI",
                repeat=True,
                label="Stain reference",
                pattern=GCS_FILE,
                field="stain_reference",
            ),
            Flag(
                "allow_modality",
                "NAME=MODALITY: the slides a model runs on, over its recipe's modality (any: "
                "every slide; a slide of another kind is a dead letter for that model only)",
                metavar="NAME=MODALITY",
                repeat=True,
                label="Model modality",
                choices=MODALITIES,
                field="modality",
            ),
            Flag(
                "class_names",
                "NAME=a,b,c names of the classes, for summaries and picture legends",
                metavar="NAME=A,B,C",
                repeat=True,
                label="Class names",
                pattern=NAMES,
                field="class_names",
                type=_names,
            ),
            Flag(
                "embedding_key",
                "NAME=auto|pooler|cls|mean|OUTPUT: which output is the embedding (pooler_output; "
                "the first token or the mean of last_hidden_state; an output's name)",
                default_of(_MODEL, "embedding_key"),
                metavar="NAME=KEY",
                repeat=True,
                label="Embedding key",
                pattern=OUTPUT_NAME,
                field="embedding_key",
            ),
            Flag(
                "model_mean",
                "NAME=r,g,b input normalisation mean",
                "the model folder's, else ImageNet",
                metavar="NAME=R,G,B",
                repeat=True,
                label="Normalisation mean",
                pattern=THREE_NUMBERS,
                field="mean",
                type=_floats,
            ),
            Flag(
                "model_std",
                "NAME=r,g,b input normalisation std",
                "the model folder's, else ImageNet",
                metavar="NAME=R,G,B",
                repeat=True,
                label="Normalisation std",
                pattern=THREE_NUMBERS,
                field="std",
                type=_floats,
            ),
            Flag(
                "model_activation",
                "NAME=softmax|sigmoid|none applied to the model's logits",
                default_of(_MODEL, "activation"),
                metavar="NAME=ACTIVATION",
                repeat=True,
                label="Activation",
                choices=ACTIVATIONS,
                field="activation",
            ),
        ),
    ),
    (
        "patches",
        (
            Flag(
                "patch_px",
                "patch edge handed to the models, px",
                default_of(_PATCHING, "patch_px"),
                int,
                "PX",
                label="Patch size (px)",
                pattern=POSITIVE_INT,
            ),
            Flag(
                "patch_mpp",
                "patch resolution, µm/px",
                default_of(_PATCHING, "patch_mpp"),
                float,
                "MPP",
                label="Patch resolution (µm/px)",
                pattern=NUMBER,
            ),
            Flag(
                "patch_level",
                "tile at this pyramid level instead of at --patch_mpp",
                None,
                int,
                "LEVEL",
                label="Pyramid level",
                pattern=COUNT,
            ),
            Flag(
                "overlap_px",
                "overlap of neighbouring grid patches, px",
                default_of(_PATCHING, "overlap_px"),
                int,
                "PX",
                label="Patch overlap (px)",
                pattern=COUNT,
            ),
            Flag(
                "min_tissue",
                "smallest tissue fraction of a grid patch (0 keeps all)",
                default_of(_PATCHING, "min_tissue"),
                float,
                "F",
                label="Minimum tissue fraction",
                pattern=FRACTION,
            ),
            Flag(
                "tissue_method",
                "auto (per slide, by its background), brightfield or "
                "fluorescence; a manifest column tissue_method overrides it per slide",
                default_of(_PATCHING, "tissue_method"),
                metavar="METHOD",
                label="Tissue detection",
                choices=TISSUE_METHODS,
            ),
            Flag(
                "block_px",
                "work-unit block edge at the read level, px",
                default_of(_PATCHING, "block_px"),
                int,
                "PX",
                label="Read block (px)",
                pattern=POSITIVE_INT,
            ),
            Flag(
                "max_patches_per_unit",
                "patches per work unit at most",
                default_of(_PATCHING, "max_patches_per_unit"),
                int,
                "N",
                label="Patches per read",
                pattern=POSITIVE_INT,
            ),
        ),
    ),
    (
        "batching",
        (
            Flag(
                "batch_size",
                "fixed batch size (sets --min_batch_size and --max_batch_size)",
                None,
                int,
                "N",
                label="Batch size",
                pattern=POSITIVE_INT,
            ),
            Flag(
                "min_batch_size",
                "smallest batch handed to a model",
                default_of(BatchingConfig, "min_batch_size"),
                int,
                "N",
                label="Min batch size",
                pattern=POSITIVE_INT,
            ),
        ),
    ),
    (
        "pictures",
        (
            Flag(
                "no_heatmaps",
                "skip the per-slide pictures (heatmaps, class maps, thumbnails), stitched masks, "
                "viewer pages and QuPath GeoJSON; the runs row and the report are still written",
                False,
                switch=True,
                label="No heatmaps",
            ),
            Flag(
                "qupath_min_prob",
                "export a classifier's patch to QuPath GeoJSON when its top class probability "
                "is at least this (segmentation models export their class regions)",
                str(QUPATH_MIN_PROB),
                float,
                "P",
                label="QuPath export threshold",
                pattern=FRACTION,
            ),
            Flag(
                "qupath_merge",
                "merge a classifier's exported patches by top class into QuPath annotations "
                "(connected patches one polygon) instead of one detection per patch",
                False,
                switch=True,
                label="Merge QuPath tiles",
            ),
            Flag(
                "qupath_min_region_um2",
                "leave class regions smaller than this many µm² out of a segmentation model's "
                "QuPath GeoJSON (never out of its mask or its areas)",
                f"{QUPATH_MIN_REGION_UM2:g}",
                float,
                "UM2",
                label="Smallest QuPath region (µm²)",
            ),
            Flag(
                "features_h5",
                "write each embedding model's patch features and level-0 coordinates per slide "
                "as a TRIDENT/CLAM-style HDF5 file (features_h5/<run_id>/ under --artifacts)",
                False,
                switch=True,
                label="Features as HDF5",
            ),
            Flag(
                "viewer_mpp",
                "µm/px of the deepest level of each slide's zoomable viewer page (finer: larger "
                "reports; never finer than the slide)",
                f"{VIEWER_MPP:g}",
                float,
                "MPP",
                label="Viewer resolution (µm/px)",
            ),
            Flag(
                "min_coverage",
                "flag a slide x model whose planned patches cover less than this share of its "
                "detected tissue (in the report, the summary line and slide_summaries)",
                str(MIN_COVERAGE),
                float,
                "F",
                label="Minimum tissue coverage",
                pattern=FRACTION,
            ),
        ),
    ),
    (
        "composition",
        (
            Flag(
                "gate",
                "NAME=RULE: run model NAME only where another model of the job (its gate) "
                "passes, e.g. detail='qc:tissue>=0.5 and qc:blur<0.2' (GATE:CLASS>=T, with "
                ">=, >, <= or <, joined by and / or; one gate per rule; a gate may be gated)",
                metavar="NAME=RULE",
                repeat=True,
                label="Gate",
            ),
            Flag(
                "gate_cover",
                "when a gated patch passes: centre (a passing gate patch holds its centre) or "
                "any (a passing gate patch overlaps it)",
                "centre",
                choices=COVERS,
                label="Gate cover rule",
            ),
            Flag(
                "slide_model",
                "NAME=URI of a slide-level head (.pt2 or .onnx) run over all of a slide's patch "
                "embeddings and coordinates; needs --slide_model_input",
                metavar="NAME=URI",
                repeat=True,
                label="Slide-level model",
                pattern=GCS_FILE,
            ),
            Flag(
                "slide_model_input",
                "NAME=ENCODER: the embedding model (a --model) whose patch embeddings a slide "
                "head takes",
                metavar="NAME=ENCODER",
                repeat=True,
                label="Slide model input",
                pattern=MODEL_NAME_PATTERN,
            ),
            Flag(
                "slide_class_names",
                "NAME=a,b,...: a slide head's class names",
                metavar="NAME=CLASSES",
                repeat=True,
                label="Slide model classes",
            ),
            Flag(
                "slide_model_activation",
                "NAME=softmax|sigmoid|none: turns a slide head's logits into probabilities",
                "softmax",
                metavar="NAME=ACTIVATION",
                repeat=True,
                label="Slide model activation",
                choices=ACTIVATIONS,
            ),
            Flag(
                "slide_max_patches",
                "the most patch embeddings one slide may give a slide head; a slide with more "
                "is a dead letter naming the count (one slide's embeddings are held in memory: "
                "N x D x 4 bytes)",
                str(SLIDE_MAX_PATCHES),
                int,
                "N",
                label="Slide head patch bound",
                pattern=POSITIVE_INT,
            ),
            Flag(
                "model_hints",
                "NAME=HINT=VALUE;...: Beam resource hints for a model's stage (a --model or "
                "--slide_model), e.g. detail=accelerator=type:nvidia-l4;count:1;"
                "install-nvidia-driver;min_ram=32GB; on Dataflow the stage runs on workers "
                "that fit them",
                metavar="NAME=HINTS",
                repeat=True,
                label="Model resource hints",
            ),
        ),
    ),
)

STREAM_INPUT: Group = (
    "stream",
    (
        Flag(
            "subscription",
            "a Pub/Sub subscription (projects/P/subscriptions/S) of Cloud Storage OBJECT_FINALIZE "
            "or DICOM store notifications; repeat it for several",
            metavar="SUBSCRIPTION",
            repeat=True,
            label="Notification subscriptions",
            pattern=r"projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/subscriptions/[A-Za-z][\w.~+%-]{2,254}",
            required=True,
        ),
        Flag(
            "dicomweb_root",
            "STORE=URL: the DICOMweb root of a DICOM store named in notifications (its resource "
            "name), where it is not the Healthcare API's",
            metavar="STORE=URL",
            repeat=True,
            label="DICOMweb roots",
        ),
        Flag(
            "quiet_s",
            "seconds a DICOM series must go without a new instance before it is read",
            f"{QUIET_S:g}",
            float,
            "S",
            label="DICOM series quiet period (s)",
            pattern=NUMBER,
        ),
        Flag(
            "max_wait_s",
            "seconds after its first notification that a DICOM series still unreadable becomes "
            "a dead letter",
            f"{MAX_WAIT_S:g}",
            float,
            "S",
            label="DICOM series longest wait (s)",
            pattern=NUMBER,
        ),
        Flag(
            "window_s",
            "seconds of the windows results are written in (and the runs row updated after)",
            f"{WINDOW_S:g}",
            float,
            "S",
            label="Window (s)",
            pattern=NUMBER,
        ),
    ),
)
STREAM: tuple[Group, ...] = (STREAM_INPUT, *(g for g in SLIDES if g[0] != "input"))
"""The stream's flags: its subscriptions instead of manifests, then every slide flag."""

TEXT: tuple[Group, ...] = (
    (
        "input",
        (
            Flag(
                "documents",
                "documents (doc_id and text columns): CSV, TSV, JSONL or Parquet, "
                "local or gs://, or bq://PROJECT.DATASET.TABLE",
                metavar="MANIFEST",
                label="Documents",
                pattern=MANIFEST_URI,
                required=True,
            ),
            Flag(
                "doc_id_column",
                "the documents' id column",
                "doc_id",
                metavar="COLUMN",
                label="Id column",
                pattern=COLUMN,
            ),
            Flag(
                "text_column",
                "the documents' text column",
                "text",
                metavar="COLUMN",
                label="Text column",
                pattern=COLUMN,
            ),
        ),
    ),
    (
        "models",
        (
            Flag(
                "task",
                f"NAME={'|'.join(TASKS)}, one per --model ("
                + "; ".join(f"{t.name}: {t.help}" for t in TASKS.values())
                + ")",
                metavar="NAME=TASK",
                repeat=True,
                label="Task",
                choices=TASK_NAMES,
                field="task",
                required=True,
            ),
        ),
    ),
    (
        "batching",
        (
            Flag(
                "max_tokens_per_batch",
                "padded tokens per batch",
                default_of(TokenBatchingConfig, "max_tokens_per_batch"),
                int,
                "N",
                label="Tokens per batch",
                pattern=POSITIVE_INT,
            ),
            Flag(
                "window_tokens",
                "model window, special tokens included",
                default_of(WindowConfig, "window_tokens"),
                int,
                "N",
                label="Window",
                pattern=POSITIVE_INT,
            ),
            Flag(
                "stride_tokens",
                "overlap of consecutive windows, tokens",
                default_of(WindowConfig, "stride_tokens"),
                int,
                "N",
                label="Window overlap",
                pattern=POSITIVE_INT,
            ),
            Flag(
                "sort_buffer",
                "windows sorted together by length",
                default_of(TokenBatchingConfig, "buffer_size"),
                int,
                "N",
                label="Sort buffer",
                pattern=POSITIVE_INT,
                field="buffer_size",
            ),
            Flag(
                "max_padding",
                "largest padded share of a batch",
                default_of(TokenBatchingConfig, "max_padding"),
                float,
                "F",
                label="Max padding",
                pattern=FRACTION,
            ),
        ),
    ),
)


def add_flags(parser: Any, groups: tuple[Group, ...]) -> None:
    for _, flags in groups:
        for flag in flags:
            flag.add_to(parser)


def flag_names(groups: tuple[Group, ...]) -> list[str]:
    return [flag.name for _, flags in groups for flag in flags]


def per_model_flags(groups: tuple[Group, ...]) -> list[Flag]:
    """The flags of ``groups`` that set a field of each model's spec (``NAME=VALUE``)."""
    return [flag for _, flags in groups for flag in flags if flag.per_model and flag.field]


TEMPLATES = {
    "slides": (
        "pathbeam slide inference",
        "Cut patches on the fly from whole-slide images in Cloud Storage, run a PyTorch model "
        "over them on GPU workers, and write patch predictions, slide summaries, heatmaps and "
        "dead letters.",
    ),
    "text": (
        "pathbeam text inference",
        "Run a Hugging Face model over biomedical documents (length-sorted, token-budget "
        "batches, windows for long documents) and write entities, labels or embeddings and "
        "dead letters.",
    ),
    "stream": (
        "pathbeam slide stream",
        "Process whole-slide images as they land: Cloud Storage and DICOM store notifications "
        "from Pub/Sub, the slide pipeline's models on GPU workers, each slide's rows once.",
    ),
}


def template_metadata(pipeline: str) -> dict[str, Any]:
    """The Flex Template metadata of ``pipeline`` (``slides`` or ``text``), built from the flag
    table: every flag with a label, its help, and regexes from its choices or pattern."""
    name, description = TEMPLATES[pipeline]
    groups = COMMON + {"slides": SLIDES, "text": TEXT, "stream": STREAM}[pipeline]
    return {
        "name": name,
        "description": description,
        "parameters": [f.template_parameter() for _, flags in groups for f in flags if f.label],
    }


class _Parser(argparse.ArgumentParser):
    """An argparse parser that records the option strings of its flags (argparse keeps them
    only in a private list) and raises a one-line ``ConfigError`` where argparse would print
    its whole usage and exit (``--patch_px abc`` printed 171 lines)."""

    def __init__(self) -> None:
        super().__init__(allow_abbrev=False, add_help=False, conflict_handler="resolve")
        self.option_strings: list[str] = []

    def add_argument(self, *args: Any, **kwargs: Any) -> Any:
        self.option_strings += [a for a in args if isinstance(a, str) and a.startswith("-")]
        return super().add_argument(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _beam_parser() -> _Parser:
    """A parser of every Beam (and Dataflow) flag, none of ours.

    Private API, on purpose: Beam has no public way to list its flags' option strings (with
    their aliases, such as ``--experiment`` for ``--experiments``) or their help;
    ``PipelineOptions.get_all_options()`` gives destination names only. So each Beam options
    class's ``_add_argparse_args`` hook (the one Beam's docs tell users to override) is called
    on our parser. ``tests/pipelines/test_flags.py`` fails if that hook changes.
    """
    parser = _Parser()
    seen: set[type] = set()
    pending = list(PipelineOptions.__subclasses__())
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        pending += cls.__subclasses__()
        if cls.__module__.startswith("apache_beam."):
            cls._add_argparse_args(cast(Any, parser))
    return parser


def check_known(argv: Sequence[str], groups: tuple[Group, ...]) -> None:
    """Raise a one-line ``ConfigError`` naming the first flag neither Beam nor this pipeline
    knows (and the closest known one), or the first value its flag's type refuses."""
    parser = _beam_parser()
    add_flags(parser, groups)
    known = parser.option_strings
    _, unknown = parser.parse_known_args(list(argv))
    for token in unknown:
        if token.startswith("-"):
            name = token.split("=", 1)[0]
            close = difflib.get_close_matches(name.replace("-", "_"), known, n=1, cutoff=0.6)
            close = close or difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"unknown flag {name}{hint} (--help lists the flags)")
        raise ConfigError(f"unexpected argument {token!r}: flags take the form --name value")


ORDER = (
    "stream",
    "input",
    "models",
    "patches",
    "batching",
    "pictures",
    "composition",
    "output",
    "run",
)


def print_help(prog: str, summary: str, groups: tuple[Group, ...], out: Any = None) -> None:
    """Every flag of the pipeline in groups, with its default, then how to list Beam's flags."""
    out = out or sys.stdout
    merged: dict[str, list[Flag]] = {}
    for title, flags in sorted(groups, key=lambda g: ORDER.index(g[0])):
        merged.setdefault(title, []).extend(flags)
    print(f"usage: python -m {prog} [flags]\n\n{textwrap.fill(summary, 96)}\n", file=out)
    for title, listed in merged.items():
        print(f"{title}:", file=out)
        for flag in listed:
            value = "" if flag.switch else f" {flag.metavar or 'VALUE'}"
            repeat = " Repeatable." if flag.repeat else ""
            default = "" if flag.shown is None else f" Default: {flag.shown}."
            text = f"{flag.help[0].upper()}{flag.help[1:]}.{repeat}{default}"
            print(f"  --{flag.name}{value}", file=out)
            print(
                textwrap.fill(text, 96, initial_indent=" " * 6, subsequent_indent=" " * 6), file=out
            )
        print(file=out)
    print(
        textwrap.fill(
            "Every Beam and Dataflow flag works too (--runner, --project, --region, "
            "--temp_location, --sdk_container_image, --max_num_workers, --dry_run, ...); "
            f"python -m {prog} --help_beam lists them all.",
            96,
        ),
        file=out,
    )


def print_beam_help(prog: str, out: Any = None) -> None:
    parser = _beam_parser()
    parser.prog = f"python -m {prog}"
    parser.print_help(out or sys.stdout)


def markdown_reference() -> str:
    """The flag tables of README's "Flag reference" (a test keeps README equal to this)."""
    parts = []
    for heading, groups in (
        ("Every pipeline:", COMMON),
        ("Slide pipeline:", SLIDES),
        ("Slide stream (and every slide pipeline flag but its input ones):", (STREAM_INPUT,)),
        ("Text pipeline:", TEXT),
    ):
        rows = [
            f"| `--{f.name}` | {title} | {f.help} | "
            + ("" if f.shown is None else f"`{f.shown}`")
            + " |"
            for title, flags in groups
            for f in flags
        ]
        table = "| flag | group | what it does | default |\n|---|---|---|---|\n" + "\n".join(rows)
        parts.append(f"{heading}\n\n{table}\n")
    return "\n".join(parts)


def main() -> None:
    """``python -m pipelines.flags slides|text``: print that pipeline's template metadata
    (``containers/launcher/<pipeline>_metadata.json``; a test keeps the files equal to it)."""
    print(json.dumps(template_metadata(sys.argv[1]), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
