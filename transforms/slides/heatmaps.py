"""Heatmap pictures: patch probabilities over the slide thumbnail, with a title and a legend
naming the classes; the thumbnail read (retried like every other slide read) and the PNG write.

Two classes (or one sigmoid output): the probability of the last class on a blue-yellow-red scale.
More classes: each cell in its top class's colour, more opaque where the model is surer. A class
map (segmentation): each cell in the colour of the class with most pixels, whatever the count.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from transforms.core.remote_io import open_uri, retry_transient
from transforms.io.schemas import file_name

THUMBNAIL_LONG_SIDE_PX = 1024

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


def palette_of(colours: Sequence[str] = ()) -> np.ndarray:
    """The class colours of a picture: a recipe's ``#rrggbb`` ones, else ``PALETTE``."""
    if not colours:
        return PALETTE
    return np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in colours], np.float32)


def overlay_rgba(
    probs: np.ndarray,
    painted: np.ndarray,
    class_map: bool = False,
    palette: np.ndarray = PALETTE,
) -> np.ndarray:
    """An ``H x W x 4`` uint8 overlay of a probability raster ``H x W x C``, clear where unpainted.

    Two classes (or one): the last class's probability on the colour scale. More, or a class map:
    the top class's ``palette`` colour, more opaque where the model is surer.
    """
    h, w, n_classes = probs.shape
    rgba = np.zeros((h, w, 4), np.uint8)
    if n_classes <= 2 and not class_map:
        rgba[..., :3] = colour_scale(probs[..., -1]).round().astype(np.uint8)
        rgba[..., 3] = np.where(painted, 128, 0)
    else:
        top = probs.argmax(axis=2)
        rgba[..., :3] = palette[top % len(palette)].astype(np.uint8)
        confidence = np.take_along_axis(probs, top[..., None], axis=2)[..., 0]
        rgba[..., 3] = np.where(painted, (64 + 128 * confidence).round(), 0).astype(np.uint8)
    return rgba


def render_heatmap(
    thumb: np.ndarray,
    thumb_downsample: float,
    cell_px: int,
    probs: np.ndarray,
    painted: np.ndarray,
    title: str,
    class_names: list[str] | None = None,
    class_map: bool = False,
    colours: Sequence[str] = (),
) -> bytes:
    """A PNG of a probability raster (cells of ``cell_px`` level-0 pixels) over the thumbnail.

    The overlay is drawn at raster resolution and scaled with nearest-neighbour resampling, so
    memory stays at a few thumbnail-sized uint8 images whatever the slide and patch count.
    """
    from PIL import Image, ImageDraw

    h, w = thumb.shape[:2]
    base = Image.fromarray(thumb).convert("RGBA")
    scale = cell_px / thumb_downsample
    size = (max(1, round(probs.shape[1] * scale)), max(1, round(probs.shape[0] * scale)))
    palette = palette_of(colours)
    overlay = Image.fromarray(overlay_rgba(probs, painted, class_map, palette))
    overlay = overlay.resize(size, Image.Resampling.NEAREST)
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    layer.paste(overlay.crop((0, 0, min(size[0], w), min(size[1], h))), (0, 0))
    blended = Image.alpha_composite(base, layer).convert("RGB")
    canvas = Image.new("RGB", (max(w, 320), h + _LEGEND_PX), "white")
    canvas.paste(blended, (0, 0))
    names = class_names or [f"class {c}" for c in range(probs.shape[2])]
    _draw_legend(ImageDraw.Draw(canvas), h, canvas.width, names, title, class_map, palette)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def _draw_legend(
    draw: Any,
    top: int,
    width: int,
    names: list[str],
    title: str,
    class_map: bool,
    palette: np.ndarray,
) -> None:
    black = (0, 0, 0)
    draw.text((6, top + 4), title[:120], fill=black)
    bar_top, bar_w = top + 24, min(256, width - 60)
    if len(names) <= 2 and not class_map:
        for i in range(bar_w):
            rgb = tuple(int(c) for c in colour_scale(np.array(i / (bar_w - 1))))
            draw.line([(30 + i, bar_top), (30 + i, bar_top + 12)], fill=rgb)
        draw.text((6, bar_top), "0", fill=black)
        draw.text((36 + bar_w, bar_top), f"1  P({names[-1]})", fill=black)
        return
    x = 6
    for c, name in enumerate(names[: len(palette)]):
        draw.rectangle([x, bar_top, x + 12, bar_top + 12], fill=tuple(int(v) for v in palette[c]))
        draw.text((x + 16, bar_top), name, fill=black)
        x += 16 + int(draw.textlength(name)) + 14


def slide_thumbnail(uri: str) -> tuple[np.ndarray, float]:
    """The slide at about ``THUMBNAIL_LONG_SIDE_PX`` across, and its downsample from level 0;
    transient I/O failures are retried."""
    from transforms.slides.reader import open_slide, read_downsampled, slide_geometry

    def read() -> tuple[np.ndarray, float]:
        slide = open_slide(uri)
        try:
            geom = slide_geometry(slide)
            longest = max(geom.width_px, geom.height_px)
            return read_downsampled(slide, geom, longest / THUMBNAIL_LONG_SIDE_PX)
        finally:
            slide.close()

    return retry_transient(f"reading a thumbnail of {uri}", read)


def heatmap_uri(folder: str, slide_id: str, model_name: str) -> str:
    """Where the heatmap of ``slide_id`` by ``model_name`` goes (names made safe for files)."""
    return f"{folder.rstrip('/')}/{file_name(slide_id, model_name, '.png')}"


def thumbnail_uri(folder: str, slide_id: str) -> str:
    """Where the thumbnail JPEG of ``slide_id`` goes."""
    return f"{folder.rstrip('/')}/{file_name(slide_id, None, '.jpg')}"


def write_image(uri: str, data: bytes) -> None:
    """Write an encoded image to a local or ``gs://`` ``uri``, creating folders as needed."""

    with open_uri(uri, "wb", auto_mkdir=True) as f:
        f.write(data)


def write_heatmap_pyramid(
    uri: str,
    probs: np.ndarray,
    painted: np.ndarray,
    cell_px: int,
    slide_mpp: float | None,
    palette: np.ndarray = PALETTE,
) -> int:
    """The heatmap raster as a pyramidal RGBA OME-TIFF aligned to level 0 (pixel ``(i, j)``
    covers level-0 ``[j * cell_px, (j + 1) * cell_px)``; its mpp is ``cell_px`` times the
    slide's), clear where no patch was: an overlay QuPath and tiffslide place on the slide."""
    from transforms.slides.masks import write_pyramid

    rgba = overlay_rgba(probs, painted, False, palette)
    rgba[..., 3] = np.where(painted, 255, 0)
    h, w = rgba.shape[:2]
    return write_pyramid(
        uri,
        w,
        h,
        lambda step: [rgba[::step, ::step]],
        slide_mpp * cell_px if slide_mpp else None,
        channels=4,
        description="pathbeam heatmap: each patch cell in its top class's colour (two "
        "classes: the last class's probability on a blue-red scale)",
    )
