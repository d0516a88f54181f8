"""What a patch's pixels are, read independently of the pipeline: tiffslide's level-0 read of
the part inside the slide, padded with the brightfield background past its edges (as
``read_patches.cut_patch`` pads)."""

from __future__ import annotations

import numpy as np


def padded_patch(slide, x: int, y: int, size: int, background: int = 255) -> np.ndarray:  # noqa: ANN001
    """The ``size`` square at level-0 ``(x, y)`` of a ``tiffslide.TiffSlide``, RGB."""
    width, height = slide.dimensions
    w, h = min(size, width - x), min(size, height - y)
    out = np.full((size, size, 3), background, np.uint8)
    out[:h, :w] = np.asarray(slide.read_region((x, y), 0, (w, h), as_array=True))[..., :3]
    return out
