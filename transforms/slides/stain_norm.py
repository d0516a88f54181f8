"""Stain normalisation of a model's patches towards a reference stain: Macenko or Reinhard.

Both take the slide's statistics from the stain basis its survey estimates already
(``stains.StainBasis``: stain vectors, 99th-percentile concentrations, CIELAB mean and std of the
tissue), so normalising a patch costs no second pass over the slide, and every patch of a slide
is mapped alike, whichever worker reads it.

* **Macenko** (Macenko et al., ISBI 2009): a pixel's optical density is split into hematoxylin
  and eosin concentrations by the slide's stain vectors; each concentration is scaled so that the
  slide's 99th percentile becomes the reference's; the pixel is rebuilt from the reference's
  stain vectors. Slide statistics are taken over the stained tissue pixels of the survey image
  (not the whole image, so a slide's share of background does not change its scaling).
* **Reinhard** (Reinhard et al., IEEE CG&A 2001): each CIELAB channel is shifted and scaled
  from the slide's tissue mean and std to the reference's.

The reference comes from the model's recipe (``stain_reference``: an object of these fields, or
the URI of one, or of a reference image), or from ``--stain_reference NAME=URI``. Without one,
both default to the H&E of Macenko's reference code (as torchstain ships it); for Reinhard, its
CIELAB statistics over the colours its stains make (``reinhard_default``). The reference is
resolved at launch and travels in the model spec, so workers never read it.
"""

from __future__ import annotations

import io as _io
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from transforms.core.errors import ConfigError
from transforms.slides.stains import (
    StainBasis,
    basis_of,
    estimate_stains,
    lab_to_rgb,
    optical_density,
    rgb_to_lab,
)

_LN10 = math.log(10.0)
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass(frozen=True)
class StainReference:
    """The stain a model's patches are normalised towards (optical densities in log10 units)."""

    source: str
    """Where it came from, said in the runs row."""
    h: tuple[float, float, float] | None = None
    e: tuple[float, float, float] | None = None
    max_c: tuple[float, float] | None = None
    io: float = 240.0
    lab_mean: tuple[float, float, float] | None = None
    lab_std: tuple[float, float, float] | None = None

    def said(self, method: str) -> str:
        """``macenko towards <source> (H ..., E ..., max 99th-pct concentrations ...)``."""

        def fmt(values: Any) -> str:
            return ",".join(f"{v:.4g}" for v in values)

        if method == "macenko":
            assert self.h and self.e and self.max_c
            facts = f"H {fmt(self.h)}; E {fmt(self.e)}; max_c {fmt(self.max_c)}; io {self.io:g}"
        else:
            assert self.lab_mean and self.lab_std
            facts = f"LAB mean {fmt(self.lab_mean)}; std {fmt(self.lab_std)}"
        return f"{method} towards {self.source} ({facts})"


MACENKO_DEFAULT = StainReference(
    source="Macenko's H&E reference (torchstain's HERef/maxCRef)",
    h=(0.5626, 0.7201, 0.4062),
    e=(0.2159, 0.8012, 0.5581),
    max_c=(1.9705 / _LN10, 1.0308 / _LN10),  # natural-log concentrations, in log10 units
    io=240.0,
)
"""The reference of Macenko's MATLAB code, as torchstain ships it (natural-log units there)."""


def reinhard_default() -> StainReference:
    """Macenko's reference H&E, rendered: CIELAB mean and std of the colours its two stains make
    at every pair of concentrations from 0 to its 99th percentiles (a 64 x 64 grid)."""
    ref = MACENKO_DEFAULT
    assert ref.h and ref.e and ref.max_c
    h, e = np.meshgrid(*(np.linspace(0.0, m, 64, dtype=np.float32) for m in ref.max_c))
    od = h[..., None] * np.asarray(ref.h, np.float32) + e[..., None] * np.asarray(ref.e, np.float32)
    rgb = np.clip(np.rint(ref.io * np.power(10.0, -od)), 0, 255).astype(np.uint8)
    lab = rgb_to_lab(rgb).reshape(-1, 3)
    return StainReference(
        source="Macenko's H&E reference, rendered at its concentrations",
        lab_mean=tuple(float(v) for v in lab.mean(axis=0)),  # type: ignore[arg-type]
        lab_std=tuple(float(v) for v in lab.std(axis=0)),  # type: ignore[arg-type]
    )


_FIELDS = {"h", "e", "max_c", "io", "lab_mean", "lab_std"}


def reference_of_basis(basis: StainBasis, source: str) -> StainReference:
    """A reference stain taken from a stain basis (of a reference image)."""
    return StainReference(
        source, basis.h_od, basis.e_od, basis.max_c, basis.io, basis.lab_mean, basis.lab_std
    )


def reference_of_image(rgb: np.ndarray, source: str) -> StainReference:
    """The reference stain of an H&E image: its tissue (brightfield rule) and its stain basis."""
    from transforms.slides.tissue import tissue_rule

    mask = tissue_rule(rgb, "brightfield").mask(rgb)
    return reference_of_basis(estimate_stains(rgb, mask), source)


