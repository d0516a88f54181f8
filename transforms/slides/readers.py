"""What a slide reader declares: which URIs or first bytes it takes, and how it opens them.

A reader is a file that defines ``READER = Reader(...)`` (``tiff.py``, ``dicom.py``,
``dicomweb.py``) and a line in ``reader.registered()``; an OME-TIFF or Zarr reader is one more of
each. ``reader.open_slide`` asks them in order: by the URI's scheme, then by the first bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reader:
    """A slide reader: its name (for messages), the URI schemes it takes whatever the bytes,
    which first 132 bytes it takes (None: the file is a folder), and how it opens a URI."""

    name: str
    schemes: tuple[str, ...]
    takes: Callable[[bytes | None], bool] | None
    open: Callable[[str], Any]
