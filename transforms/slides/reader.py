"""The one slide interface planning and reading use, and opening a slide behind it.

A ``Slide`` has levels (sizes, downsamples, tile sizes), the mpp its file gives, tile-aligned
region reads at one level, and a count of the compressed bytes a read fetches. Two readers
implement it: ``tiff.TiffSlideFile`` (tiffslide: SVS, NDPI, generic TIFF) and
``dicom.DicomSlideFile`` (wsidicom: DICOM files and folders). ``open_slide`` picks one from the
file's content, never from its name alone: a ``.svs`` that is DICOM is read as DICOM.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

import numpy as np

from transforms.core.errors import SlideError, UnsupportedFormatError
from transforms.core.remote_io import filesystem
from transforms.slides.geometry import SlideGeometry, choose_level, plausible_mpp
from transforms.slides.readers import Reader

STRIP_BYTES = 16 << 20
"""Bound on one strip read while building a downsampled image (mask, thumbnail)."""


class Slide(Protocol):
    """An open slide. Levels are ordered finest first; level 0 is full resolution."""

    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    level_tiles: tuple[tuple[int, int], ...]
    declared_tiles: tuple[tuple[int, int] | None, ...]
    """Tile sizes the file declares (None: a stripped level), for the decode limits."""
    file_mpp: float | None

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """``w x h`` pixels at ``(x, y)`` in ``level``'s coordinates, as the file holds them."""
        ...

    def compressed_bytes(self, level: int, region: tuple[int, int, int, int]) -> int:
        """Compressed bytes of the tiles a read of ``region`` fetches (0 if unknown)."""
        ...

    def close(self) -> None: ...


def _head(uri: str) -> bytes | None:
    """The first 132 bytes of the file at ``uri``; None for a folder."""
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as f:
            head = bytes(f.read(132))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        if fs.isdir(path):
            return None
        raise FileNotFoundError(f"slide file not found: {uri}") from exc
    # An object store may open a folder (a prefix) as an empty object.
    return None if not head and fs.isdir(path) else head


def registered() -> tuple[Reader, ...]:
    """Every slide reader, in the order they are asked (imported when a slide is opened: wsidicom
    and tiffslide load only then)."""
    from transforms.slides import dicom, dicomweb, tiff

    return (dicomweb.READER, dicom.READER, tiff.READER)


def open_slide(uri: str) -> Slide:
    """Open the slide at ``uri`` with the first registered reader that takes it: by the URI's
    scheme, else by the file's first bytes (``readers.py``), never by its name alone.

    Raises:
      FileNotFoundError: the file does not exist.
      UnsupportedFormatError: no reader takes it.
      SlideError: a slide that cannot be read (e.g. a truncated TIFF).
    """
    readers = registered()
    for reader in readers:
        if reader.schemes and uri.startswith(reader.schemes):
            return reader.open(uri)
    head = _head(uri)
    for reader in readers:
        if reader.takes is not None and reader.takes(head):
            return reader.open(uri)
    names = ", ".join(r.name for r in readers)
    raise UnsupportedFormatError(
        f"no slide reader takes it ({names}): neither a TIFF-based slide (SVS, NDPI, generic "
        f"TIFF) nor a DICOM whole-slide image (the file starts with {(head or b'')[:8]!r})"
    )


def slide_geometry(slide: Slide, mpp_override: float | None = None) -> SlideGeometry:
    """The pyramid of an open slide; the manifest's MPP wins over the file's."""
    file_mpp = slide.file_mpp
    plausible = plausible_mpp(file_mpp)
    mpp = mpp_override or (file_mpp if plausible else None)
    width, height = slide.level_dimensions[0]
    return SlideGeometry(
        width_px=int(width),
        height_px=int(height),
        level_dims=slide.level_dimensions,
        level_downsamples=slide.level_downsamples,
        level_tiles=slide.level_tiles,
        mpp=mpp,
        ignored_file_mpp=None if plausible or mpp_override else file_mpp,
    )


def as_rgb(arr: np.ndarray) -> np.ndarray:
    """An ``H x W x 3`` uint8 view of what tiffslide returned (grey, RGB or RGBA)."""
    if arr.dtype != np.uint8:
        raise UnsupportedFormatError(f"{arr.dtype} pixels are not supported; expected 8-bit RGB")
    if arr.ndim == 2:
        arr = arr[..., None]
    channels = arr.shape[2]
    if channels == 1:
        return np.repeat(arr, 3, axis=2)
    if channels in (3, 4):
        return arr[..., :3]
    raise UnsupportedFormatError(f"{channels}-channel images are not supported; expected RGB")


