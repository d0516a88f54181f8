"""Tissue masks from a low-resolution RGB image, and the tissue fraction of a patch box.

Brightfield (H&E, IHC): tissue is coloured, glass is white or grey. A pixel is tissue when its
HSV saturation is above an Otsu threshold (clamped, so an all-tissue or all-glass image still
splits sensibly) and it is not near-black (scanner borders, out-of-focus debris).
Fluorescence: tissue is brighter than a dark background; Otsu on the brightest channel.
Auto: one of the two per slide, by its background: the median brightness of the image's border.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transforms.slides.geometry import PatchBox

SATURATION_BOUNDS = (0.04, 0.15)
"""Otsu's saturation threshold is clamped to this range (0..1)."""
MIN_BRIGHTFIELD_VALUE = 40
"""Brightfield pixels darker than this (0..255, HSV value) are not tissue."""
MIN_FLUORESCENCE_VALUE = 8
DARK_BACKGROUND = 96
"""A border darker than this (0..255, median of the brightest channel) is a fluorescence slide.
Measured on the dev slides: brightfield borders 246-255, the TRITC NDPI's 4."""
BORDER_FRACTION = 0.05


@dataclass(frozen=True)
class TissueMask:
    """A boolean mask and the level-0 pixels one mask pixel covers."""

    mask: np.ndarray
    downsample: float

    def fraction(self, box: PatchBox) -> float:
        """Fraction of the level-0 box that is tissue (0 where the box misses the mask)."""
        x0 = int(box.x_px / self.downsample)
        y0 = int(box.y_px / self.downsample)
        x1 = max(x0 + 1, int(np.ceil((box.x_px + box.size_px) / self.downsample)))
        y1 = max(y0 + 1, int(np.ceil((box.y_px + box.size_px) / self.downsample)))
        window = self.mask[y0:y1, x0:x1]
        return float(window.mean()) if window.size else 0.0

    def area_mm2(self, mpp: float | None) -> float | None:
        """Tissue area in mm², or ``None`` without an MPP."""
        if not mpp:
            return None
        px_um = self.downsample * mpp
        return float(self.mask.sum()) * px_um * px_um / 1e6


class Coverage:
    """How much of a slide's tissue a set of patch boxes covers, counted at the tissue mask's
    resolution: a mask pixel is covered when its centre lies in a box, so overlapping boxes
    count each tissue pixel once."""

    def __init__(self, tissue: TissueMask) -> None:
        self._tissue = tissue
        self._covered = np.zeros_like(tissue.mask, dtype=bool)

    def add(self, box: PatchBox) -> None:
        """Count the pixels ``box`` accounts for (its owned box, else its whole box)."""
        ds = self._tissue.downsample
        x0, y0, x1, y1 = box.own or (
            box.x_px,
            box.y_px,
            box.x_px + box.size_px,
            box.y_px + box.size_px,
        )
        r0, c0 = (max(0, int(np.ceil(v / ds - 0.5))) for v in (y0, x0))
        r1, c1 = (int(np.ceil(v / ds - 0.5)) for v in (y1, x1))
        self._covered[r0:r1, c0:c1] = True

    def fraction(self) -> float | None:
        """Covered tissue over detected tissue; None for a slide without tissue."""
        tissue = int(self._tissue.mask.sum())
        if tissue == 0:
            return None
        return float((self._covered & self._tissue.mask).sum()) / tissue


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a float array with values in [0, 1]."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0.5
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = total - w0
    m0 = np.cumsum(hist * centres)
    mean0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mean1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between)) + 1])  # class 0 holds bins up to this edge


def resolve_method(rgb: np.ndarray, method: str) -> str:
    """``method``, or for ``auto`` the method this slide's background calls for."""
    if method != "auto":
        return method
    value = rgb[..., :3].max(axis=2)
    h, w = value.shape
    b = max(1, int(min(h, w) * BORDER_FRACTION))
    border = np.concatenate(
        [value[:b].ravel(), value[-b:].ravel(), value[:, :b].ravel(), value[:, -b:].ravel()]
    )
    return "fluorescence" if np.median(border) < DARK_BACKGROUND else "brightfield"


@dataclass(frozen=True)
class TissueRule:
    """What is tissue on one slide: the method and the threshold its survey image set. Applied
    to a full-resolution patch, it gives that patch's tissue pixels by the slide's own rule."""

    method: str
    level: float

    @property
    def background(self) -> int:
        """The grey level of the slide's glass: what patches running past its edge are padded
        with (white for brightfield, black for fluorescence), so padding is never tissue."""
        return 0 if self.method == "fluorescence" else 255

    def mask(self, rgb: np.ndarray) -> np.ndarray:
        """Boolean tissue mask of an ``H x W x 3`` uint8 image."""
        rgb = rgb[..., :3]
        value = rgb.max(axis=2)  # uint8 throughout where possible: masks can be 4096 px across
        if self.method == "fluorescence":
            return value > self.level
        saturation = _saturation(rgb, value)
        return (saturation > self.level) & (value >= MIN_BRIGHTFIELD_VALUE)


def _saturation(rgb: np.ndarray, value: np.ndarray) -> np.ndarray:
    saturation = (value - rgb.min(axis=2)).astype(np.float32)
    np.divide(saturation, value, out=saturation, where=value > 0)
    return saturation


def tissue_rule(rgb: np.ndarray, method: str = "brightfield") -> TissueRule:
    """The rule an ``H x W x 3`` uint8 image sets: Otsu's threshold of its saturation (clamped;
    brightfield) or of its brightness (fluorescence)."""
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {rgb.shape}")
    rgb = rgb[..., :3]
    method = resolve_method(rgb, method)
    value = rgb.max(axis=2)
    if method == "fluorescence":
        level = otsu_threshold(value.ravel() / np.float32(255.0)) * 255.0
        return TissueRule(method, max(level, MIN_FLUORESCENCE_VALUE))
    if method != "brightfield":
        raise ValueError(f"unknown tissue method {method!r}")
    lo, hi = SATURATION_BOUNDS
    return TissueRule(method, min(max(otsu_threshold(_saturation(rgb, value).ravel()), lo), hi))


def tissue_mask(rgb: np.ndarray, method: str = "brightfield") -> np.ndarray:
    """Boolean tissue mask of an ``H x W x 3`` uint8 image, by the rule it sets itself."""
    return tissue_rule(rgb, method).mask(rgb)
