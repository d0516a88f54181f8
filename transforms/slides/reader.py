"""Open slides with tiffslide over fsspec and read regions of one pyramid level.

tiffslide reads TIFF-based formats (Aperio SVS, Hamamatsu NDPI, generic tiled TIFF, ...) from any
fsspec URL, fetching only the byte ranges of the tiles a read touches. DICOM is not TIFF: it is
recognised by its preamble and rejected with a clear message.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from typing import Any

import fsspec
import numpy as np

from transforms.core.errors import SlideError, UnsupportedFormatError
from transforms.core.remote_io import remote_options
from transforms.slides.geometry import SlideGeometry, choose_level

# tiffslide warns on every NDPI metadata read that its Hamamatsu parsing is partial; MPP and
# levels, all this project reads, are parsed.
warnings.filterwarnings("ignore", message=".*format metadata parsing only partially")

MIN_MPP, MAX_MPP = 0.05, 50.0
"""A file's mpp outside this range is not a slide scanner's (352.8 µm/px is a 72 dpi default):
it is treated as missing, and the manifest's ``mpp`` column is asked for."""

STRIP_BYTES = 16 << 20
"""Bound on one strip read while building a downsampled image (mask, thumbnail)."""

REMOTE_BLOCK_BYTES = 256 << 10
REMOTE_CACHED_BLOCKS = 64
"""Remote slides are read in 256 KiB range requests kept in a 64-block LRU cache (16 MiB per open
slide): a row of neighbouring tiles is usually contiguous in the file, so one request serves
several tiles, and the IFDs at the file's end stay cached while tiles are read from its start.
Measured (bench/bench_gcs_reads.py, 8192 px slide): a 2048 px work unit takes 20 requests and
4.9 MB, against 242 requests and 3.1 MB with gcsfs's default cache. On GCS a request costs
tens of ms and a MB ~10 ms, so fewer, larger requests win; a one-block read-ahead cache
thrashed between the IFDs and the tiles."""


def _open_remote(uri: str) -> Any:
    """An fsspec file of ``uri`` read by range, through a block cache sized for tiles."""
    fs, path = fsspec.core.url_to_fs(uri, **remote_options(uri))
    return fs.open(
        path,
        "rb",
        block_size=REMOTE_BLOCK_BYTES,
        cache_type="blockcache",
        cache_options={"maxblocks": REMOTE_CACHED_BLOCKS},
    )


def open_slide(uri: str) -> Any:
    """Open a slide with tiffslide; raise ``SlideError`` subclasses with what to do.

    Raises:
      FileNotFoundError: the file does not exist.
      UnsupportedFormatError: DICOM or another non-TIFF file.
      SlideError: a TIFF without a readable image page (e.g. truncated).
    """
    import tifffile
    import tiffslide

    try:
        if "://" in uri and not uri.startswith("file://"):
            slide = tiffslide.TiffSlide(_open_remote(uri))
        else:
            slide = tiffslide.TiffSlide(uri)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"slide file not found: {uri}") from exc
    except tifffile.TiffFileError as exc:
        if _is_dicom(uri):
            raise UnsupportedFormatError(
                "DICOM whole-slide images are not read yet (tiffslide reads TIFF-based formats "
                "only): export the slide to a pyramidal TIFF, e.g. with libvips built on "
                "OpenSlide 4 (`vips tiffsave SLIDE.dcm SLIDE.tif --tile --pyramid "
                "--compression jpeg`), and list the TIFF in the manifest"
            ) from exc
        raise UnsupportedFormatError(f"not a TIFF-based slide ({exc})") from exc
    try:
        _ = slide.properties, slide.level_dimensions
    except (IndexError, KeyError, ValueError, OSError) as exc:
        slide.close()
        raise SlideError(
            f"the TIFF has no readable image page ({type(exc).__name__}: {exc}); the file is "
            "truncated or corrupt"
        ) from exc
    return slide


