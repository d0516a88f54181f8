"""Patch geometry: which level to read, the patch grid at a target MPP, and tile-aligned work units.

Pure functions over plain numbers, so every rule here is unit-tested without a slide. All boxes in
and out are level-0 pixels unless a name says otherwise (``*_lvl``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from transforms.core.errors import ConfigError, OutOfBoundsError, ResolutionError, SlideError
from transforms.models.spec import check_patch_size

LEVEL_TOLERANCE = 0.02
"""A level whose downsample exceeds the wanted one by at most 2% still counts as not upsampling."""

TISSUE_METHODS = ("auto", "brightfield", "fluorescence")
MIN_MPP, MAX_MPP = 0.05, 50.0
"""A slide's plausible µm/px, wherever it comes from (its file or the manifest's ``mpp``): a
file's mpp outside it (352.8 µm/px is a 72 dpi default) is treated as missing; a manifest's is
a dead letter (``slides/manifest_rows.py``)."""


def plausible_mpp(mpp: float | None) -> bool:
    return mpp is not None and MIN_MPP <= mpp <= MAX_MPP


MAX_UPSAMPLE = 1.1
"""Refuse slides whose resolution is more than 10% coarser than ``--patch_mpp`` asks for."""


@dataclass(frozen=True)
class PatchingConfig:
    """How patches are planned and cut.

    Attributes:
      patch_px: edge of the square patch handed to the model, in pixels.
      patch_mpp: microns per pixel of that patch; ``None`` with ``patch_level``.
      patch_level: tile at this pyramid level instead of at an MPP (for slides without MPP).
      overlap_px: overlap of neighbouring grid patches, in patch pixels.
      min_tissue: smallest tissue fraction of a grid patch that reaches a model (0 keeps all).
      tissue_method: ``auto`` (per slide, by its background), ``brightfield`` (H&E, IHC) or
        ``fluorescence`` (dark background).
      block_px: edge of a work unit's block at the read level, rounded to whole tiles.
      max_patches_per_unit: cap on patches in one work unit.
      stain_basis: estimate each brightfield slide's H&E stain basis in its survey (for models
        that take stain channels, ``--model_input NAME=eho``, or normalise stains).
      stain_targets: the (method, reference) normalisations whose normalised basis the survey
        estimates too (models that take EHO channels of normalised patches).
    """

    patch_px: int = 224
    patch_mpp: float | None = 0.5
    patch_level: int | None = None
    overlap_px: int = 0
    min_tissue: float = 0.5
    tissue_method: str = "auto"
    block_px: int = 2048
    max_patches_per_unit: int = 64
    stain_basis: bool = False
    stain_targets: tuple[tuple[str, Any], ...] = ()
    max_upsample: float = MAX_UPSAMPLE
    """How much coarser than ``patch_mpp`` a slide may be (1 + a model's ``mpp_tolerance``)."""

    def __post_init__(self) -> None:
        check_patch_size("patch_", self.patch_px, self.patch_mpp)
        if (self.patch_mpp is None) == (self.patch_level is None):
            raise ConfigError("give exactly one of `patch_mpp` and `patch_level`")
        if self.patch_level is not None and self.patch_level < 0:
            raise ConfigError(f"`patch_level` must be >= 0, got {self.patch_level}")
        if not 0 <= self.overlap_px < self.patch_px:
            raise ConfigError(f"`overlap_px` must be in [0, `patch_px`), got {self.overlap_px}")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ConfigError(f"`min_tissue` must be in [0, 1], got {self.min_tissue}")
        if self.tissue_method not in TISSUE_METHODS:
            raise ConfigError(
                f"`tissue_method` must be one of {', '.join(TISSUE_METHODS)}, "
                f"got {self.tissue_method!r}"
            )
        if self.max_patches_per_unit < 1 or self.block_px < 64:
            raise ConfigError("`max_patches_per_unit` must be >= 1 and `block_px` >= 64")


@dataclass(frozen=True)
class SlideGeometry:
    """What planning needs to know of one slide's pyramid."""

    width_px: int
    height_px: int
    level_dims: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    level_tiles: tuple[tuple[int, int], ...]
    mpp: float | None
    ignored_file_mpp: float | None = None
    """An mpp the file gives that no scanner writes (a 72 or 96 dpi default): not used."""


_GIVE_MPP = "give the slide's real mpp in an `mpp` column of the slide manifest"


@dataclass(frozen=True)
class PatchBox:
    """One patch: a level-0 box, read at ``level`` and resized to ``patch_px``.

    A grid patch at the slide's right or bottom edge runs past it: only the part inside the
    slide is read (its valid region), and the rest is padded with the modality's background.
    ``own`` is the level-0 box ``(x0, y0, x1, y1)`` of the pixels this patch alone accounts for
    in a grid: neighbours' owned boxes tile the slide without overlap (the centre of each
    overlap goes to each side), so areas and stitched masks count every pixel once. ``None``
    (a manifest's patch): the patch's valid region.
    """

    x_px: int
    y_px: int
    size_px: int
    level: int
    own: tuple[int, int, int, int] | None = None


@dataclass
class WorkUnit:
    """A block of patches in one slide, read with one tile-aligned region read.

    ``region_lvl`` is ``(x, y, w, h)`` at ``level``; every patch box lies inside it.
    """

    slide_id: str
    uri: str
    level: int
    region_lvl: tuple[int, int, int, int]
    patches: list[PatchBox] = field(default_factory=list)
    patch_px: int = 224
    mpp: float | None = None
    slide_mpp: float | None = None
    appearance: Any = None
    """The slide's ``survey.SlideAppearance`` (tissue rule, stain basis)."""
    geometry: int = 0
    """Which of the job's patch geometries (patch px and mpp) the unit was planned for."""
    slide_dims: tuple[int, int] | None = None
    """The slide's level-0 width and height: patches past them are padded."""
    downsample: float = 1.0
    """``level``'s downsample from level 0."""

    def patch_mpp(self, box: PatchBox) -> float | None:
        """µm/px of ``box`` once resized to ``patch_px``: the grid's MPP, else from the slide's."""
        if self.mpp is not None:
            return self.mpp
        return self.slide_mpp * box.size_px / self.patch_px if self.slide_mpp else None


def choose_level(downsamples: tuple[float, ...], wanted: float) -> int:
    """The coarsest level whose downsample does not exceed ``wanted`` (never upsample)."""
    best = 0
    for i, ds in enumerate(downsamples):
        if ds <= wanted * (1 + LEVEL_TOLERANCE) and ds >= downsamples[best]:
            best = i
    return best


@dataclass(frozen=True)
class GridSpec:
    """The grid one slide is cut into."""

    level: int
    patch_l0_px: int
    stride_l0_px: float
    mpp: float | None


def grid_spec(geom: SlideGeometry, cfg: PatchingConfig) -> GridSpec:
    """Patch size and stride in level-0 pixels and the level to read, for one slide.

    Raises:
      SlideError: no MPP with ``--patch_mpp``, a missing level, or a resolution too coarse.
    """
    if cfg.patch_level is not None:
        if cfg.patch_level >= len(geom.level_downsamples):
            raise SlideError(
                f"--patch_level {cfg.patch_level} does not exist: the slide has "
                f"{len(geom.level_downsamples)} levels"
            )
        wanted = geom.level_downsamples[cfg.patch_level]
        level = cfg.patch_level
        mpp = geom.mpp * wanted if geom.mpp else None
    else:
        assert cfg.patch_mpp is not None
        if not geom.mpp:
            said = (
                f"its file says {geom.ignored_file_mpp:g} µm/px, which no slide scanner writes "
                "(a 72 or 96 dpi default?)"
                if geom.ignored_file_mpp
                else "its file gives none"
            )
            raise SlideError(
                f"slide has no usable mpp: {said}; {_GIVE_MPP}, or tile by level with --patch_level"
            )
        wanted = cfg.patch_mpp / geom.mpp
        if wanted < 1 / cfg.max_upsample:
            raise ResolutionError(
                f"slide resolution {geom.mpp:.4g} mpp is coarser than the patches' "
                f"{cfg.patch_mpp:g} mpp (--patch_mpp, or a model's recipe); refusing to upsample "
                f"more than {cfg.max_upsample:g}x "
                f"(if the slide's mpp is wrong, {_GIVE_MPP})"
            )
        level = choose_level(geom.level_downsamples, wanted)
        mpp = cfg.patch_mpp
    patch_l0 = max(1, round(cfg.patch_px * wanted))
    # the stride from the rounded patch, so that neighbours without overlap touch exactly (a
    # 0.499 µm/px slide cut at 0.5: 64 px patches every 64 px, not every 64.128)
    stride_l0 = patch_l0 * (cfg.patch_px - cfg.overlap_px) / cfg.patch_px
    return GridSpec(level=level, patch_l0_px=patch_l0, stride_l0_px=stride_l0, mpp=mpp)


def grid_boxes(geom: SlideGeometry, spec: GridSpec, whole_only: bool = False) -> Iterator[PatchBox]:
    """The grid's patches, row by row, covering every pixel of the slide: the last column and
    row run past the right and bottom edges (``whole_only``: only patches inside the slide,
    as other tools cut them; the benchmarks compare on those). Each patch's ``own`` box is its
    share of the slide: the boundary between neighbours lies in the middle of their overlap."""
    xs = _starts(geom.width_px, spec, whole_only)
    ys = _starts(geom.height_px, spec, whole_only)
    half = (spec.patch_l0_px - spec.stride_l0_px) / 2
    x_cuts = _cuts(xs, spec.patch_l0_px, half, geom.width_px)
    y_cuts = _cuts(ys, spec.patch_l0_px, half, geom.height_px)
    for j, y in enumerate(ys):
        for i, x in enumerate(xs):
            own = (x_cuts[i], y_cuts[j], x_cuts[i + 1], y_cuts[j + 1])
            yield PatchBox(x, y, spec.patch_l0_px, spec.level, own)


def _starts(extent: int, spec: GridSpec, whole_only: bool) -> list[int]:
    """Patch origins along one axis: until the patches cover ``extent`` (or, ``whole_only``,
    while a whole patch fits)."""
    size, stride = spec.patch_l0_px, spec.stride_l0_px
    starts: list[int] = []
    while True:
        start = round(len(starts) * stride)
        if whole_only and start + size > extent:
            return starts
        if start >= extent or (starts and starts[-1] + size >= extent):
            return starts
        starts.append(start)


def _cuts(starts: list[int], size: int, half: float, extent: int) -> list[int]:
    """The owned intervals' boundaries along one axis: the first patch's start, the middle of
    each overlap, and the last patch's end (clipped to the slide)."""
    if not starts:
        return [0]
    inner = [min(extent, math.floor(start + half + 0.5)) for start in starts[1:]]
    return [starts[0], *inner, min(extent, starts[-1] + size)]


def check_box(geom: SlideGeometry, box: PatchBox) -> None:
    """Raise ``OutOfBoundsError`` or ``SlideError`` for a manifest patch the slide cannot serve."""
    if box.level >= len(geom.level_downsamples):
        raise SlideError(
            f"level {box.level} does not exist: the slide has {len(geom.level_downsamples)} levels"
        )
    if box.x_px < 0 or box.y_px < 0 or box.size_px <= 0:
        raise OutOfBoundsError(f"patch box {_box_text(box)} has a negative origin or empty size")
    if box.x_px + box.size_px > geom.width_px or box.y_px + box.size_px > geom.height_px:
        raise OutOfBoundsError(
            f"patch box {_box_text(box)} lies outside the slide "
            f"({geom.width_px}x{geom.height_px} px at level 0)"
        )


def _box_text(box: PatchBox) -> str:
    return f"x={box.x_px} y={box.y_px} size={box.size_px}"


def box_at_level(box: PatchBox, downsample: float) -> tuple[int, int, int]:
    """``(x, y, size)`` of a level-0 box at a level with the given downsample."""
    x = int(box.x_px / downsample)
    y = int(box.y_px / downsample)
    return x, y, max(1, round(box.size_px / downsample))


def work_units(
    slide_id: str,
    uri: str,
    geom: SlideGeometry,
    boxes: Iterable[PatchBox],
    cfg: PatchingConfig,
    mpp: float | None,
) -> Iterator[WorkUnit]:
    """Group patch boxes into tile-aligned blocks at their read level.

    Patches are bucketed by the block holding their top-left corner; each bucket becomes one or
    more units of at most ``max_patches_per_unit`` patches, each with the tile-aligned bounding box
    of its patches as its read region, so every compressed tile of a block is decoded once.
    Boxes sorted by level and row (as ``grid_boxes`` yields them) are flushed one block row at a
    time, so planning a slide of any size holds one block row of boxes.
    """
    buckets: dict[tuple[int, int, int], list[PatchBox]] = {}
    block_row: tuple[int, int] | None = None
    for box in boxes:
        block = block_of(geom, box, cfg.block_px)
        if block[:2] != block_row:
            yield from _units(slide_id, uri, geom, buckets, cfg, mpp)
            buckets, block_row = {}, block[:2]
        buckets.setdefault(block, []).append(box)
    yield from _units(slide_id, uri, geom, buckets, cfg, mpp)


def block_of(geom: SlideGeometry, box: PatchBox, block_px: int) -> tuple[int, int, int]:
    """``(level, block row, block column)`` of the tile-aligned block holding ``box``'s corner.

    Blocks are ``block_px`` at the box's read level, rounded down to whole tiles (at least one).
    """
    tile_w, tile_h = geom.level_tiles[box.level]
    block_w = max(tile_w, block_px // tile_w * tile_w)
    block_h = max(tile_h, block_px // tile_h * tile_h)
    x, y, _ = box_at_level(box, geom.level_downsamples[box.level])
    return box.level, y // block_h, x // block_w


def _units(
    slide_id: str,
    uri: str,
    geom: SlideGeometry,
    buckets: dict[tuple[int, int, int], list[PatchBox]],
    cfg: PatchingConfig,
    mpp: float | None,
) -> Iterator[WorkUnit]:
    for (level, _, _), members in sorted(buckets.items()):
        for start in range(0, len(members), cfg.max_patches_per_unit):
            chunk = members[start : start + cfg.max_patches_per_unit]
            region = _aligned_region(geom, level, chunk)
            yield WorkUnit(
                slide_id,
                uri,
                level,
                region,
                chunk,
                cfg.patch_px,
                mpp,
                geom.mpp,
                slide_dims=(geom.width_px, geom.height_px),
                downsample=geom.level_downsamples[level],
            )


def _aligned_region(
    geom: SlideGeometry, level: int, boxes: list[PatchBox]
) -> tuple[int, int, int, int]:
    ds = geom.level_downsamples[level]
    tile_w, tile_h = geom.level_tiles[level]
    level_w, level_h = geom.level_dims[level]
    lvl = [box_at_level(b, ds) for b in boxes]
    x0 = min(x for x, _, _ in lvl) // tile_w * tile_w
    y0 = min(y for _, y, _ in lvl) // tile_h * tile_h
    x1 = min(level_w, -(-max(x + s for x, _, s in lvl) // tile_w) * tile_w)
    y1 = min(level_h, -(-max(y + s for _, y, s in lvl) // tile_h) * tile_h)
    return x0, y0, x1 - x0, y1 - y0
