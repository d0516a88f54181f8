"""``segmentation``: ``N x C x h x w`` logits -> per patch, the share of its pixels that are tissue
of each likeliest class (``patch_segmentations``), a class map per slide, areas per class."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from transforms.io.schemas import Column
from transforms.models.kinds.base import (
    GuardConfig,
    GuardFigures,
    OutputKind,
    Outputs,
    PatchRegion,
    activate,
    first_output,
    patch_table,
    shape_error,
)

CLASS_GRID = 16
"""A patch's class map is kept at ``CLASS_GRID`` x ``CLASS_GRID`` points for the slide's picture."""


@dataclass(frozen=True)
class Segmented:
    """One patch's class map, summarised over the part of the patch inside the slide: per class,
    the share of its pixels that are tissue of that class, and their count; its tissue share;
    and, over the box the patch alone accounts for (``PatchRegion.own``), the area of each class
    and of tissue, and that box's class map for the stitched slide mask."""

    class_fractions: np.ndarray
    argmax_counts: np.ndarray
    tissue_fraction: float
    class_grid: np.ndarray
    """The class map sampled at ``CLASS_GRID`` x ``CLASS_GRID`` points (-1: not tissue)."""
    class_area_px: np.ndarray | None = None
    """Per class, level-0 px² of tissue of that class in the owned box (None: no region)."""
    tissue_area_px: float | None = None
    """Level-0 px² of tissue (the slide's tissue rule, at the patch's pixels) in the owned box."""
    owned: OwnedMap | None = None

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """The fractions: what the finiteness check looks at."""
        return np.asarray(self.class_fractions, dtype=dtype)


@dataclass(frozen=True)
class OwnedMap:
    """The class map of a patch's owned box on the slide's mask grid: mask pixel ``(i, j)``
    covers level-0 ``[j * px, (j + 1) * px)`` across and ``[i * py, (i + 1) * py)`` down, with
    ``px``, ``py`` the level-0 pixels one class-map pixel spans. ``labels`` holds 0 off tissue
    and ``c + 1`` for class ``c``; its top-left mask pixel is ``(row, col)``."""

    row: int
    col: int
    labels: np.ndarray
    px: float
    py: float


class Segmentation(OutputKind):
    name = "segmentation"
    output = "segmentations"
    table = patch_table(
        "patch_segmentations",
        Column(
            "class_fractions",
            "FLOAT64",
            "REPEATED",
            description="share of the patch's pixels inside the slide that are tissue whose "
            "likeliest class is c",
        ),
        Column(
            "argmax_counts",
            "INT64",
            "REPEATED",
            description="those pixels, counted at the class map's resolution",
        ),
        Column("label", "INT64", "REQUIRED", description="the class with most tissue pixels"),
        Column(
            "tissue_fraction",
            "FLOAT64",
            description="share of the patch's pixels inside the slide that are tissue (the "
            "slide's tissue rule)",
        ),
        Column(
            "class_area_px",
            "FLOAT64",
            "REPEATED",
            description="per class, level-0 px² of tissue of that class in the box this patch "
            "alone accounts for (neighbours' boxes never overlap: these sum to the slide's areas)",
        ),
        Column(
            "tissue_area_px",
            "FLOAT64",
            description="level-0 px² of tissue in that box (the slide's tissue rule)",
        ),
        Column(
            "class_grid",
            "INT64",
            "REPEATED",
            description=f"the class map at k x k points, row by row (k = {CLASS_GRID}; -1: not "
            "tissue)",
        ),
    )
    hf_auto_class = "AutoModelForSemanticSegmentation"
    help = "N x C x h x w logits"
    picture = "segmentations"
    class_map = True
    shown_value = "pixel share"
    class_areas = True
    needs_tissue = True

    def results(
        self, outputs: Outputs, spec: Any, n: int, regions: Sequence[PatchRegion] | None
    ) -> list:
        name, logits = first_output(outputs, "logits")
        if logits.ndim != 4 or logits.shape[0] != n or logits.shape[1] < 2:
            raise shape_error(
                spec, self.name, name, logits.shape, f"({n}, n_classes >= 2, h, w) logits"
            )
        probs = activate(logits, spec.activation)
        # A patch with a non-finite value gets NaN fractions, so it becomes a dead letter (the
        # runner's finiteness check), not a class map of class 0 (the argmax of NaN).
        bad = ~np.isfinite(probs).reshape(n, -1).all(axis=1)
        labels = np.nan_to_num(probs, nan=0.0).argmax(axis=1)
        out = []
        for i in range(n):
            result = segmented(labels[i], probs.shape[1], regions[i] if regions else None)
            if bad[i]:
                result = dataclasses.replace(
                    result, class_fractions=np.full(probs.shape[1], np.nan)
                )
            out.append(result)
        return out

    def row(self, result: Any) -> dict:
        return {
            "class_fractions": [float(f) for f in result.class_fractions],
            "argmax_counts": [int(c) for c in result.argmax_counts],
            "label": int(np.argmax(result.argmax_counts)),
            "tissue_fraction": result.tissue_fraction,
            "class_grid": [int(c) for c in result.class_grid.ravel()],
            "class_area_px": _floats(result.class_area_px),
            "tissue_area_px": result.tissue_area_px,
        }

    def compare(self, reduced: list, exact: list, cfg: GuardConfig) -> GuardFigures:
        a = np.stack([np.asarray(s.class_fractions) for s in reduced])
        b = np.stack([np.asarray(s.class_fractions) for s in exact])
        diff = float(np.abs(a - b).max()) if a.size else 0.0
        return GuardFigures(diff <= 1 - cfg.min_agreement + 1e-12, max_prob_diff=diff)

    def class_count(self, result: Any) -> int | None:
        return len(result.class_fractions)

    def slide_values(self, row: dict) -> Sequence[float]:
        return row["class_fractions"]

    def slide_grid(self, row: dict) -> Sequence[int]:
        return row["class_grid"]

    def slide_areas(self, row: dict) -> Sequence[float]:
        return row.get("class_area_px") or ()


