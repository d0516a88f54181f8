"""PlanPatches and ReadPatches: from slide rows to decoded patches, reading only what is needed.

``PlanPatches`` opens each slide once, builds its tissue mask from a low-resolution read, plans a
grid at the target MPP (or takes the patch manifest's boxes), drops background and emits
tile-aligned work units. ``ReadPatches`` spreads the units over workers with a Reshuffle, reads
each unit's region once and cuts its patches out of it in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np

from transforms import progress
from transforms.errors import DEAD_LETTER, SlideError, dead_letter
from transforms.geometry import (
    PatchBox,
    PatchingConfig,
    SlideGeometry,
    WorkUnit,
    box_at_level,
    check_box,
    grid_boxes,
    grid_spec,
    work_units,
)
from transforms.remote_io import retry_transient
from transforms.slide_io import (
    SlideCache,
    check_decode_limits,
    compressed_bytes,
    open_slide,
    probe_decode,
    read_downsampled,
    read_level_region,
    slide_geometry,
)
from transforms.tissue import TissueMask, tissue_mask

SLIDE_INFO = "slide_info"
"""Tag of PlanPatches' output with one ``slide info`` dict per planned slide."""


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

    @property
    def key(self) -> str:
        return f"{self.slide_id}@{self.x_px},{self.y_px}"


def mask_downsample(geom: SlideGeometry, patch_l0_px: int | None) -> float:
    """Level-0 pixels per mask pixel: about 8 per patch edge, 256 to 4096 across the slide.

    Without a grid (manifest patches) the mask only measures the tissue area: ~1024 px across
    is plenty, and lets a small pyramid's second level serve it instead of all of level 0.
    """
    longest = max(geom.width_px, geom.height_px)
    if patch_l0_px is None:
        return max(1.0, longest / 1024)
    return max(1.0, min(max(patch_l0_px / 8, longest / 4096), longest / 256))


def _patch_error(stage: str, row: dict[str, Any], error: Exception | str) -> Any:
    key = f"{row['slide_id']}@{row['x_px']},{row['y_px']}"
    return beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(stage, key, error, row))


class _PlanSlide(beam.DoFn):
    """Slide row (and its manifest patches) -> work units, a slide info, dead letters."""

    STAGE = "PlanPatches"

    def __init__(self, cfg: PatchingConfig, storage_options: dict[str, Any] | None) -> None:
        self._cfg = cfg
        self._storage_options = storage_options

    def process(self, element: Any) -> Iterator[Any]:
        if isinstance(element, dict):
            yield from self._plan(element, None)
            return
        _, groups = element
        slide_rows = list(groups["slides"])
        if not slide_rows:
            for row in groups["patches"]:
                yield _patch_error(
                    self.STAGE,
                    row,
                    "slide_id is not in the slide manifest "
                    "(or its slide row was rejected: see ReadManifest errors)",
                )
            return
        yield from self._plan(slide_rows[0], groups["patches"])

    def _plan(self, row: dict[str, Any], patch_rows: Iterable[dict] | None) -> Iterator[Any]:
        slide_id = row["slide_id"]
        try:
            geom, mask, spec = retry_transient(
                f"planning {slide_id}", lambda: self._survey(row, patch_rows is None)
            )
            if spec is not None:
                boxes: Iterable[PatchBox] = self._grid(geom, spec, mask)
                rejected: list[tuple[dict, Exception]] = []
                mpp = spec.mpp
            else:
                boxes, rejected = self._manifest_boxes(geom, patch_rows or ())
                mpp = None
        except Exception as exc:  # noqa: BLE001 - every failure is this slide's dead letter
            yield from self._slide_failed(row, patch_rows, exc)
            return
        for bad_row, error in rejected:
            yield _patch_error(self.STAGE, bad_row, error)
        planned = 0
        for unit in work_units(slide_id, row["uri"], geom, boxes, self._cfg, mpp):
            planned += len(unit.patches)
            yield unit
        progress.count("slides_planned")
        progress.count("patches_planned", planned)
        yield beam.pvalue.TaggedOutput(
            SLIDE_INFO,
            {
                "slide_id": slide_id,
                "uri": row["uri"],
                "width_px": geom.width_px,
                "height_px": geom.height_px,
                "mpp": geom.mpp,
                "tissue_area_mm2": mask.area_mm2(geom.mpp),
                "patches_planned": planned,
                "metadata": row["metadata"],
            },
        )

    def _survey(self, row: dict[str, Any], grid: bool) -> tuple[SlideGeometry, TissueMask, Any]:
        """Open the slide, check it and mask its tissue (all its reads), then close it.

        Returns the geometry, the mask and, when tiling a grid, the grid spec (else None).
        """
        slide = open_slide(row["uri"], self._storage_options)
        try:
            progress.count("slides_opened")
            geom = slide_geometry(slide, row["mpp"])
            check_decode_limits(slide, geom)
            probe_decode(slide)
            spec = grid_spec(geom, self._cfg) if grid else None
            mask = self._mask(slide, geom, spec.patch_l0_px if spec else None)
            return geom, mask, spec
        finally:
            slide.close()

    def _mask(self, slide: Any, geom: SlideGeometry, patch_l0_px: int | None) -> TissueMask:
        rgb, ds = read_downsampled(slide, geom, mask_downsample(geom, patch_l0_px))
        return TissueMask(tissue_mask(rgb, self._cfg.tissue_method), ds)

    def _grid(self, geom: SlideGeometry, spec: Any, mask: TissueMask) -> Iterator[PatchBox]:
        """The grid's tissue patches, row by row (lazily: a slide's grid is never held)."""
        background = 0
        for box in grid_boxes(geom, spec):
            if self._cfg.min_tissue > 0 and mask.fraction(box) < self._cfg.min_tissue:
                background += 1
            else:
                yield box
        progress.count("patches_background", background)

    def _manifest_boxes(
        self, geom: SlideGeometry, rows: Iterable[dict[str, Any]]
    ) -> tuple[list[PatchBox], list[tuple[dict, Exception]]]:
        boxes, rejected = [], []
        for row in rows:
            box = PatchBox(row["x_px"], row["y_px"], row["size_px"], row["level"])
            try:
                check_box(geom, box)
            except SlideError as exc:
                rejected.append((row, exc))
                continue
            boxes.append(box)
        boxes.sort(key=lambda b: (b.level, b.y_px, b.x_px))  # lets work_units flush row by row
        return boxes, rejected

    def _slide_failed(
        self, row: dict[str, Any], patch_rows: Iterable[dict] | None, exc: Exception
    ) -> Iterator[Any]:
        progress.count("slides_failed")
        yield beam.pvalue.TaggedOutput(
            DEAD_LETTER, dead_letter(self.STAGE, row["slide_id"], exc, row)
        )
        # Manifest patches of a failed slide each get their dead letter, so patches in = out.
        for patch_row in patch_rows or ():
            yield _patch_error(self.STAGE, patch_row, f"slide failed: {exc}")


