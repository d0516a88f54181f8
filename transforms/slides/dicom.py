"""DICOM whole-slide images (VL Whole Slide Microscopy) through wsidicom.

A slide is one DICOM file, a folder holding one slide's instances (a series, its levels in
separate files), local or on ``gs://`` (read by range through fsspec, never downloaded whole),
or a series in a DICOMweb store (``dicomweb.py``). Levels come from the volume pyramid (label,
overview and thumbnail images are not levels); the mpp from the pixel spacing. The first
optical path and focal plane are read (wsidicom's default). wsidicom is imported here only, when
a DICOM slide is opened.

The bytes each read takes from its source are measured (``Transfer``): for files, the bytes read
from the instances' streams (the frames' compressed bytes); for DICOMweb, the response bytes.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np

from transforms.core.errors import SlideError, UnsupportedFormatError, shorten
from transforms.core.remote_io import filesystem, open_remote_file
from transforms.slides.readers import Reader
from transforms.slides.transfer import Transfer

_LIBRARY_NOISE = (
    "get_frame_offsets is deprecated",  # wsidicom 0.28 calls pydicom 3's old API, once a file
    "No bulk data URI handler provided",  # DICOMweb metadata leaves pixel data out, as it should
)
"""pydicom messages about how wsidicom calls it, logged and warned on every DICOM slide: nothing a
user can act on. A logging filter, since pydicom resets its logger's level when imported."""
logging.getLogger("pydicom").addFilter(
    lambda record: not any(noise in record.getMessage() for noise in _LIBRARY_NOISE)
)
for _noise in _LIBRARY_NOISE:
    warnings.filterwarnings("ignore", message=f".*{_noise}")


class _MeteredStream:
    """A binary stream that adds the bytes read through it to a ``Transfer``."""

    def __init__(self, raw: Any, transfer: Transfer) -> None:
        self._raw = raw
        self._transfer = transfer

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._transfer.add(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)
        self._transfer.add(n or 0)
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def _instance_files(target: str) -> list[str]:
    """The files of one slide: ``target`` itself, or the files directly in a folder."""
    fs, path = filesystem(target)
    if fs.isdir(path):
        files = sorted(f for f in fs.ls(path, detail=False) if not fs.isdir(f))
        return [fs.unstrip_protocol(f) if "://" in target else f for f in files]
    if not fs.exists(path):
        raise FileNotFoundError(f"slide file not found: {target}")
    return [target]


def _open_stream(uri: str) -> Any:
    return open(uri, "rb") if "://" not in uri else open_remote_file(uri)  # noqa: SIM115


def _open_files(target: str, transfer: Transfer) -> tuple[Any, list[Any]]:
    """The ``WsiDicom`` of a file or folder, and the streams it reads (closed by the caller)."""
    from wsidicom import WsiDicom

    streams: list[Any] = []
    try:
        for uri in _instance_files(target):
            streams.append(_open_stream(uri))
        # Files that are not DICOM (a README, a thumbnail) are not part of the slide.
        dicom = [s for s in streams if _is_dicom(s)]
        try:
            return WsiDicom.open_streams([_MeteredStream(s, transfer) for s in dicom]), streams
        except Exception as exc:
            raise UnsupportedFormatError(
                "a DICOM file or folder that holds no whole-slide image (VL Whole Slide "
                f"Microscopy volume) wsidicom can read: it holds {_described(dicom)} "
                f"({type(exc).__name__}: {exc})"
            ) from exc
    except Exception:
        for stream in streams:
            stream.close()
        raise


def _described(streams: list[Any]) -> str:
    """What DICOM instances the streams hold: image type and transfer syntax, for messages.
    Never raises, whatever the tags hold (a 5 MB ImageType of numbers raised a TypeError that
    hid the real error), and stays short."""
    seen = [_describe_one(stream) for stream in streams[:8]]
    if len(streams) > 8:
        seen.append(f"{len(streams) - 8} more")
    return shorten("; ".join(seen) or "no DICOM instance", 1000)


def _describe_one(stream: Any) -> str:
    try:
        import pydicom

        stream.seek(0)
        ds = pydicom.dcmread(stream, stop_before_pixels=True)
        sop, syntax = ds.get("SOPClassUID"), ds.file_meta.get("TransferSyntaxUID")
        image_type = ds.get("ImageType") or []
        values = [image_type] if isinstance(image_type, str | bytes | int) else list(image_type)
        kind = str(values[2]) if len(values) > 2 else "image"
        return shorten(
            f"{getattr(sop, 'name', sop)} {kind.lower()} in "
            f"{getattr(syntax, 'name', syntax)} ({syntax})",
            200,
        )
    except Exception as exc:  # noqa: BLE001 - described, never raised
        return f"an undescribable DICOM file ({type(exc).__name__})"


def _is_dicom(stream: Any) -> bool:
    head = stream.read(132)
    stream.seek(0)
    return head[128:132] == b"DICM"


class DicomSlideFile:
    """A DICOM whole-slide image behind the ``reader.Slide`` interface: a file or a folder of
    one slide's instances (``open``), or any ``WsiDicom`` and the streams it reads (a DICOMweb
    series: ``dicomweb.open_web_slide``)."""

    def __init__(self, wsi: Any, streams: list[Any], transfer: Transfer) -> None:
        self.transfer = transfer
        self._wsi, self._streams = wsi, streams
        self._last_read: tuple[int, tuple[int, int, int, int], int] | None = None
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
            self.close()
            raise

    @classmethod
    def open(cls, uri: str) -> DicomSlideFile:
        """A DICOM file or folder, local or any fsspec URL."""
        transfer = Transfer()
        wsi, streams = _open_files(uri.removeprefix("file://"), transfer)
        return cls(wsi, streams, transfer)

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        _, before = self.transfer.totals()
        region = self._wsi.read_region((x, y), self._levels[level], (w, h))
        pixels = np.asarray(region.convert("RGB") if region.mode != "RGB" else region)
        self._last_read = (level, (x, y, w, h), self.transfer.totals()[1] - before)
        return pixels

    def compressed_bytes(self, level: int, region: tuple[int, int, int, int]) -> int:
        """The bytes the last read of exactly ``region`` took from the source (measured: frames
        already cached by wsidicom cost nothing), else 0."""
        last = self._last_read
        return last[2] if last and last[:2] == (level, tuple(region)) else 0

    def close(self) -> None:
        try:
            self._wsi.close()
        finally:
            for stream in self._streams:
                stream.close()


def _is_dicom_head(head: bytes | None) -> bool:
    return head is None or head[128:132] == b"DICM"  # a folder: one slide's instances


READER = Reader("DICOM", (), _is_dicom_head, DicomSlideFile.open)
"""A DICOM file (``DICM`` at byte 128) or a folder of one slide's instances."""