def segmented(labels: np.ndarray, n_classes: int, region: PatchRegion | None) -> Segmented:
    """One patch's ``h x w`` class map summarised (``region``: where it lies, its tissue)."""
    h, w = labels.shape
    if region is None:  # no slide around it (a model's check at load): the whole map counts
        counts = np.bincount(labels.ravel(), minlength=n_classes)
        return Segmented(counts / (h * w), counts, 1.0, _grid(labels, None))
    (ox, oy), size = region.origin, region.size
    px, py = size / w, size / h  # level-0 px one map pixel spans
    valid_w = min(w, int(np.ceil((region.valid_end[0] - ox) / px)))
    valid_h = min(h, int(np.ceil((region.valid_end[1] - oy) / py)))
    tissue = _at_map_size(region.tissue, h, w)
    if tissue is None:
        tissue = np.zeros((h, w), bool)
        tissue[:valid_h, :valid_w] = True
    counts = np.bincount(labels[tissue], minlength=n_classes)
    valid = max(1, valid_w * valid_h)
    owned = _owned_map(labels, tissue, region, px, py)
    owned_counts = np.bincount(owned.labels.ravel(), minlength=n_classes + 1)[1:]
    return Segmented(
        counts / valid,
        counts,
        float(counts.sum() / valid),
        _grid(labels, tissue),
        owned_counts * (px * py),
        _owned_tissue_px(region),
        owned,
    )


def _owned_map(
    labels: np.ndarray, tissue: np.ndarray, region: PatchRegion, px: float, py: float
) -> OwnedMap:
    """The owned box's class map on the slide's mask grid, nearest-sampled from the patch's.

    The box's edges are rounded to mask pixels, and neighbours share their edges, so their
    owned maps tile the slide's mask without a gap or an overlap."""
    (ox, oy), (x0, y0, x1, y1) = region.origin, region.own
    col0, col1 = round(x0 / px), round(x1 / px)
    row0, row1 = round(y0 / py), round(y1 / py)
    h, w = labels.shape
    cols = np.floor(np.arange(col0, col1) + 0.5 - ox / px).astype(int).clip(0, w - 1)
    rows = np.floor(np.arange(row0, row1) + 0.5 - oy / py).astype(int).clip(0, h - 1)
    coded = np.where(tissue, labels + 1, 0).astype(np.uint8)
    return OwnedMap(row0, col0, coded[np.ix_(rows, cols)], px, py)


def _owned_tissue_px(region: PatchRegion) -> float:
    """Level-0 px² of tissue in the owned box, counted at the patch's own pixels."""
    (ox, oy), (x0, y0, x1, y1) = region.origin, region.own
    if region.tissue is None:
        return float((x1 - x0) * (y1 - y0))
    scale = region.tissue.shape[1] / region.size  # patch px per level-0 px
    window = region.tissue[
        round((y0 - oy) * scale) : round((y1 - oy) * scale),
        round((x0 - ox) * scale) : round((x1 - ox) * scale),
    ]
    return float(window.sum()) / (scale * scale)


def _floats(values: np.ndarray | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def _grid(labels: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``labels`` (h x w) at ``CLASS_GRID`` x ``CLASS_GRID`` cell centres, -1 off tissue."""
    h, w = labels.shape
    k = min(CLASS_GRID, h, w)
    rows = ((np.arange(k) + 0.5) * h / k).astype(int)
    cols = ((np.arange(k) + 0.5) * w / k).astype(int)
    grid = labels[np.ix_(rows, cols)].astype(np.int64)
    if mask is not None:
        grid[~mask[np.ix_(rows, cols)]] = -1
    return grid


def _at_map_size(mask: np.ndarray | None, h: int, w: int) -> np.ndarray | None:
    """A patch's tissue mask sampled (nearest) at the class map's resolution."""
    if mask is None:
        return None
    rows = (np.arange(h) * mask.shape[0] // h).clip(0, mask.shape[0] - 1)
    cols = (np.arange(w) * mask.shape[1] // w).clip(0, mask.shape[1] - 1)
    return mask[np.ix_(rows, cols)]


KIND = Segmentation()