def _is_dicom(uri: str) -> bool:
    try:
        with fsspec.open(uri, "rb", **remote_options(uri)) as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def slide_geometry(slide: Any, mpp_override: float | None = None) -> SlideGeometry:
    """The pyramid of an open slide; the manifest's MPP wins over the file's."""
    props = slide.properties
    tiles = []
    for i in range(slide.level_count):
        tw = props.get(f"tiffslide.level[{i}].tile-width") or slide.level_dimensions[i][0]
        th = props.get(f"tiffslide.level[{i}].tile-height") or slide.level_dimensions[i][1]
        tiles.append((int(tw), int(th)))
    file_mpp = _file_mpp(props)
    plausible = file_mpp is not None and MIN_MPP <= file_mpp <= MAX_MPP
    mpp = mpp_override or (file_mpp if plausible else None)
    width, height = slide.dimensions
    return SlideGeometry(
        width_px=int(width),
        height_px=int(height),
        level_dims=tuple((int(w), int(h)) for w, h in slide.level_dimensions),
        level_downsamples=tuple(float(d) for d in slide.level_downsamples),
        level_tiles=tuple(tiles),
        mpp=mpp,
        ignored_file_mpp=None if plausible or mpp_override else file_mpp,
    )


def _file_mpp(props: dict[str, Any]) -> float | None:
    try:
        x, y = float(props["tiffslide.mpp-x"]), float(props["tiffslide.mpp-y"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (math.isfinite(x) and x > 0):
        return None
    return (x + y) / 2 if math.isfinite(y) and y > 0 else x


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


def read_level_region(slide: Any, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """Read ``w x h`` pixels at ``(x, y)`` in ``level`` coordinates as RGB uint8."""
    ds = float(slide.level_downsamples[level])
    # tiffslide takes a level-0 location and divides by the downsample, flooring; the ceiling of
    # the product maps back to exactly (x, y) for any downsample >= 1.
    loc = (math.ceil(x * ds), math.ceil(y * ds))
    return as_rgb(slide.read_region(loc, level, (w, h), as_array=True))


def compressed_bytes(slide: Any, level: int, region: tuple[int, int, int, int]) -> int:
    """Compressed bytes of the tiles a region read at ``level`` fetches (0 if unknown)."""
    try:
        page = slide.ts_tifffile.series[0].levels[level].keyframe
        counts = page.databytecounts
        tw, th = page.tilewidth or page.imagewidth, page.tilelength or page.rowsperstrip
        across = -(-page.imagewidth // tw)
    except (AttributeError, IndexError, TypeError, ZeroDivisionError):
        return 0
    x, y, w, h = region
    total = 0
    for row in range(y // th, -(-(y + h) // th)):
        start = row * across
        total += sum(counts[start + x // tw : start + -(-(x + w) // tw)])
    return int(total)


def read_downsampled(slide: Any, geom: SlideGeometry, target_ds: float) -> tuple[np.ndarray, float]:
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
        self._open: OrderedDict[str, Any] = OrderedDict()

    def get(self, uri: str) -> Any:
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


def check_decode_limits(slide: Any, geom: SlideGeometry) -> None:
    """Refuse slides whose tiles or whose smallest level are absurd; raise ``SlideError``."""
    props = slide.properties
    for level in range(len(geom.level_dims)):
        tw = props.get(f"tiffslide.level[{level}].tile-width")
        th = props.get(f"tiffslide.level[{level}].tile-height")
        if tw and th and int(tw) * int(th) > MAX_TILE_PIXELS:
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


def probe_decode(slide: Any) -> None:
    """Decode a few pixels of the coarsest level, so a broken codec fails with a clear message
    before any planning; raise ``SlideError``."""
    level = slide.level_count - 1
    width, height = slide.level_dimensions[level]
    try:
        read_level_region(slide, level, 0, 0, min(width, 16), min(height, 16))
    except UnsupportedFormatError:
        raise
    except Exception as exc:  # codec errors come as many types (ValueError, imagecodecs errors)
        raise SlideError(f"slide opens but its tiles cannot be decoded: {exc}") from exc
