"""Tiled, pyramidal OME-TIFFs of stitched class masks and of heatmap overlays.

Written with tifffile, tile by tile from row strips, so a slide's mask is never one array: the
full-resolution image and each 2x level below it come from the same strips, subsampled
(nearest: labels stay labels). The physical pixel size is in the OME metadata and the TIFF
resolution tags, so tiffslide, OpenSlide-based tools and QuPath (Bio-Formats) place it on the
slide: pixel ``(i, j)`` of level 0 covers the slide's level-0 box
``[j * downsample, (j + 1) * downsample)``, downsample = the mask's mpp / the slide's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from transforms.io.schemas import file_name

TILE = 256
SMALLEST_LEVEL = 512
"""The pyramid stops at the first level whose long side fits this."""
BAND_ROWS = 1024
"""Mask rows per band: a band of a 40k px wide mask is 40 MB, a power of two for the pyramid."""


@dataclass(frozen=True)
class MaskGrid:
    """A slide's mask grid: its size in mask pixels, and what one mask pixel spans."""

    width: int
    height: int
    px: float
    py: float
    slide_dims: tuple[int, int]
    slide_mpp: float | None

    @classmethod
    def of(
        cls, slide_dims: tuple[int, int], px: float, py: float, slide_mpp: float | None
    ) -> MaskGrid:
        """The grid of mask pixels of ``px`` x ``py`` level-0 pixels over a slide."""
        w, h = slide_dims
        return cls(
            int(np.ceil(w / px - 1e-9)), int(np.ceil(h / py - 1e-9)), px, py, slide_dims, slide_mpp
        )

    @property
    def mpp(self) -> float | None:
        """µm per mask pixel across (None: the slide has no mpp)."""
        return self.slide_mpp * self.px if self.slide_mpp else None

    def band_rows(self, band: int) -> int:
        return min(BAND_ROWS, self.height - band * BAND_ROWS)


@dataclass
class Band:
    """``BAND_ROWS`` rows of a slide's mask, zlib-compressed, with its class pixel counts."""

    index: int
    data: bytes
    counts: np.ndarray

    def pixels(self, grid: MaskGrid) -> np.ndarray:
        raw = np.frombuffer(zlib.decompress(self.data), np.uint8)
        return raw.reshape(grid.band_rows(self.index), grid.width)


def mask_uri(folder: str, slide_id: str, model_name: str) -> str:
    return f"{folder.rstrip('/')}/{file_name(slide_id, model_name, '.ome.tif')}"


def pyramid_levels(width: int, height: int) -> int:
    """How many levels (each half the last) until the long side fits ``SMALLEST_LEVEL``."""
    levels = 1
    while max(width, height) > SMALLEST_LEVEL * 2 ** (levels - 1):
        levels += 1
    return levels


def tiles(strips: Iterable[np.ndarray], width: int) -> Iterator[np.ndarray]:
    """Row strips of any heights (``H x width [x C]``) -> ``TILE`` square tiles, row-major,
    padded with zeros at the right and bottom edges, holding one tile row at a time."""
    buffer: list[np.ndarray] = []
    held = 0
    for strip in strips:
        buffer.append(strip)
        held += strip.shape[0]
        while held >= TILE:
            rows = np.concatenate(buffer) if len(buffer) > 1 else buffer[0]
            yield from _tile_row(rows[:TILE], width)
            rest = rows[TILE:]
            buffer, held = ([rest] if len(rest) else []), len(rest)
    if held:
        yield from _tile_row(np.concatenate(buffer), width)


def _tile_row(rows: np.ndarray, width: int) -> Iterator[np.ndarray]:
    padded = np.zeros((TILE, -(-width // TILE) * TILE, *rows.shape[2:]), rows.dtype)
    padded[: rows.shape[0], :width] = rows
    for x in range(0, padded.shape[1], TILE):
        yield padded[:, x : x + TILE]


def write_pyramid(
    uri: str,
    width: int,
    height: int,
    strips: Callable[[int], Iterable[np.ndarray]],
    mpp: float | None,
    channels: int = 1,
    description: str = "",
) -> int:
    """Write a pyramidal OME-TIFF of ``width x height`` (uint8, ``channels`` 1, or 4 for RGBA)
    to a local or ``gs://`` ``uri``; ``strips(step)`` yields the image's row strips subsampled
    by ``step``. Returns the bytes written."""
    import tifffile

    from transforms.core.remote_io import open_uri

    levels = pyramid_levels(width, height)
    photometric = "minisblack" if channels == 1 else "rgb"
    metadata: dict = {"axes": "YX" if channels == 1 else "YXS", "Name": description}
    resolution = None
    if mpp:
        metadata.update(PhysicalSizeX=mpp, PhysicalSizeXUnit="µm")
        metadata.update(PhysicalSizeY=mpp, PhysicalSizeYUnit="µm")
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "image.ome.tif")
        with tifffile.TiffWriter(local, bigtiff=True, ome=True) as tif:
            for level in range(levels):
                step = 2**level
                w, h = -(-width // step), -(-height // step)
                if mpp:
                    resolution = (1e4 / (mpp * step), 1e4 / (mpp * step))
                tif.write(
                    tiles(strips(step), w),
                    shape=(h, w) if channels == 1 else (h, w, channels),
                    dtype=np.uint8,
                    tile=(TILE, TILE),
                    compression="zlib",
                    photometric=photometric,
                    extrasamples=("unassalpha",) if channels == 4 else None,
                    subifds=levels - 1 if level == 0 else None,
                    subfiletype=1 if level else 0,
                    resolution=resolution,
                    resolutionunit="CENTIMETER" if mpp else None,
                    metadata=metadata if level == 0 else None,
                )
        size = os.path.getsize(local)
        with open(local, "rb") as src, open_uri(uri, "wb", auto_mkdir=True) as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
    return size


def write_mask(uri: str, grid: MaskGrid, bands: Sequence[Band]) -> int:
    """A stitched class mask (its grid and sorted bands) as a pyramidal OME-TIFF: 0 off tissue
    or outside what was analysed, ``c + 1`` for class c."""

    def strips(step: int) -> Iterator[np.ndarray]:
        for band in bands:
            yield band.pixels(grid)[::step, ::step]

    return write_pyramid(
        uri,
        grid.width,
        grid.height,
        strips,
        grid.mpp,
        description="pathbeam class mask: 0 not analysed or not tissue, c + 1 class c",
    )
