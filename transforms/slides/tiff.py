"""TIFF-based slides (Aperio SVS, Hamamatsu NDPI, generic tiled TIFF, ...) through tiffslide.

tiffslide reads from any fsspec URL, fetching only the byte ranges of the tiles a read touches.
"""

from __future__ import annotations

import math
import threading
import warnings
from typing import Any

import numpy as np

from transforms.core.errors import SlideError, UnsupportedFormatError
from transforms.core.remote_io import open_remote_file
from transforms.slides.readers import Reader
from transforms.slides.tiles import read_tiled, segment_indices, tile_span

# tiffslide warns on every NDPI metadata read that its Hamamatsu parsing is partial; MPP and
# levels, all this project reads, are parsed.
warnings.filterwarnings("ignore", message=".*format metadata parsing only partially")


def _file_mpp(props: dict[str, Any]) -> float | None:
    try:
        x, y = float(props["tiffslide.mpp-x"]), float(props["tiffslide.mpp-y"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (math.isfinite(x) and x > 0):
        return None
    return (x + y) / 2 if math.isfinite(y) and y > 0 else x


class TiffSlideFile:
    """A TIFF-based slide behind the ``reader.Slide`` interface."""

    def __init__(self, uri: str) -> None:
        import tifffile
        import tiffslide

        try:
            if "://" in uri and not uri.startswith("file://"):
                self._slide = tiffslide.TiffSlide(open_remote_file(uri))
            else:
                self._slide = tiffslide.TiffSlide(uri)
        except tifffile.TiffFileError as exc:
            raise UnsupportedFormatError(f"not a TIFF-based slide ({exc})") from exc
        try:
            props = self._slide.properties
            self.level_dimensions = tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)
        except (IndexError, KeyError, ValueError, OSError) as exc:
            self._slide.close()
            raise SlideError(
                f"the TIFF has no readable image page ({type(exc).__name__}: {exc}); the file "
                "is truncated or corrupt"
            ) from exc
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.declared_tiles = tuple(
            (int(tw), int(th))
            if (tw := props.get(f"tiffslide.level[{i}].tile-width"))
            and (th := props.get(f"tiffslide.level[{i}].tile-height"))
            else None
            for i in range(len(self.level_dimensions))
        )
        self.level_tiles = tuple(
            tile or dims
            for tile, dims in zip(self.declared_tiles, self.level_dimensions, strict=True)
        )
        self.file_mpp = _file_mpp(props)
        self._lock = threading.Lock()

    def _first_page(self, level: int) -> Any:
        try:
            return self._slide.ts_tifffile.series[0].levels[level].keyframe
        except (AttributeError, IndexError):
            return None

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Tiled levels decode their tiles in parallel (``tiles.py``); others via tiffslide."""
        page = self._first_page(level)
        if page is not None:
            block = read_tiled(page, self.level_dimensions[level], (x, y, w, h), self._lock)
            if block is not None:
                return block
        ds = self.level_downsamples[level]
        # tiffslide takes a level-0 location and divides by the downsample, flooring; the
        # ceiling of the product maps back to exactly (x, y) for any downsample >= 1.
        loc = (math.ceil(x * ds), math.ceil(y * ds))
        return np.asarray(self._slide.read_region(loc, level, (w, h), as_array=True))

    def compressed_bytes(self, level: int, region: tuple[int, int, int, int]) -> int:
        page = self._first_page(level)
        try:
            counts = page.databytecounts
            tw, th = page.tilewidth or page.imagewidth, page.tilelength or page.rowsperstrip
            rows, cols = tile_span(region, tw, th)
            indices = segment_indices(rows, cols, page.imagewidth, tw)
        except (AttributeError, IndexError, TypeError, ZeroDivisionError):
            return 0
        return int(sum(counts[i] for i in indices if i < len(counts)))

    def close(self) -> None:
        self._slide.close()


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _is_tiff_head(head: bytes | None) -> bool:
    return head is not None and head[:4] in _TIFF_MAGIC


READER = Reader("TIFF", (), _is_tiff_head, TiffSlideFile)
"""TIFF-based slides (SVS, NDPI, generic TIFF), by the TIFF or BigTIFF magic."""
