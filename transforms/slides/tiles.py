"""Block reads of tiled TIFF levels, with the tiles decoded in parallel.

tiffslide reads a region through zarr 3, which runs every chunk read and decode of a process on
one event-loop thread: however many threads read slides, their tile decodes take turns on one
core (measured: two threads reading two slides took as long as one thread reading both). JPEG
tiles decode in under a millisecond, JPEG 2000 tiles in about 11 ms, so a JPEG 2000 slide fed
an accelerator at about 90 patches/s whatever the worker's vCPUs (``bench/README.md``).

Here a block read fetches the tiles' bytes in one pass (in file order, under the slide's lock)
and decodes them with tifffile's own decoder for the page (the function tiffslide's path calls
too, so the pixels are the same) on a process-wide thread pool; the codecs release the GIL, so
the decodes of one block, and of every harness thread's blocks, spread over the cores.

Only the simple, common layout takes this path: a tiled, 8-bit, 3-sample, chunky page whose size
is the level's, and a region inside it. Anything else (NDPI's virtual tiles, planar or
16-bit pages, a read over the edge) returns None and goes through tiffslide.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def decode_pool() -> ThreadPoolExecutor:
    """One pool per process, a thread per core: every slide reader shares it."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="tile-decode")
        return _POOL


def _simple(page: Any, width: int, height: int) -> bool:
    return bool(
        page.is_tiled
        and not page.is_ndpi  # virtual tiles cut from JPEG strips: tifffile's reader handles them
        and page.jpegheader is None
        and page.imagedepth == 1
        and page.tiledepth == 1
        and page.samplesperpixel == 3
        and page.planarconfig == 1
        and page.dtype == np.uint8
        and (page.imagewidth, page.imagelength) == (width, height)
    )


def tile_span(region: tuple[int, int, int, int], tw: int, th: int) -> tuple[range, range]:
    """The tile rows and columns (of ``tw x th`` tiles, or strips) a region touches."""
    x, y, w, h = region
    return range(y // th, -(-(y + h) // th)), range(x // tw, -(-(x + w) // tw))


def segment_indices(rows: range, cols: range, image_width: int, tw: int) -> list[int]:
    """Indices into a page's offsets and byte counts of the tiles ``rows x cols``, row-major."""
    across = -(-image_width // tw)
    return [r * across + c for r in rows for c in cols]


def read_tiled(
    page: Any, size: tuple[int, int], region: tuple[int, int, int, int], lock: Any
) -> np.ndarray | None:
    """``region`` (x, y, w, h in the level's pixels) of the level whose first page is ``page``
    and whose size is ``size``, as an ``h x w x 3`` uint8 array; None when the page or the
    region is not the simple kind (the caller reads it another way)."""
    x, y, w, h = region
    if not _simple(page, *size) or x < 0 or y < 0 or x + w > size[0] or y + h > size[1]:
        return None
    if w <= 0 or h <= 0:
        return np.zeros((max(h, 0), max(w, 0), 3), np.uint8)
    tw, th = page.tilewidth, page.tilelength
    rows, cols = tile_span(region, tw, th)
    indices = segment_indices(rows, cols, page.imagewidth, tw)
    segments = list(
        page.parent.filehandle.read_segments(
            [page.dataoffsets[i] for i in indices],
            [page.databytecounts[i] for i in indices],
            indices=indices,
            lock=lock,
        )
    )
    out = np.zeros((len(rows) * th, len(cols) * tw, 3), np.uint8)
    top, left = rows[0] * th, cols[0] * tw
    decode, tables = page.decode, page.jpegtables

    def place(segment: tuple[bytes | None, int]) -> None:
        data, index = segment
        tile, at, _ = decode(data, index, jpegtables=tables)
        if tile is None:  # an empty tile: zeros, as tiffslide gives
            return
        ty, tx = at[2] - top, at[3] - left
        out[ty : ty + th, tx : tx + tw] = tile[0, :th, :tw, :3]

    for done in [decode_pool().submit(place, s) for s in segments]:
        done.result()
    return out[y - top : y - top + h, x - left : x - left + w]
