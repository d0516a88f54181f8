"""Heatmap pictures: patch probabilities over the slide thumbnail, with a title and a legend.

Two classes (or one sigmoid output): the probability of the last class on a blue-yellow-red scale.
More classes: each patch in its top class's colour, more opaque where the model is surer.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

_SCALE = np.array(
    [
        [49, 54, 149],
        [69, 117, 180],
        [171, 217, 233],
        [255, 255, 191],
        [253, 174, 97],
        [215, 48, 39],
        [165, 0, 38],
    ],
    dtype=np.float32,
)
PALETTE = np.array(
    [
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [148, 103, 189],
        [140, 86, 75],
        [227, 119, 194],
        [127, 127, 127],
        [188, 189, 34],
        [23, 190, 207],
    ],
    dtype=np.float32,
)
_LEGEND_PX = 56


def colour_scale(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB (float32) on a diverging blue-yellow-red scale."""
    pos = np.clip(values, 0.0, 1.0) * (len(_SCALE) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_SCALE) - 2)
    frac = (pos - lo)[..., None]
    return _SCALE[lo] * (1 - frac) + _SCALE[lo + 1] * frac


def render_heatmap(
    thumb: np.ndarray,
    thumb_downsample: float,
    boxes: Sequence[tuple[int, int, int]],
    probs: np.ndarray,
    title: str,
) -> bytes:
    """A PNG of ``probs`` (``N x C``) painted at level-0 ``boxes`` over the thumbnail."""
    from PIL import Image, ImageDraw

    h, w = thumb.shape[:2]
    colour = np.zeros((h, w, 3), np.float32)
    alpha = np.zeros((h, w), np.float32)
    n_classes = probs.shape[1] if probs.ndim == 2 and len(probs) else 2
    for (x, y, size), p in zip(boxes, probs, strict=True):
        x0, y0 = int(x / thumb_downsample), int(y / thumb_downsample)
        x1 = max(x0 + 1, int(round((x + size) / thumb_downsample)))
        y1 = max(y0 + 1, int(round((y + size) / thumb_downsample)))
        if n_classes <= 2:
            colour[y0:y1, x0:x1] = colour_scale(np.array(p[-1]))
            alpha[y0:y1, x0:x1] = 0.5
        else:
            top = int(np.argmax(p))
            colour[y0:y1, x0:x1] = PALETTE[top % len(PALETTE)]
            alpha[y0:y1, x0:x1] = 0.25 + 0.5 * float(p[top])
    blended = thumb.astype(np.float32) * (1 - alpha[..., None]) + colour * alpha[..., None]
    canvas = Image.new("RGB", (max(w, 320), h + _LEGEND_PX), "white")
    canvas.paste(Image.fromarray(blended.round().astype(np.uint8)), (0, 0))
    _draw_legend(ImageDraw.Draw(canvas), h, canvas.width, n_classes, title)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def _draw_legend(draw: Any, top: int, width: int, n_classes: int, title: str) -> None:
    black = (0, 0, 0)
    draw.text((6, top + 4), title[:120], fill=black)
    bar_top, bar_w = top + 24, min(256, width - 60)
    if n_classes <= 2:
        for i in range(bar_w):
            rgb = tuple(int(c) for c in colour_scale(np.array(i / (bar_w - 1))))
            draw.line([(30 + i, bar_top), (30 + i, bar_top + 12)], fill=rgb)
        draw.text((6, bar_top), "0", fill=black)
        draw.text((36 + bar_w, bar_top), f"1  P(class {n_classes - 1})", fill=black)
        return
    for c in range(min(n_classes, len(PALETTE))):
        x = 6 + c * 40
        draw.rectangle([x, bar_top, x + 12, bar_top + 12], fill=tuple(int(v) for v in PALETTE[c]))
        draw.text((x + 16, bar_top), str(c), fill=black)
