"""``segmentation``: ``N x C x h x w`` logits -> per patch, the share of its pixels that are tissue
of each likeliest class (``patch_segmentations``), a class map per slide, areas per class."""

from __future__ import annotations

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
    activate,
    first_output,
    patch_table,
    shape_error,
)

CLASS_GRID = 16
"""A patch's class map is kept at ``CLASS_GRID`` x ``CLASS_GRID`` points for the slide's picture."""


@dataclass(frozen=True)
class Segmented:
    """One patch's class map, summarised: per class, the share of the patch's pixels that are
    tissue of that class, and their count; and the patch's tissue share."""

    class_fractions: np.ndarray
    argmax_counts: np.ndarray
    tissue_fraction: float
    class_grid: np.ndarray
    """The class map sampled at ``CLASS_GRID`` x ``CLASS_GRID`` points (-1: not tissue)."""

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """The fractions: what the finiteness check looks at."""
        return np.asarray(self.class_fractions, dtype=dtype)


class Segmentation(OutputKind):
    name = "segmentation"
    output = "segmentations"
    table = patch_table(
        "patch_segmentations",
        Column(
            "class_fractions",
            "FLOAT64",
            "REPEATED",
            description="share of the patch's pixels that are tissue whose likeliest class is c",
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
            description="share of the patch's pixels that are tissue (the slide's tissue rule)",
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
        self, outputs: Outputs, spec: Any, n: int, tissue: Sequence[np.ndarray | None] | None
    ) -> list:
        name, logits = first_output(outputs, "logits")
        if logits.ndim != 4 or logits.shape[0] != n or logits.shape[1] < 2:
            raise shape_error(
                spec, self.name, name, logits.shape, f"({n}, n_classes >= 2, h, w) logits"
            )
        n_classes, h, w = logits.shape[1:]
        probs = activate(logits, spec.activation)
        # A patch with a non-finite value gets NaN fractions, so it becomes a dead letter (the
        # runner's finiteness check), not a class map of class 0 (the argmax of NaN).
        bad = ~np.isfinite(probs).reshape(n, -1).all(axis=1)
        labels = np.nan_to_num(probs, nan=0.0).argmax(axis=1)
        out = []
        for i in range(n):
            mask = _at_map_size(tissue[i], h, w) if tissue is not None else None
            counted = labels[i][mask] if mask is not None else labels[i].ravel()
            counts = np.bincount(counted, minlength=n_classes)
            fractions = counts / (h * w)
            out.append(
                Segmented(
                    np.full(n_classes, np.nan) if bad[i] else fractions,
                    counts,
                    float(counted.size / (h * w)),
                    _grid(labels[i], mask),
                )
            )
        return out

    def row(self, result: Any) -> dict:
        return {
            "class_fractions": [float(f) for f in result.class_fractions],
            "argmax_counts": [int(c) for c in result.argmax_counts],
            "label": int(np.argmax(result.argmax_counts)),
            "tissue_fraction": result.tissue_fraction,
            "class_grid": [int(c) for c in result.class_grid.ravel()],
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

    def qupath_values(self, row: dict) -> Sequence[float] | None:
        fractions = row["class_fractions"]
        tissue = row.get("tissue_fraction") or 0.0
        return [f / tissue for f in fractions] if tissue > 0 else [0.0] * len(fractions)

    def qupath_measurements(self, row: dict) -> dict[str, float]:
        return {"tissue fraction": round(float(row["tissue_fraction"]), 6)}


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