def _key_by_slide_id(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return row["slide_id"], row


class PlanPatches(beam.PTransform):
    """Slide rows (+ optional patch-manifest rows) -> work units.

    In: ``slides`` or ``(slides, patches)``. Out: a dict with ``units`` (``WorkUnit``),
    ``SLIDE_INFO`` dicts and ``DEAD_LETTER`` rows.
    """

    def __init__(self, cfg: PatchingConfig, storage_options: dict[str, Any] | None = None):
        super().__init__()
        self._cfg = cfg
        self._storage_options = storage_options

    def expand(self, inputs: Any) -> dict[str, beam.PCollection]:
        if isinstance(inputs, tuple):
            slides, patches = inputs
            grouped = {
                "slides": slides | "KeySlides" >> beam.Map(_key_by_slide_id),
                "patches": patches | "KeyPatches" >> beam.Map(_key_by_slide_id),
            } | "JoinPatchesToSlides" >> beam.CoGroupByKey()
        else:
            grouped = inputs
        planned = grouped | "PlanSlides" >> beam.ParDo(
            _PlanSlide(self._cfg, self._storage_options)
        ).with_outputs(SLIDE_INFO, DEAD_LETTER, main="units")
        return {
            "units": planned.units,
            SLIDE_INFO: planned[SLIDE_INFO],
            DEAD_LETTER: planned[DEAD_LETTER],
        }


class _ReadUnit(beam.DoFn):
    """Work unit -> patches: one region read per unit, patches cut out in memory."""

    STAGE = "ReadPatches"

    def __init__(self, storage_options: dict[str, Any] | None) -> None:
        self._storage_options = storage_options
        self._cache: SlideCache | None = None

    def setup(self) -> None:
        self._cache = SlideCache(self._storage_options)

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
                yield _patch_error(self.STAGE, row, exc)
            return
        rx, ry = unit.region_lvl[0], unit.region_lvl[1]
        for box in unit.patches:
            x, y, size = box_at_level(box, ds)
            pixels = cut_patch(region, x - rx, y - ry, size, unit.patch_px)
            mpp = unit.patch_mpp(box)
            yield Patch(unit.slide_id, box.x_px, box.y_px, box.size_px, box.level, mpp, pixels)
        progress.count("patches_read", len(unit.patches))


def cut_patch(region: np.ndarray, x: int, y: int, size: int, patch_px: int) -> np.ndarray:
    """A ``size`` square at ``(x, y)`` of ``region``, edge-padded if rounding left it short,
    resized (antialiased) to ``patch_px``."""
    crop = region[y : y + size, x : x + size]
    short_y, short_x = size - crop.shape[0], size - crop.shape[1]
    if short_y or short_x:
        crop = np.pad(crop, ((0, short_y), (0, short_x), (0, 0)), mode="edge")
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

    def __init__(self, storage_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._storage_options = storage_options

    def expand(self, units: beam.PCollection) -> dict[str, beam.PCollection]:
        read = (
            units
            | "SpreadWorkUnits" >> beam.Reshuffle()
            | "ReadRegions"
            >> beam.ParDo(_ReadUnit(self._storage_options)).with_outputs(
                DEAD_LETTER, main="patches"
            )
        )
        return {"patches": read.patches, DEAD_LETTER: read[DEAD_LETTER]}
