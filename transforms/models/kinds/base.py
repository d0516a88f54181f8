"""What every output kind of a patch model is asked for, and the helpers the kinds share.

An output kind (``classification``, ``embedding``, ``segmentation``, ...) is one object that holds
what the kind means everywhere in the product: how a model's raw outputs become one result per
patch, the table its rows go to and how a row is built, how the accuracy guard compares two
precisions, what a row adds to its slide's statistics, which picture a slide gets and what QuPath
receives, which Hugging Face auto class loads it, and its help text. Modules ask the kind; none
branches on its name. A new kind is a new file in this folder plus one line in ``__init__.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from transforms.io.schemas import RUN_COLUMNS, SLIDE_CLUSTER, SLIDE_KEY, Column, Table
from transforms.models.precision import GuardConfig, GuardFigures

Outputs = dict[str, np.ndarray]
"""A model's raw outputs as named float arrays (a tensor is ``{"output": ...}``, a tuple
``{"0": ..., "1": ...}``, a Hugging Face output its fields, an ONNX graph its output names)."""


@dataclass(frozen=True)
class PatchRegion:
    """Where one patch's pixels lie on its slide, for kinds that count pixels (segmentation).

    All boxes are level-0 pixels. The patch covers ``origin`` to ``origin + size``; the part
    inside the slide ends at ``valid_end`` (the rest is padding); ``own`` ``(x0, y0, x1, y1)``
    is what this patch alone accounts for (neighbours' owned boxes never overlap). ``tissue``
    is its tissue mask at its own pixels, False in the padding (None: no tissue rule).
    """

    origin: tuple[int, int]
    size: int
    valid_end: tuple[int, int]
    own: tuple[int, int, int, int]
    tissue: np.ndarray | None = None


PATCH_BOX = (
    Column("slide_id", "STRING", "REQUIRED"),
    Column("model_name", "STRING", "REQUIRED"),
    Column("model_version", "STRING", "REQUIRED"),
    Column("x_px", "INT64", "REQUIRED", description="level-0 left edge"),
    Column("y_px", "INT64", "REQUIRED", description="level-0 top edge"),
    Column("size_px", "INT64", "REQUIRED", description="level-0 edge of the square patch"),
    Column("level", "INT64", "REQUIRED", description="pyramid level the pixels were read from"),
    Column("mpp", "FLOAT64", description="microns per pixel of the pixels the model saw"),
    Column(
        "valid_width_px",
        "INT64",
        description="level-0 width of the part of the patch inside the slide (less than size_px "
        "at the right edge, where the rest is padded with the slide's background)",
    ),
    Column("valid_height_px", "INT64", description="the same, at the bottom edge"),
)


def patch_table(name: str, *columns: Column) -> Table:
    """A per-patch table: the patch box, the kind's ``columns``, the run."""
    return Table(name, (*PATCH_BOX, *columns, *RUN_COLUMNS), SLIDE_KEY, SLIDE_CLUSTER)


class OutputKind:
    """One output kind. Subclasses set the attributes and implement ``results`` and ``row``."""

    name: str = ""
    output: str = ""
    """The name of ``build()``'s output that its rows go to (``predictions``, ...)."""
    table: Table
    """The per-patch table its rows are written to."""
    slide_table: Table | None = None
    """A per-slide table of its own (``slide_embeddings``), if any."""
    hf_auto_class: str = "AutoModel"
    """The transformers auto class that loads a Hugging Face folder of this kind."""
    help: str = ""
    """What the model returns, for ``--model_output``'s help."""
    has_classes: bool = True
    """Whether its rows carry a value per class (names, slide statistics, legends)."""
    picture: str | None = None
    """The folder of the picture each slide gets per model (None: none)."""
    class_map: bool = False
    """Whether that picture is a class map (each cell its likeliest class) or a heatmap."""
    shown_value: str = "mean P"
    """What the picture's legend says its colours are."""
    class_areas: bool = False
    """Whether slide summaries carry an area per class (``class_area_mm2``)."""
    needs_tissue: bool = False
    """Whether ``results`` takes each patch's ``PatchRegion`` (its tissue mask, valid part and
    owned box)."""

    def results(
        self, outputs: Outputs, spec: Any, n: int, regions: Sequence[PatchRegion] | None
    ) -> list:
        """One result per patch of a batch of ``n``, from the model's raw ``outputs``.

        Raises ``ValueError`` naming the model, the shape and what was expected."""
        raise NotImplementedError

    def row(self, result: Any) -> dict:
        """The kind's columns of one patch's row (the box and run come from the caller)."""
        raise NotImplementedError

    def compare(self, reduced: list, exact: list, cfg: GuardConfig) -> GuardFigures:
        """The accuracy guard: a batch's results in reduced precision against fp32."""
        raise NotImplementedError

    def class_count(self, result: Any) -> int | None:
        """How many classes one result has (None: the kind has none)."""
        return None

    def slide_values(self, row: dict) -> Sequence[float]:
        """What a row adds to its slide's per-class statistics (empty: counted only)."""
        return ()

    def slide_areas(self, row: dict) -> Sequence[float]:
        """Per class, the level-0 px² a row adds to its slide's class areas (empty: none)."""
        return ()

    def slide_grid(self, row: dict) -> Sequence[int]:
        """A row's class grid for a class-map picture (empty: the row paints one cell)."""
        return ()

    @property
    def exports_qupath(self) -> bool:
        """Whether its rows become QuPath detections (kinds with classes do; a class map's
        regions are traced from its stitched mask instead, ``slides/regions.py``)."""
        return self.has_classes and not self.class_map

    def qupath_values(self, row: dict) -> Sequence[float] | None:
        """Per class, what QuPath receives for a row (None: the kind exports nothing)."""
        return None

    def qupath_measurements(self, row: dict) -> dict[str, float]:
        """Measurements a QuPath detection carries besides its per-class values."""
        return {}


def first_output(outputs: Outputs, preferred: str) -> tuple[str, np.ndarray]:
    """``outputs[preferred]`` if there is one, else the first output, with its name."""
    if preferred in outputs:
        return preferred, outputs[preferred]
    name = next(iter(outputs))
    return name, outputs[name]


def shape_error(spec: Any, kind: str, name: str, shape: tuple, expected: str) -> ValueError:
    return ValueError(
        f"model {spec.name!r} ({kind}) returned {name!r} of shape {shape}; expected {expected}"
    )


def activate(logits: np.ndarray, activation: str, axis: int = 1) -> np.ndarray:
    """``softmax`` or ``sigmoid`` over ``axis`` (``none``: as they are), in float32."""
    x = logits.astype(np.float32, copy=False)
    if activation == "softmax":
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    return x


def label_figures(a: np.ndarray, b: np.ndarray, cfg: GuardConfig) -> GuardFigures:
    """Label agreement and largest probability difference of two ``N x C`` arrays."""
    agreement = float((a.argmax(1) == b.argmax(1)).mean()) if len(a) else 1.0
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    passed = agreement >= cfg.min_agreement and diff <= cfg.max_prob_diff
    return GuardFigures(passed, agreement, diff)


def cosine_figures(a: np.ndarray, b: np.ndarray, cfg: GuardConfig) -> GuardFigures:
    """The least cosine similarity of the rows of two ``N x D`` arrays."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    worst = float(cos.min()) if len(cos) else 1.0
    return GuardFigures(worst >= cfg.min_cosine, min_cosine=worst)
