"""Plan the patches a patch manifest lists, holding one block's patches at a time, never a slide's.

A manifest may list a million patches of one slide, so no step groups patches by slide:

1. ``SurveySlides``: each slide row -> its status (geometry and tissue area, or why it failed).
   The statuses are small, and every later step reads them as a side input.
2. ``PlacePatches``: each patch row, checked against its slide's geometry, is keyed by the
   tile-aligned block that holds it, or becomes a dead letter (slide failed, slide not in the
   slide manifest, box outside the slide or on a missing level).
3. ``GroupByKey`` per block, then ``BlockUnits``: one block's patches become work units, sorted
   ``SORT_BUFFER`` boxes at a time (the runner streams a large group's values).
4. Planned patches are summed per slide and joined with the statuses into ``SLIDE_INFO``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from transforms.core import progress
from transforms.core.errors import DEAD_LETTER, SlideError, patch_dead_letter
from transforms.slides.geometry import (
    PatchBox,
    PatchingConfig,
    SlideGeometry,
    block_of,
    check_box,
    work_units,
)
from transforms.slides.survey import (
    SLIDE_INFO,
    STAGE,
    slide_error,
    slide_info,
    survey_or_failure,
)

SORT_BUFFER = 4096
"""Boxes of one block sorted together before they are cut into work units."""
NOT_IN_MANIFEST = (
    "slide_id is not in the slide manifest (or its slide row was rejected: see ReadManifest errors)"
)


@dataclass(frozen=True)
class SlideStatus:
    """One slide as patch planning sees it: planned (``geom`` set), failed, or skipped."""

    row: dict[str, Any] | None = None
    geom: SlideGeometry | None = None
    tissue_area_mm2: float | None = None
    tissue_method: str | None = None
    failure: str | None = None
    skipped: bool = False
    appearance: Any = None
    """The slide's ``survey.SlideAppearance``."""


def patch_error(row: dict[str, Any], error: Exception | str) -> Any:
    return beam.pvalue.TaggedOutput(DEAD_LETTER, patch_dead_letter(STAGE, row, error))


class _SurveySlide(beam.DoFn):
    """Slide row -> ``(slide_id, SlideStatus)``; a failed slide is also a dead letter."""

    def __init__(self, cfgs: Sequence[PatchingConfig]) -> None:
        self._cfgs = tuple(cfgs)

    def process(self, row: dict[str, Any]) -> Iterator[Any]:
        survey = survey_or_failure(row, self._cfgs, grid=False)
        if isinstance(survey, Exception):
            yield slide_error(row, survey)
            yield row["slide_id"], SlideStatus(failure=f"slide failed: {survey}")
            return
        progress.count("slides_planned")
        area = survey.mask.area_mm2(survey.geom.mpp)
        yield (
            row["slide_id"],
            SlideStatus(row, survey.geom, area, survey.tissue_method, appearance=survey.appearance),
        )


class _PlacePatch(beam.DoFn):
    """Patch row -> ``((slide_id, level, block row, block column), PatchBox)`` or a dead letter."""

    def __init__(self, block_px: int) -> None:
        self._block_px = block_px

    def process(self, row: dict[str, Any], statuses: dict[str, SlideStatus]) -> Iterator[Any]:
        status = statuses.get(row["slide_id"])
        if status is None:
            yield patch_error(row, NOT_IN_MANIFEST)
            return
        if status.skipped:
            progress.count("patches_skipped_existing")
            return
        if status.geom is None:
            yield patch_error(row, status.failure or "slide failed")
            return
        box = PatchBox(row["x_px"], row["y_px"], row["size_px"], row["level"])
        try:
            check_box(status.geom, box)
        except SlideError as exc:
            yield patch_error(row, exc)
            return
        yield (row["slide_id"], *block_of(status.geom, box, self._block_px)), box