def resolve_reference(method: str, value: Any, where: str) -> StainReference | None:
    """The reference of ``method`` from ``value`` (a recipe's object; a URI of a JSON object or
    of an image; None: the method's default). ``ConfigError`` naming ``where`` otherwise."""
    if method == "none":
        return None
    if value is None:
        return MACENKO_DEFAULT if method == "macenko" else reinhard_default()
    if isinstance(value, str):
        value = _read_reference(value, where)
        if isinstance(value, StainReference):
            return _check(method, value, where)
    if not isinstance(value, dict) or set(value) - _FIELDS - {"source"}:
        unknown = sorted(set(value) - _FIELDS - {"source"}) if isinstance(value, dict) else []
        raise ConfigError(
            f"`{where}`: a stain reference is an object of {', '.join(sorted(_FIELDS))}"
            + (f"; unknown field {', '.join(unknown)}" if unknown else "")
        )
    try:
        reference = StainReference(
            source=str(value.get("source") or where),
            h=_floats(value, "h", 3),
            e=_floats(value, "e", 3),
            max_c=_floats(value, "max_c", 2),
            io=float(value.get("io", 240.0)),
            lab_mean=_floats(value, "lab_mean", 3),
            lab_std=_floats(value, "lab_std", 3),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"`{where}`: {exc}") from None
    return _check(method, reference, where)


def _floats(value: dict[str, Any], field: str, n: int) -> Any:
    values = value.get(field)
    if values is None:
        return None
    out = tuple(float(v) for v in values)
    if len(out) != n or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{field}: expected {n} finite numbers, got {values!r}")
    return out


def _check(method: str, ref: StainReference, where: str) -> StainReference:
    if method == "macenko":
        if not (ref.h and ref.e and ref.max_c) or min(ref.max_c) <= 0:
            raise ConfigError(f"`{where}`: a Macenko reference needs h, e and max_c (> 0)")
        if not 1.0 <= ref.io <= 255.0:
            raise ConfigError(f"`{where}`: io must be a background intensity in 1..255")
    elif not (ref.lab_mean and ref.lab_std) or min(ref.lab_std) <= 0:
        raise ConfigError(f"`{where}`: a Reinhard reference needs lab_mean and lab_std (> 0)")
    return ref


def _read_reference(uri: str, where: str) -> dict[str, Any] | StainReference:
    from transforms.core.remote_io import open_uri

    try:
        with open_uri(uri) as f:
            data = f.read()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"`{where}`: cannot read {uri}: {exc}") from None
    if uri.lower().endswith(_IMAGE_SUFFIXES):
        from PIL import Image

        try:
            rgb = np.asarray(Image.open(_io.BytesIO(data)).convert("RGB"))
            return reference_of_image(rgb, uri)
        except Exception as exc:  # noqa: BLE001 - any unreadable image is a config error
            raise ConfigError(f"`{where}`: {uri} is not a usable H&E image: {exc}") from None
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise ConfigError(f"`{where}`: {uri} is not JSON ({exc})") from None
    if isinstance(value, dict):
        value.setdefault("source", uri)
    return value


def normalise(
    pixels: np.ndarray, basis: StainBasis, method: str, ref: StainReference
) -> np.ndarray:
    """``H x W x 3`` uint8 RGB of a slide with stain ``basis``, normalised towards ``ref``."""
    if method == "macenko":
        assert ref.h and ref.e and ref.max_c
        od = optical_density(pixels, basis.io)
        h = (od @ np.asarray(basis.h_vec, np.float32)) * np.float32(ref.max_c[0] / basis.max_c[0])
        e = (od @ np.asarray(basis.e_vec, np.float32)) * np.float32(ref.max_c[1] / basis.max_c[1])
        rebuilt = h[..., None] * np.asarray(ref.h, np.float32) + e[..., None] * np.asarray(
            ref.e, np.float32
        )
        rgb = np.float32(ref.io) * np.power(np.float32(10.0), -rebuilt)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    if method == "reinhard":
        assert ref.lab_mean and ref.lab_std
        lab = rgb_to_lab(pixels)
        scale = np.asarray(ref.lab_std, np.float32) / np.asarray(basis.lab_std, np.float32)
        lab = (lab - np.asarray(basis.lab_mean, np.float32)) * scale + np.asarray(
            ref.lab_mean, np.float32
        )
        return lab_to_rgb(lab)
    raise ValueError(f"unknown stain normalisation {method!r}")


def normalised_basis(
    rgb: np.ndarray, tissue: np.ndarray, basis: StainBasis, method: str, ref: StainReference
) -> StainBasis:
    """The stain basis of a slide's survey image ``rgb`` once normalised: what EHO channels of
    its normalised patches are scaled by (Macenko: the reference's stain vectors, so EHO
    separates exactly the stains it rebuilt; Reinhard: estimated again)."""
    out = normalise(rgb, basis, method, ref)
    if method == "macenko":
        assert ref.h and ref.e
        return basis_of(np.asarray(ref.h), np.asarray(ref.e), ref.io, out, tissue)
    return estimate_stains(out, tissue)
