"""A slide's patch embeddings, compact and in one order, for what takes them all at once (the
HDF5 interchange files, slide-level heads).

``compact`` turns a ``patch_embeddings`` row (a list of Python floats: ~32 bytes a value) into a
float32 vector and its box (4 bytes a value) on the worker that made it, before the shuffle that
groups a slide. ``stacked`` puts a slide's patches in row-major order (y, then x) whatever order
they arrived in, so the same slide always gives the same arrays.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PatchEmbedding:
    model_name: str
    x_px: int
    y_px: int
    size_px: int
    mpp: float | None
    vector: np.ndarray


def compact(row: dict) -> tuple[str, PatchEmbedding]:
    """A ``patch_embeddings`` row -> (slide id, its compact embedding)."""
    return row["slide_id"], PatchEmbedding(
        row["model_name"],
        int(row["x_px"]),
        int(row["y_px"]),
        int(row["size_px"]),
        row.get("mpp"),
        np.asarray(row["embedding"], np.float32),
    )


@dataclass(frozen=True)
class SlideEmbeddings:
    """One slide x encoder: ``features`` ``(N, D)`` float32 and ``coords`` ``(N, 2)`` int64
    (level-0 top-left corners), row-major."""

    model_name: str
    features: np.ndarray
    coords: np.ndarray
    patch_size_l0: int
    mpp: float | None


def stacked(items: Iterable[PatchEmbedding]) -> SlideEmbeddings:
    """One slide x encoder's embeddings, stacked in row-major order."""
    ordered = sorted(items, key=lambda e: (e.y_px, e.x_px))
    first = ordered[0]
    return SlideEmbeddings(
        first.model_name,
        np.stack([e.vector for e in ordered]).astype(np.float32, copy=False),
        np.asarray([(e.x_px, e.y_px) for e in ordered], np.int64).reshape(-1, 2),
        first.size_px,
        first.mpp,
    )


def by_model(items: Iterable[Any]) -> dict[str, list[PatchEmbedding]]:
    """A slide's compact embeddings, grouped by the model that made them."""
    out: dict[str, list[PatchEmbedding]] = {}
    for item in items:
        out.setdefault(item.model_name, []).append(item)
    return out
