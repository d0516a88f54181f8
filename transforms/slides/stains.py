"""A slide's H&E stain basis, estimated once per slide, and the EHO image models trained on it take.

Some models do not take RGB but stain channels: the lavlab-shell epithelium/stroma net takes EHO
(Eosin, Hematoxylin, optical density), each scaled 0-1 by the slide's own 1st-99th percentiles.
Those need slide-level statistics, so they are estimated where the slide is already seen whole:
the survey's low-resolution read, from which the tissue mask is made. The basis (a few floats)
travels with the slide's work units to the patches, so every patch of a slide is transformed
alike, whichever worker reads it.

The estimate is Macenko's (2009): optical densities of tissue pixels, their plane of largest
variance, the extreme angles in it (1st and 99th percentile) as the two stain vectors,
hematoxylin being the one closer to the usual H&E hematoxylin colour. Background intensity is
the mean of the background pixels (200-255, else 240), as lavlab-shell does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transforms.core.errors import SlideError

HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
EOSIN = np.array([0.07, 0.99, 0.11])
OD_THRESHOLD = 0.15
"""Pixels with an optical density under this in any channel are too clear to show a stain."""
MAX_PIXELS = 1 << 20
MIN_TISSUE_PIXELS = 500


@dataclass(frozen=True)
class StainBasis:
    """Per slide: background intensity, the rows of the inverse stain matrix that give eosin and
    hematoxylin concentrations, and the 1st/99th percentiles that scale each EHO channel."""

    io: float
    e_vec: tuple[float, float, float]
    h_vec: tuple[float, float, float]
    e_range: tuple[float, float]
    h_range: tuple[float, float]
    od_range: tuple[float, float]
    h_od: tuple[float, float, float] = (0.0, 0.0, 0.0)
    e_od: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """The unit optical-density vectors of hematoxylin and eosin (log10 units)."""
    max_c: tuple[float, float] = (1.0, 1.0)
    """The 99th percentile of the hematoxylin and eosin concentrations over the tissue pixels:
    what Macenko normalisation scales to its reference's (``stain_norm.py``)."""
    lab_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    lab_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """CIELAB mean and standard deviation of the tissue pixels (Reinhard normalisation)."""


def _od(rgb: np.ndarray, io: float) -> np.ndarray:
    return -np.log10(np.clip(rgb.astype(np.float32), 1.0, io) / np.float32(io))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) or 1.0)


def basis_of(
    h: np.ndarray, e: np.ndarray, io: float, rgb: np.ndarray, tissue: np.ndarray | None = None
) -> StainBasis:
    """The basis of stain vectors ``h`` and ``e``, its percentiles measured on ``rgb`` (and its
    normalisation statistics on the pixels of ``tissue``, all of them if None).

    The third column of the stain matrix is orthogonal to the other two, so the inverse's first
    two rows are the least-squares (pseudo-inverse) concentrations of the two stains."""
    matrix = np.stack([_unit(h), _unit(e), _unit(np.cross(h, e))], axis=1)
    inverse = np.linalg.pinv(matrix)
    od = _od(rgb.reshape(-1, 3), io)
    e_conc, h_conc, mean_od = od @ inverse[1], od @ inverse[0], od.mean(axis=1)
    inside = np.ones(len(od), bool) if tissue is None else tissue.reshape(-1)
    if not inside.any():
        inside = np.ones(len(od), bool)
    lab = rgb_to_lab(rgb.reshape(-1, 3)[inside])

    def span(values: np.ndarray) -> tuple[float, float]:
        lo, hi = (float(v) for v in np.percentile(values, (1, 99)))
        return (lo, hi) if hi > lo + 1e-8 else (0.0, 1.0)

    return StainBasis(
        float(io),
        tuple(float(v) for v in inverse[1]),  # type: ignore[arg-type]
        tuple(float(v) for v in inverse[0]),  # type: ignore[arg-type]
        span(e_conc),
        span(h_conc),
        span(mean_od),
        _three(_unit(h)),
        _three(_unit(e)),
        (
            max(float(np.percentile(h_conc[inside], 99)), 1e-3),
            max(float(np.percentile(e_conc[inside], 99)), 1e-3),
        ),
        _three(lab.mean(axis=0)),
        _three(np.maximum(lab.std(axis=0), 1e-3)),
    )


def _three(values: np.ndarray) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