class _BlockUnits(beam.DoFn):
    """One block's patch boxes -> work units of at most ``max_patches_per_unit`` patches, once
    per patch geometry (the manifest fixes the boxes; geometries differ in ``patch_px``)."""

    def __init__(self, cfgs: Sequence[PatchingConfig]) -> None:
        self._cfgs = tuple(cfgs)

    def process(
        self, element: tuple[tuple, Iterable[PatchBox]], statuses: dict[str, SlideStatus]
    ) -> Iterator[Any]:
        (slide_id, *_), boxes = element
        status = statuses[slide_id]
        buffer: list[PatchBox] = []
        for box in boxes:
            buffer.append(box)
            if len(buffer) == SORT_BUFFER:
                yield from self._units(slide_id, status, buffer)
                buffer = []
        yield from self._units(slide_id, status, buffer)

    def _units(self, slide_id: str, status: SlideStatus, boxes: list[PatchBox]) -> Iterator[Any]:
        assert status.row is not None and status.geom is not None
        boxes.sort(key=lambda b: (b.y_px, b.x_px))
        for index, cfg in enumerate(self._cfgs):
            for unit in work_units(slide_id, status.row["uri"], status.geom, boxes, cfg, None):
                progress.count("patches_planned", len(unit.patches))
                yield dataclasses.replace(unit, appearance=status.appearance, geometry=index)


def _planned_count(unit: Any) -> tuple[tuple[str, int], int]:
    return (unit.slide_id, unit.geometry), len(unit.patches)


def _by_slide(item: tuple[tuple[str, int], int]) -> tuple[str, tuple[int, int]]:
    (slide_id, geometry), n = item
    return slide_id, (geometry, n)


class _SlideInfo(beam.DoFn):
    """A planned slide's status and its planned-patch counts -> its ``SLIDE_INFO`` record."""

    def __init__(self, n_geometries: int) -> None:
        self._n = n_geometries

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[dict[str, Any]]:
        _, joined = element
        planned = [s for s in joined["status"] if s.geom is not None]
        if not planned:
            return
        status, n = planned[0], [0] * self._n
        for geometry, count in joined["planned"]:
            n[geometry] += count
        assert status.tissue_method is not None  # set on every planned status
        yield slide_info(status.row, status.geom, status.tissue_area_mm2, status.tissue_method, n)


def _skipped(slide_id: str) -> tuple[str, SlideStatus]:
    return slide_id, SlideStatus(skipped=True)


class PlanManifestPatches(beam.PTransform):
    """``{"slides", "patches"[, "skipped" slide ids]}`` -> work units, slide infos, dead letters.

    Out: a dict with ``units`` (``WorkUnit``), ``SLIDE_INFO`` dicts (one per planned slide) and
    ``DEAD_LETTER`` rows.
    """

    def __init__(self, cfgs: Sequence[PatchingConfig]) -> None:
        super().__init__()
        self._cfgs = tuple(cfgs)
        self._cfg = self._cfgs[0]  # block size, tissue method: the job's

    def expand(self, inputs: dict[str, beam.PCollection]) -> dict[str, beam.PCollection]:
        slides, patches, skipped_ids = inputs["slides"], inputs["patches"], inputs.get("skipped")
        surveyed = slides | "SurveySlides" >> beam.ParDo(_SurveySlide(self._cfgs)).with_outputs(
            DEAD_LETTER, main="statuses"
        )
        statuses = surveyed.statuses
        if skipped_ids is not None:
            statuses = (
                statuses,
                skipped_ids | "SkippedSlides" >> beam.Map(_skipped),
            ) | "AllStatuses" >> beam.Flatten()
        by_id = beam.pvalue.AsDict(statuses)
        placed = patches | "PlacePatches" >> beam.ParDo(
            _PlacePatch(self._cfg.block_px), by_id
        ).with_outputs(DEAD_LETTER, main="boxes")
        units = (
            placed.boxes
            | "GroupByBlock" >> beam.GroupByKey()
            | "BlockUnits" >> beam.ParDo(_BlockUnits(self._cfgs), by_id)
        )
        planned = (
            units
            | "PatchesPerUnit" >> beam.Map(_planned_count)
            | "PatchesPerSlideAndGeometry" >> beam.CombinePerKey(sum)
            | "KeyBySlide" >> beam.Map(_by_slide)
        )
        info = (
            {"status": surveyed.statuses, "planned": planned}
            | "JoinCounts" >> beam.CoGroupByKey()
            | "SlideInfo" >> beam.ParDo(_SlideInfo(len(self._cfgs)))
        )
        errors = (surveyed[DEAD_LETTER], placed[DEAD_LETTER]) | "Errors" >> beam.Flatten()
        return {"units": units, SLIDE_INFO: info, DEAD_LETTER: errors}
