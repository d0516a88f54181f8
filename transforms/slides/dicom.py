"""DICOM whole-slide images (VL Whole Slide Microscopy) through wsidicom.

A slide is one DICOM file, a folder holding one slide's instances (a series, its levels in
separate files), or a series in a DICOMweb store (``dicomweb.py``). Levels come from the volume
pyramid (label, overview and thumbnail images are not levels); the mpp from the pixel spacing.
The first optical path and focal plane are read (wsidicom's default). wsidicom is imported here
only, when a DICOM slide is opened.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from transforms.core.errors import SlideError, UnsupportedFormatError
from transforms.core.remote_io import remote_options


def _open(uri: str) -> Any:
    from wsidicom import WsiDicom

    from transforms.slides.dicomweb import is_dicomweb, open_series

    if is_dicomweb(uri):
        return open_series(uri)
    target = uri.removeprefix("file://")
    local = "://" not in target
    files: Any = target if (local and os.path.isdir(target)) else [target]
    options = None if local else remote_options(uri)
    try:
        return WsiDicom.open(files, file_options=options)
    except FileNotFoundError:
        raise
    except Exception as exc:  # wsidicom raises its own errors for non-slide DICOM
        raise UnsupportedFormatError(
            "a DICOM file or folder that holds no whole-slide image (VL Whole Slide Microscopy "
            f"volume) wsidicom can read: {type(exc).__name__}: {exc}"
        ) from exc


class DicomSlideFile:
    """A DICOM whole-slide image behind the ``reader.Slide`` interface."""

    def __init__(self, uri: str) -> None:
        self._wsi = _open(uri)
        try:
            levels = sorted(self._wsi.levels, key=lambda lv: lv.size.width, reverse=True)
            if not levels:
                raise SlideError("the DICOM series has no volume levels")
            base = levels[0].size
            self._levels = [lv.level for lv in levels]
            self.level_dimensions = tuple((lv.size.width, lv.size.height) for lv in levels)
            self.level_downsamples = tuple(
                (base.width / lv.size.width + base.height / lv.size.height) / 2 for lv in levels
            )
            self.level_tiles = tuple((lv.tile_size.width, lv.tile_size.height) for lv in levels)
            self.declared_tiles: tuple[tuple[int, int] | None, ...] = self.level_tiles
            mpp = self._wsi.mpp
            self.file_mpp = float((mpp.width + mpp.height) / 2) if mpp else None
        except Exception:
            self._wsi.close()
            raise

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        region = self._wsi.read_region((x, y), self._levels[level], (w, h))
        return np.asarray(region.convert("RGB") if region.mode != "RGB" else region)

    def compressed_bytes(self, level: int, region: tuple[int, int, int, int]) -> int:
        return 0  # not counted for DICOM yet: frames are fetched by wsidicom

    def close(self) -> None:
        self._wsi.close()