def read_level_region(slide: Slide, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """Read ``w x h`` pixels at ``(x, y)`` in ``level`` coordinates as RGB uint8."""
    return as_rgb(slide.read(level, x, y, w, h))


def compressed_bytes(slide: Slide, level: int, region: tuple[int, int, int, int]) -> int:
    """Compressed bytes of the tiles a region read at ``level`` fetches (0 if unknown)."""
    return slide.compressed_bytes(level, region)


def read_downsampled(
    slide: Slide, geom: SlideGeometry, target_ds: float
) -> tuple[np.ndarray, float]:
    """The whole slide at about ``target_ds`` (level-0 pixels per output pixel), in RGB.

    Reads the coarsest level at or finer than ``target_ds`` in horizontal strips and averages
    ``k x k`` blocks, so memory stays bounded by one strip even for a slide without a pyramid.
    Returns the image and its exact downsample from level 0.
    """
    level = choose_level(geom.level_downsamples, max(1.0, target_ds))
    ds = geom.level_downsamples[level]
    k = max(1, int(target_ds / ds))
    width, height = geom.level_dims[level]
    out_w, out_h = width // k, height // k
    if out_w == 0 or out_h == 0:
        k, out_w, out_h = 1, width, height
    tile_h = geom.level_tiles[level][1]
    rows = max(k * max(1, -(-tile_h // k)), (STRIP_BYTES // max(1, width * 3)) // k * k)
    out = np.empty((out_h, out_w, 3), dtype=np.uint8)
    for y0 in range(0, out_h * k, rows):
        h = min(rows, out_h * k - y0)
        strip = read_level_region(slide, level, 0, y0, out_w * k, h)
        blocks = strip.reshape(h // k, k, out_w, k, 3).mean(axis=(1, 3), dtype=np.float32)
        out[y0 // k : (y0 + h) // k] = blocks.round().astype(np.uint8)
    return out, ds * k


class SlideCache:
    """A few open slides per DoFn instance, least recently used closed first."""

    def __init__(self, max_open: int = 4) -> None:
        self._max_open = max_open
        self._open: OrderedDict[str, Slide] = OrderedDict()

    def get(self, uri: str) -> Slide:
        """The open slide for ``uri``, opening it (and maybe closing the oldest) on a miss."""
        slide = self._open.get(uri)
        if slide is not None:
            self._open.move_to_end(uri)
            return slide
        slide = open_slide(uri)
        self._open[uri] = slide
        while len(self._open) > self._max_open:
            _, oldest = self._open.popitem(last=False)
            oldest.close()
        return slide

    def evict(self, uri: str) -> None:
        """Close and forget ``uri`` (after a failed read, so a retry reopens it)."""
        slide = self._open.pop(uri, None)
        if slide is not None:
            try:
                slide.close()
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        """Close every open slide."""
        while self._open:
            _, slide = self._open.popitem()
            try:
                slide.close()
            except Exception:  # noqa: BLE001 - closing must not mask the job's own error
                pass


MAX_TILE_PIXELS = 4096 * 4096
"""Largest tile (or strip) decoded: 48 MiB of RGB. A larger one is a decompression bomb risk (a
zlib tile of zeros is a few KB on disk and any size in memory), and no scanner writes one."""

MAX_LEVEL_PIXELS = 1 << 32
"""Largest coarsest level: the tissue mask decodes one whole level (in bounded strips), so a
slide with no level under ~65k x 65k px (a single-level 10^6 x 10^6 TIFF) would take hours."""


def check_decode_limits(slide: Slide, geom: SlideGeometry) -> None:
    """Refuse slides whose tiles or whose smallest level are absurd; raise ``SlideError``."""
    for level, tile in enumerate(slide.declared_tiles):
        if tile is None:
            continue
        tw, th = tile
        if tw * th > MAX_TILE_PIXELS:
            raise SlideError(
                f"level {level} has {tw} x {th} px tiles (over {MAX_TILE_PIXELS:,} px): refusing "
                "to decode them (decompression bomb guard); re-tile the slide, e.g. 256 x 256"
            )
    width, height = geom.level_dims[-1]
    if width * height > MAX_LEVEL_PIXELS:
        raise SlideError(
            f"the smallest level is {width} x {height} px (over {MAX_LEVEL_PIXELS:,} px): the "
            "slide needs a pyramid (e.g. vips tiffsave --tile --pyramid) before it can be masked"
        )


def probe_decode(slide: Slide) -> None:
    """Decode a few pixels of the coarsest level, so a broken codec fails with a clear message
    before any planning; raise ``SlideError``."""
    level = len(slide.level_dimensions) - 1
    width, height = slide.level_dimensions[level]
    try:
        read_level_region(slide, level, 0, 0, min(width, 16), min(height, 16))
    except UnsupportedFormatError:
        raise
    except Exception as exc:  # codec errors come as many types (ValueError, imagecodecs errors)
        raise SlideError(f"slide opens but its tiles cannot be decoded: {exc}") from exc


def unreadable(uri: str) -> str | None:
    """None when the slide at ``uri`` opens as a pyramid with its geometry; else why not (for
    a stream that waits for a DICOM series to be whole: ``stream.series.AwaitSeries``)."""
    try:
        slide = open_slide(uri)
    except Exception as exc:  # noqa: BLE001 - the reason is the answer
        return f"{type(exc).__name__}: {exc}"
    try:
        slide_geometry(slide)
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    finally:
        slide.close()
