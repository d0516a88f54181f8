"""Survey one slide before planning it: open it, check it can be decoded, mask its tissue.

Every planning path starts here, so each slide is opened, checked and masked the same way, with
transient I/O failures retried (``retry_transient``) and the slide closed again after its reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from transforms.core import progress
from transforms.core.errors import DEAD_LETTER, ResolutionError, SlideError, dead_letter
from transforms.core.remote_io import retry_transient
from transforms.models.spec import stain_key
from transforms.slides.geometry import GridSpec, PatchingConfig, SlideGeometry, grid_spec
from transforms.slides.reader import (
    check_decode_limits,
    open_slide,
    probe_decode,
    read_downsampled,
    slide_geometry,
)
from transforms.slides.stain_norm import normalised_basis
from transforms.slides.stains import StainBasis, estimate_stains
from transforms.slides.tissue import TissueMask, TissueRule, resolve_method, tissue_rule

STAGE = "PlanPatches"
"""The stage named in planning's dead letters, whichever plan (grid or manifest) made them."""
SLIDE_INFO = "slide_info"
"""Tag of the planning output with one ``slide_info`` dict per planned slide."""


@dataclass(frozen=True)
class SlideAppearance:
    """How one slide's pixels read, learned in its survey and carried by its work units and
    patches: what is tissue (``TissueRule``), and its H&E stain basis when one was asked for."""

    tissue: TissueRule
    stains: StainBasis | None = None
    normalised: tuple[tuple[str, StainBasis], ...] = ()
    """The slide's basis once stain-normalised, per ``stain_norm.stain_key`` (for models that
    take EHO channels of normalised patches)."""

    def stains_for(self, key: str) -> StainBasis | None:
        """The slide's basis once normalised by the normalisation ``key``; None if the slide
        has none."""
        return dict(self.normalised).get(key)


@dataclass(frozen=True)
class Survey:
    """What planning learns of one slide. ``specs``: the grid of each patch geometry when
    tiling, else empty."""

    geom: SlideGeometry
    mask: TissueMask
    specs: tuple[GridSpec | None, ...]
    tissue_method: str = "brightfield"
    """The method that made ``mask`` (``auto`` resolved for this slide)."""
    appearance: SlideAppearance | None = None
    """Its tissue rule, and its H&E stain basis when asked for (``PatchingConfig.stain_basis``)
    and the slide is brightfield with enough stained tissue."""
    refused: tuple[str | None, ...] = ()
    """Per geometry, why the slide is too coarse for it (its spec is None), else None."""


def mask_downsample(geom: SlideGeometry, patch_l0_px: int | None) -> float:
    """Level-0 pixels per mask pixel: about 8 per patch edge, 256 to 4096 across the slide.

    Without a grid (manifest patches) the mask only measures the tissue area: ~1024 px across
    is plenty, and lets a small pyramid's second level serve it instead of all of level 0.
    """
    longest = max(geom.width_px, geom.height_px)
    if patch_l0_px is None:
        return max(1.0, longest / 1024)
    return max(1.0, min(max(patch_l0_px / 8, longest / 4096), longest / 256))


def survey_or_failure(
    row: dict[str, Any], cfgs: Sequence[PatchingConfig], grid: bool
) -> Survey | Exception:
    """Survey the slide of a clean slide row once for every patch geometry ``cfgs`` (the first
    one's tissue method and stain setting apply), retrying transient I/O failures; or return what
    makes the slide unusable (``SlideError``, ``FileNotFoundError``, ``RemoteIOError``, ...),
    counted in ``slides_failed``, for the caller to turn into the slide's dead letter."""
    try:
        return retry_transient(f"planning {row['slide_id']}", lambda: _survey(row, cfgs, grid))
    except Exception as exc:  # noqa: BLE001 - every failure is this slide's dead letter
        progress.count("slides_failed")
        return exc


def _grids(
    geom: SlideGeometry, cfgs: Sequence[PatchingConfig]
) -> tuple[tuple[GridSpec | None, ...], tuple[str | None, ...]]:
    """Each geometry's grid on this slide, or None and why where the slide is too coarse for
    it; ``ResolutionError`` when it is too coarse for every geometry."""
    specs: list[GridSpec | None] = []
    refused: list[str | None] = []
    for cfg in cfgs:
        try:
            specs.append(grid_spec(geom, cfg))
            refused.append(None)
        except ResolutionError as exc:
            specs.append(None)
            refused.append(str(exc))
    if all(s is None for s in specs):
        raise ResolutionError(next(r for r in refused if r))
    return tuple(specs), tuple(refused)


def _survey(row: dict[str, Any], cfgs: Sequence[PatchingConfig], grid: bool) -> Survey:
    cfg = cfgs[0]
    slide = open_slide(row["uri"])
    try:
        progress.count("slides_opened")
        geom = slide_geometry(slide, row["mpp"])
        check_decode_limits(slide, geom)
        probe_decode(slide)
        specs, refused = _grids(geom, cfgs) if grid else ((), ())
        finest = min((s.patch_l0_px for s in specs if s is not None), default=None)
        rgb, ds = read_downsampled(slide, geom, mask_downsample(geom, finest))
        method = resolve_method(rgb, row.get("tissue_method") or cfg.tissue_method)
        rule = tissue_rule(rgb, method)
        mask = rule.mask(rgb)
        stains: StainBasis | None = None
        normalised: tuple[tuple[str, StainBasis], ...] = ()
        if cfg.stain_basis and method == "brightfield":
            try:
                stains = estimate_stains(rgb, mask)
                normalised = tuple(
                    (stain_key(m, ref), normalised_basis(rgb, mask, stains, m, ref))
                    for m, ref in cfg.stain_targets
                )
            except SlideError:
                pass  # its patches are dead letters for the models that need it, saying why
        appearance = SlideAppearance(rule, stains, normalised)
        return Survey(geom, TissueMask(mask, ds), specs, method, appearance, refused)
    finally:
        slide.close()


def slide_info(
    row: dict[str, Any],
    geom: SlideGeometry,
    tissue_area_mm2: float | None,
    tissue_method: str,
    patches_planned: list[int],
    refused: Sequence[str | None] = (),
    coverage: Sequence[float | None] = (),
) -> dict[str, Any]:
    """The ``SLIDE_INFO`` record of a planned slide, as SummarizeSlides takes it
    (``patches_planned``; ``refused``, why the slide is too coarse for it; ``coverage``, the
    share of its tissue the planned patches cover: per patch geometry)."""
    return {
        "refused": list(refused),
        "coverage": list(coverage),
        "tissue_method": tissue_method,
        "slide_id": row["slide_id"],
        "uri": row["uri"],
        "width_px": geom.width_px,
        "height_px": geom.height_px,
        "mpp": geom.mpp,
        "tissue_area_mm2": tissue_area_mm2,
        "patches_planned": patches_planned,
        "metadata": row["metadata"],
    }


def slide_error(row: dict[str, Any], error: Exception) -> Any:
    """The dead letter of a slide that could not be planned, as a tagged output."""
    return beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(STAGE, row["slide_id"], error, row))