_SRGB_TO_XYZ = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_D65 = np.array([0.950456, 1.0, 1.088754])


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """``... x 3`` uint8 sRGB -> CIELAB (D65), float32: L in 0..100."""
    c = rgb.astype(np.float32) / 255.0
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = linear @ _SRGB_TO_XYZ.T.astype(np.float32) / _D65.astype(np.float32)
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    lab = np.empty_like(f)
    lab[..., 0] = 116.0 * f[..., 1] - 16.0
    lab[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return lab


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB (D65) -> ``... x 3`` uint8 sRGB, out-of-gamut colours clipped."""
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = np.where(f > 0.206893, f**3, (f - 16.0 / 116.0) / 7.787) * _D65.astype(np.float32)
    linear = np.clip(xyz @ np.linalg.inv(_SRGB_TO_XYZ).T.astype(np.float32), 0.0, 1.0)
    c = np.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear)
    return np.clip(np.rint(c * 255.0), 0, 255).astype(np.uint8)


def estimate_stains(rgb: np.ndarray, tissue: np.ndarray) -> StainBasis:
    """The stain basis of a slide from its low-resolution image ``rgb`` and tissue mask.

    Raises ``SlideError`` when too few tissue pixels carry stain to estimate it.
    """
    background = rgb[~tissue]
    background = background[~(background == 255).all(axis=1)]
    io = float(np.clip(background.mean(), 200, 255)) if len(background) >= 100 else 240.0
    pixels = rgb[tissue]
    if len(pixels) > MAX_PIXELS:
        pixels = pixels[np.random.default_rng(0).choice(len(pixels), MAX_PIXELS, replace=False)]
    od = _od(pixels, io)
    od = od[(od > OD_THRESHOLD).all(axis=1)]
    if len(od) < MIN_TISSUE_PIXELS:
        raise SlideError(
            f"only {len(od)} stained tissue pixels in the slide's survey image: too few to "
            "estimate its H&E stain basis (needed by --model_input NAME=eho)"
        )
    _, vectors = np.linalg.eigh(np.cov(od.T))
    plane = vectors[:, 1:3]  # the two directions of largest variance
    projected = od @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    lo, hi = np.percentile(angles, (1, 99))
    first = plane @ np.array([np.cos(lo), np.sin(lo)])
    second = plane @ np.array([np.cos(hi), np.sin(hi)])
    first, second = (v if v.sum() >= 0 else -v for v in (first, second))
    if _unit(first) @ _unit(HEMATOXYLIN) >= _unit(second) @ _unit(HEMATOXYLIN):
        h, e = first, second
    else:
        h, e = second, first
    return basis_of(h, e, io, rgb, tissue)


def optical_density(pixels: np.ndarray, io: float) -> np.ndarray:
    """``... x 3`` uint8 RGB -> optical density (log10) against background intensity ``io``."""
    return _od(pixels, io)


def eho(pixels: np.ndarray, basis: StainBasis) -> np.ndarray:
    """``H x W x 3`` uint8 RGB -> ``H x W x 3`` uint8 EHO: eosin, hematoxylin and mean optical
    density, each scaled 0-255 between the slide's 1st and 99th percentiles."""
    od = _od(pixels, basis.io)
    channels = (
        od @ np.asarray(basis.e_vec, np.float32),
        od @ np.asarray(basis.h_vec, np.float32),
        od.mean(axis=2),
    )
    out = np.empty(pixels.shape[:2] + (3,), np.uint8)
    for c, (values, (lo, hi)) in enumerate(
        zip(channels, (basis.e_range, basis.h_range, basis.od_range), strict=True)
    ):
        out[..., c] = (np.clip((values - lo) / (hi - lo + 1e-8), 0, 1) * 255).astype(np.uint8)
    return out


def reference_basis() -> StainBasis:
    """The basis of the usual H&E colours, scaled on a synthetic H&E gradient: what a model's
    setup check batch is transformed with before any slide is seen."""
    weights = np.linspace(0, 1.5, 64, dtype=np.float32)[:, None]
    od = weights * _unit(HEMATOXYLIN) + weights[::-1] * _unit(EOSIN)
    rgb = np.clip(240 * 10 ** (-od), 0, 255).astype(np.uint8)[None]
    return basis_of(HEMATOXYLIN, EOSIN, 240.0, rgb)
