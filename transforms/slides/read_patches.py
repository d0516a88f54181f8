"""PlanPatches and ReadPatches: from slide rows to decoded patches, reading only what is needed.

``PlanPatches`` surveys each slide once (opens it, checks it, masks its tissue from a
low-resolution read), plans a grid at the target MPP and drops background, or takes a patch
manifest's boxes (``patch_manifest``), and emits tile-aligned work units. ``ReadPatches`` spreads
the units over workers with a Reshuffle, reads each unit's region once and cuts its patches out of
it in memory.
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
from transforms.slides.geometry import (
    PatchBox,
    PatchingConfig,
    WorkUnit,
    box_at_level,
    grid_boxes,
    work_units,
)
from transforms.slides.plan_manifest import PlanManifestPatches, slide_error
from transforms.slides.reader import SlideCache, compressed_bytes, read_level_region
from transforms.slides.survey import Survey, slide_info, survey_or_failure

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


class _PlanSlide(beam.DoFn):
    """Slide row -> its grid's tissue work units, a slide info, or a dead letter."""

    def __init__(self, cfg: PatchingConfig, storage_options: dict[str, Any] | None) -> None:
        self._cfg = cfg
        self._storage_options = storage_options

    def process(self, row: dict[str, Any]) -> Iterator[Any]:
        survey = survey_or_failure(row, self._cfg, self._storage_options, grid=True)
        if isinstance(survey, Exception):
            yield slide_error(row, survey)
            return
        assert survey.spec is not None
        boxes = self._tissue(survey)
        planned = 0
        for unit in work_units(
            row["slide_id"], row["uri"], survey.geom, boxes, self._cfg, survey.spec.mpp
        ):
            planned += len(unit.patches)
            yield unit
        progress.count("slides_planned")
        progress.count("patches_planned", planned)
        area = survey.mask.area_mm2(survey.geom.mpp)
        yield beam.pvalue.TaggedOutput(SLIDE_INFO, slide_info(row, survey.geom, area, planned))

    def _tissue(self, survey: Survey) -> Iterator[PatchBox]:
        """The grid's tissue patches, row by row (lazily: a slide's grid is never held)."""
        assert survey.spec is not None
        background = 0
        for box in grid_boxes(survey.geom, survey.spec):
            if self._cfg.min_tissue > 0 and survey.mask.fraction(box) < self._cfg.min_tissue:
                background += 1
            else:
                yield box
        progress.count("patches_background", background)


class PlanPatches(beam.PTransform):
    """Slide rows, or slide rows and a patch manifest's rows, -> work units.

    In: ``slides`` (tile each slide's tissue on a grid), or ``{"slides", "patches"}`` and
    optionally ``"skipped"`` slide ids (plan the listed patches; see ``patch_manifest``).
    Out: a dict with ``units`` (``WorkUnit``), ``SLIDE_INFO`` dicts and ``DEAD_LETTER`` rows.
    """

    def __init__(self, cfg: PatchingConfig, storage_options: dict[str, Any] | None = None):
        super().__init__()
        self._cfg = cfg
        self._storage_options = storage_options

    def expand(self, inputs: Any) -> dict[str, beam.PCollection]:
        if isinstance(inputs, dict):
            planned = inputs | "FromManifest" >> PlanManifestPatches(
                self._cfg, self._storage_options
            )
            return {
                "units": planned["units"],
                SLIDE_INFO: planned["info"],
                DEAD_LETTER: planned[DEAD_LETTER],
            }
        grid = inputs | "PlanSlides" >> beam.ParDo(
            _PlanSlide(self._cfg, self._storage_options)
        ).with_outputs(SLIDE_INFO, DEAD_LETTER, main="units")
        return {"units": grid.units, SLIDE_INFO: grid[SLIDE_INFO], DEAD_LETTER: grid[DEAD_LETTER]}


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
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, patch_dead_letter(self.STAGE, row, exc))
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
