"""What a slide manifest's and a patch manifest's rows must hold (``io.manifests.RowRule``).

The slide pipeline hands these rules to ``ReadManifest``; ``io`` knows no slide rule. A bad row
is a dead letter at ``ReadManifest`` naming the row, the column and what is wrong.
"""

from __future__ import annotations

from typing import Any

from transforms.core.errors import ManifestError
from transforms.io.manifests import (
    RowRule,
    extra_columns,
    integer_cell,
    is_missing,
    number_cell,
    resolve_uri,
    text_cell,
)
from transforms.slides.geometry import MAX_MPP, MIN_MPP, TISSUE_METHODS, plausible_mpp

_RESERVED = ("slide_id", "uri", "mpp", "tissue_method")
MAX_URI_CHARS = 8192
"""A slide URI longer than this is a dead letter (object names are at most 1,024 bytes)."""


def _mpp(row: dict[str, Any]) -> float | None:
    """The row's ``mpp``, checked by the slides' one plausibility rule (``plausible_mpp``)."""
    if is_missing(row.get("mpp")):
        return None
    mpp = number_cell(row, "mpp")
    if not plausible_mpp(mpp):
        hint = ""
        if 0 < mpp < MIN_MPP and plausible_mpp(mpp * 1000):
            hint = f" (written in mm per pixel? {mpp} mm is {mpp * 1000:g} µm)"
        elif mpp > MAX_MPP and plausible_mpp(mpp / 1000):
            hint = f" (written in nm per pixel? {mpp} nm is {mpp / 1000:g} µm)"
        raise ManifestError(
            f"row {row.get('_row')}: column 'mpp' is {mpp:g} µm/px, outside the plausible "
            f"{MIN_MPP:g}-{MAX_MPP:g} µm/px of a slide{hint}"
        )
    return mpp


def slide_row(row: dict[str, Any], manifest_uri: str = "") -> dict[str, Any]:
    """A clean slide row: ``slide_id, uri, mpp, tissue_method, metadata, row``."""
    method = None
    if not is_missing(row.get("tissue_method")):
        method = text_cell(row, "tissue_method").lower()
        if method not in TISSUE_METHODS:
            raise ManifestError(
                f"row {row.get('_row')}: column 'tissue_method' must be one of "
                f"{', '.join(TISSUE_METHODS)}, got {row.get('tissue_method')!r}"
            )
    uri = text_cell(row, "uri")
    if len(uri) > MAX_URI_CHARS:
        raise ManifestError(
            f"row {row.get('_row')}: column 'uri' has {len(uri):,} characters, over the "
            f"{MAX_URI_CHARS:,} limit"
        )
    return {
        "slide_id": text_cell(row, "slide_id"),
        "uri": resolve_uri(uri, manifest_uri),
        "mpp": _mpp(row),
        "tissue_method": method,
        "metadata": extra_columns(row, _RESERVED),
        "row": row["_row"],
    }


def patch_row(row: dict[str, Any], manifest_uri: str = "") -> dict[str, Any]:
    """A clean patch row: ``slide_id, x_px, y_px, size_px, level, row``."""
    return {
        "slide_id": text_cell(row, "slide_id"),
        "x_px": integer_cell(row, "x_px", 0),
        "y_px": integer_cell(row, "y_px", 0),
        "size_px": integer_cell(row, "size_px", 1),
        "level": 0 if is_missing(row.get("level")) else integer_cell(row, "level", 0),
        "row": row["_row"],
    }


SLIDE_ROWS = RowRule("slides", "slide_id", ("slide_id", "uri"), slide_row)
PATCH_ROWS = RowRule("patches", None, ("slide_id", "x_px", "y_px", "size_px"), patch_row)
