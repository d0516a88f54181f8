"""PlanGridPatches: slide rows -> tile-aligned work units of the tissue patches of a grid.

Each slide is surveyed once (opened, checked, its tissue masked from a low-resolution read); a
grid is planned at the target MPP (or level), background patches are dropped, and the rest are
grouped into work units of neighbouring patches that one region read serves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import apache_beam as beam

from transforms.core import progress
from transforms.core.errors import DEAD_LETTER
from transforms.slides.geometry import PatchBox, PatchingConfig, grid_boxes, work_units
from transforms.slides.survey import SLIDE_INFO, Survey, slide_error, slide_info, survey_or_failure


class _PlanSlide(beam.DoFn):
    """Slide row -> its grid's tissue work units, a slide info, or a dead letter."""

    def __init__(self, cfg: PatchingConfig) -> None:
        self._cfg = cfg

    def process(self, row: dict[str, Any]) -> Iterator[Any]:
        survey = survey_or_failure(row, self._cfg, grid=True)
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
            yield dataclasses.replace(unit, appearance=survey.appearance)
        progress.count("slides_planned")
        progress.count("patches_planned", planned)
        if planned == 0:
            progress.count("slides_without_tissue")
        area = survey.mask.area_mm2(survey.geom.mpp)
        info = slide_info(row, survey.geom, area, survey.tissue_method, planned)
        yield beam.pvalue.TaggedOutput(SLIDE_INFO, info)

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


class PlanGridPatches(beam.PTransform):
    """Slide rows -> work units of each slide's tissue grid.

    In: clean slide rows. Out: a dict with ``units`` (``WorkUnit``), ``SLIDE_INFO`` dicts (one
    per planned slide) and ``DEAD_LETTER`` rows (one per slide that could not be planned).
    """

    def __init__(self, cfg: PatchingConfig) -> None:
        super().__init__()
        self._cfg = cfg

    def expand(self, slides: beam.PCollection) -> dict[str, beam.PCollection]:
        grid = slides | "PlanSlides" >> beam.ParDo(_PlanSlide(self._cfg)).with_outputs(
            SLIDE_INFO, DEAD_LETTER, main="units"
        )
        return {"units": grid.units, SLIDE_INFO: grid[SLIDE_INFO], DEAD_LETTER: grid[DEAD_LETTER]}
