"""PlanGridPatches: slide rows -> tile-aligned work units of the tissue patches of grids.

Each slide is surveyed once (opened, checked, its tissue masked from a low-resolution read); a
grid is planned at the target MPP (or level) of each patch geometry the models take, background
patches are dropped, and the rest are grouped into work units of neighbouring patches that one
region read serves, each tagged with its geometry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam

from transforms.core import progress
from transforms.core.errors import DEAD_LETTER
from transforms.slides.geometry import (
    GridSpec,
    PatchBox,
    PatchingConfig,
    grid_boxes,
    work_units,
)
from transforms.slides.survey import SLIDE_INFO, Survey, slide_error, slide_info, survey_or_failure
from transforms.slides.tissue import Coverage


class _PlanSlide(beam.DoFn):
    """Slide row -> its grids' tissue work units, a slide info, or a dead letter."""

    def __init__(self, cfgs: Sequence[PatchingConfig]) -> None:
        self._cfgs = tuple(cfgs)

    def process(self, row: dict[str, Any]) -> Iterator[Any]:
        survey = survey_or_failure(row, self._cfgs, grid=True)
        if isinstance(survey, Exception):
            yield slide_error(row, survey)
            return
        planned = [0] * len(self._cfgs)
        coverage: list[float | None] = [None] * len(self._cfgs)
        for index, (cfg, spec) in enumerate(zip(self._cfgs, survey.specs, strict=True)):
            if spec is None:
                continue  # too coarse for this geometry: its models' dead letters say so
            covered = Coverage(survey.mask)
            boxes = self._tissue(survey, spec, cfg, covered)
            for unit in work_units(row["slide_id"], row["uri"], survey.geom, boxes, cfg, spec.mpp):
                planned[index] += len(unit.patches)
                yield dataclasses.replace(unit, appearance=survey.appearance, geometry=index)
            coverage[index] = covered.fraction()
        progress.count("slides_planned")
        progress.count("patches_planned", sum(planned))
        if sum(planned) == 0:
            progress.count("slides_without_tissue")
        area = survey.mask.area_mm2(survey.geom.mpp)
        info = slide_info(
            row, survey.geom, area, survey.tissue_method, planned, survey.refused, coverage
        )
        yield beam.pvalue.TaggedOutput(SLIDE_INFO, info)

    def _tissue(
        self, survey: Survey, spec: GridSpec, cfg: PatchingConfig, covered: Coverage
    ) -> Iterator[PatchBox]:
        """The grid's tissue patches, row by row (lazily: a slide's grid is never held), each
        counted in ``covered``."""
        background = 0
        for box in grid_boxes(survey.geom, spec):
            if cfg.min_tissue > 0 and survey.mask.fraction(box) < cfg.min_tissue:
                background += 1
            else:
                covered.add(box)
                yield box
        progress.count("patches_background", background)


class PlanGridPatches(beam.PTransform):
    """Slide rows -> work units of each slide's tissue grid, one grid per patch geometry.

    In: clean slide rows. Out: a dict with ``units`` (``WorkUnit``, ``geometry`` = the index in
    ``cfgs``), ``SLIDE_INFO`` dicts (one per planned slide) and ``DEAD_LETTER`` rows (one per
    slide that could not be planned).
    """

    def __init__(self, cfgs: Sequence[PatchingConfig]) -> None:
        super().__init__()
        self._cfgs = tuple(cfgs)

    def expand(self, slides: beam.PCollection) -> dict[str, beam.PCollection]:
        grid = slides | "PlanSlides" >> beam.ParDo(_PlanSlide(self._cfgs)).with_outputs(
            SLIDE_INFO, DEAD_LETTER, main="units"
        )
        return {"units": grid.units, SLIDE_INFO: grid[SLIDE_INFO], DEAD_LETTER: grid[DEAD_LETTER]}
