"""ReadPatches: work units -> decoded patches, each unit's region read once.

The units are spread over workers with a Reshuffle; each unit's tile-aligned region is read once
(only the byte ranges of its tiles) and its patches are cut out of it in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np

from transforms.core import progress
from transforms.core.errors import DEAD_LETTER, patch_dead_letter
from transforms.core.remote_io import retry_transient
from transforms.models.kinds.base import PatchRegion
from transforms.slides.geometry import (
    WorkUnit,
    box_at_level,
)
from transforms.slides.reader import SlideCache, compressed_bytes, read_level_region


@dataclass
class Patch:
    """One decoded patch: ``pixels`` is ``patch_px x patch_px x 3`` uint8 RGB."""

    slide_id: str
    x_px: int
    y_px: int
    size_px: int
    level: int
    mpp: float | None
    pixels: np.ndarray
    appearance: Any = None
    """The slide's ``survey.SlideAppearance``: its tissue rule (which of the patch's pixels are
    tissue) and stain basis (for models that take stain channels)."""
    geometry: int = 0
    """Which of the job's patch geometries it was cut for."""
    own: tuple[int, int, int, int] | None = None
    """The level-0 box of the slide's pixels this patch alone accounts for (``PatchBox.own``)."""
    slide_dims: tuple[int, int] | None = None
    """The slide's level-0 width and height (None: the patch lies inside it)."""

    @property
    def key(self) -> str:
        return f"{self.slide_id}@{self.x_px},{self.y_px}"

    @property
    def valid_px(self) -> tuple[int, int]:
        """Level-0 width and height of the part of the patch inside the slide."""
        if self.slide_dims is None:
            return self.size_px, self.size_px
        width, height = self.slide_dims
        return (
            max(0, min(self.size_px, width - self.x_px)),
            max(0, min(self.size_px, height - self.y_px)),
        )

    def region(self, tissue: np.ndarray | None) -> PatchRegion:
        """Where the patch's pixels lie: its origin, valid part and owned box, and ``tissue``
        (its tissue mask at its own pixels) cleared in the padding."""
        vw, vh = self.valid_px
        x0, y0 = self.x_px, self.y_px
        own = self.own or (x0, y0, x0 + vw, y0 + vh)
        if tissue is not None and (vw, vh) != (self.size_px, self.size_px):
            scale = tissue.shape[0] / self.size_px
            tissue = tissue.copy()
            tissue[:, int(np.ceil(vw * scale)) :] = False
            tissue[int(np.ceil(vh * scale)) :, :] = False
        return PatchRegion((x0, y0), self.size_px, (x0 + vw, y0 + vh), own, tissue)


class _ReadUnit(beam.DoFn):
    """Work unit -> patches: one region read per unit, patches cut out in memory."""

    STAGE = "ReadPatches"

    def __init__(self) -> None:
        self._cache: SlideCache | None = None

    def setup(self) -> None:
        self._cache = SlideCache()

    def teardown(self) -> None:
        if self._cache is not None:
            self._cache.close()

    def _read(self, unit: WorkUnit) -> tuple[np.ndarray, float]:
        assert self._cache is not None
        try:
            slide = self._cache.get(unit.uri)
            region = read_level_region(slide, unit.level, *unit.region_lvl)
        except Exception:
            self._cache.evict(unit.uri)  # a retry reopens it
            raise
        progress.count("bytes_read", compressed_bytes(slide, unit.level, unit.region_lvl))
        return region, float(slide.level_downsamples[unit.level])

    def process(self, unit: WorkUnit) -> Iterator[Any]:
        try:
            region, ds = retry_transient(f"reading {unit.slide_id}", lambda: self._read(unit))
        except Exception as exc:  # noqa: BLE001 - the unit's patches become dead letters
            for box in unit.patches:
                row = {"slide_id": unit.slide_id, **box.__dict__, "uri": unit.uri}
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, patch_dead_letter(self.STAGE, row, exc))
            return
        rx, ry = unit.region_lvl[0], unit.region_lvl[1]
        background = unit.appearance.tissue.background if unit.appearance is not None else 255
        for box in unit.patches:
            x, y, size = box_at_level(box, ds)
            pixels = cut_patch(region, x - rx, y - ry, size, unit.patch_px, background)
            mpp = unit.patch_mpp(box)
            yield Patch(
                unit.slide_id,
                box.x_px,
                box.y_px,
                box.size_px,
                box.level,
                mpp,
                pixels,
                unit.appearance,
                unit.geometry,
                box.own,
                unit.slide_dims,
            )
        progress.count("patches_read", len(unit.patches))
        progress.count("work_units_read")


def cut_patch(
    region: np.ndarray, x: int, y: int, size: int, patch_px: int, background: int = 255
) -> np.ndarray:
    """A ``size`` square at ``(x, y)`` of ``region``, resized (antialiased) to ``patch_px``.
    Where it runs past the region (the slide's right or bottom edge) it is padded with the
    ``background`` grey level: the slide's glass."""
    crop = region[y : y + size, x : x + size]
    short_y, short_x = size - crop.shape[0], size - crop.shape[1]
    if short_y or short_x:
        pad = ((0, short_y), (0, short_x), (0, 0))
        crop = np.pad(crop, pad, mode="constant", constant_values=background)
    if size != patch_px:
        from PIL import Image

        resized = Image.fromarray(crop).resize((patch_px, patch_px), Image.Resampling.BILINEAR)
        return np.asarray(resized)
    return np.ascontiguousarray(crop)


class ReadPatches(beam.PTransform):
    """Work units -> ``Patch`` elements.

    In: ``WorkUnit``. Out: a dict with ``patches`` and ``DEAD_LETTER`` rows (one per patch whose
    unit could not be read).
    """

    def expand(self, units: beam.PCollection) -> dict[str, beam.PCollection]:
        read = (
            units
            | "SpreadWorkUnits" >> beam.Reshuffle()
            | "ReadRegions" >> beam.ParDo(_ReadUnit()).with_outputs(DEAD_LETTER, main="patches")
        )
        return {"patches": read.patches, DEAD_LETTER: read[DEAD_LETTER]}


class ByGeometry(beam.PartitionFn):
    """A patch's (or work unit's) stream: the index of the patch geometry it was cut for."""

    def partition_for(self, element: Any, num_partitions: int, *args: Any, **kwargs: Any) -> int:
        return int(element.geometry)


class SplitByGeometry(beam.PTransform):
    """Patches -> one stream per patch geometry (``Patch.geometry`` indexes the list), so models
    with one geometry share one decoded stream."""

    def __init__(self, n_geometries: int) -> None:
        super().__init__()
        self._n = n_geometries

    def expand(self, patches: beam.PCollection) -> list[beam.PCollection]:
        if self._n == 1:
            return [patches]
        parts = patches | "ByGeometry" >> beam.Partition(ByGeometry(), self._n)
        return [parts[i] for i in range(self._n)]
