"""Class regions for QuPath: a stitched mask's classes as merged polygons, holes kept.

Each band of the mask is traced with rasterio (GDAL's polygonize: polygons along pixel edges,
in level-0 coordinates through the band's affine transform), and the polygons that touch a band
seam are merged across it with shapely's ``unary_union``. A region smaller than
``--qupath_min_region_um2`` is left out of the file (never out of the mask or the areas); such
specks are cleared before tracing, so a noisy mask costs no more than a clean one.
Each region is a QuPath annotation with its class (name and colour) and measurements.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from transforms.io.schemas import file_name
from transforms.slides.heatmaps import palette_of
from transforms.slides.masks import BAND_ROWS, Band, MaskGrid

MIN_REGION_UM2 = 100.0
"""Default of ``--qupath_min_region_um2``: about one nucleus; specks below it are left out."""


def regions_uri(folder: str, slide_id: str, model_name: str) -> str:
    return f"{folder.rstrip('/')}/{file_name(slide_id, model_name, '.geojson')}"


def class_regions(
    grid: MaskGrid, bands: Sequence[Band], n_classes: int, min_px2: float = 0.0
) -> Iterator[tuple[int, Any]]:
    """Each class region of the mask as ``(class, Polygon)`` in level-0 pixel coordinates,
    holes kept, leaving out regions under ``min_px2`` level-0 px².

    A band's regions that touch neither of its seams are final as traced; those that do are
    merged with their neighbours across the seam (``unary_union``) at the end, so only seam
    regions are held. Small regions are dropped before tracing (connected components,
    4-connected as GDAL traces them, counted at the mask's pixels), so a speckled mask costs
    what its real regions cost."""
    import shapely
    from rasterio.features import shapes
    from rasterio.transform import Affine
    from shapely.geometry import shape

    min_pixels = min_px2 / (grid.px * grid.py)
    seams: list[list[Any]] = [[] for _ in range(n_classes)]
    last = max((band.index for band in bands), default=0)
    for band in bands:
        pixels = _without_specks(band.pixels(grid), n_classes, min_pixels, band.index, last)
        top = band.index * BAND_ROWS * grid.py
        bottom = top + len(pixels) * grid.py
        transform = Affine(grid.px, 0.0, 0.0, 0.0, grid.py, top)
        for geometry, value in shapes(pixels, mask=pixels > 0, transform=transform):
            c = int(value) - 1
            if not 0 <= c < n_classes:
                continue
            polygon = shape(geometry)
            _, y0, _, y1 = polygon.bounds
            if (band.index > 0 and y0 <= top) or (band.index < last and y1 >= bottom):
                seams[c].append(polygon)
            elif polygon.area >= min_px2:
                yield c, polygon
    for c, parts in enumerate(seams):
        if parts:
            merged = shapely.unary_union(parts)
            for polygon in getattr(merged, "geoms", [merged]):
                if polygon.area >= min_px2:
                    yield c, polygon


def _without_specks(
    pixels: np.ndarray, n_classes: int, min_pixels: float, index: int, last: int
) -> np.ndarray:
    """``pixels`` with each class's connected regions under ``min_pixels`` cleared, except
    those touching a seam the band shares with another (they may be larger across it)."""
    if min_pixels <= 1:
        return pixels
    from scipy import ndimage

    out = pixels.copy()
    for c in range(1, n_classes + 1):
        labels, n = ndimage.label(pixels == c)
        if n == 0:
            continue
        small = np.bincount(labels.ravel(), minlength=n + 1) < min_pixels
        small[0] = False
        if index > 0:
            small[labels[0]] = False
        if index < last:
            small[labels[-1]] = False
        out[small[labels]] = 0
    return out


def write_regions(
    uri: str, grid: MaskGrid, bands: Sequence[Band], spec: Any, min_region_um2: float
) -> int:
    """Write the mask's class regions as QuPath GeoJSON; returns how many were written."""
    from transforms.core.remote_io import open_uri

    n_classes = len(spec.class_names) or max(
        (int(b.counts.nonzero()[0].max(initial=0)) for b in bands), default=0
    )
    palette = palette_of(spec.class_colours)
    um2_per_px2 = grid.slide_mpp**2 if grid.slide_mpp else None
    min_px2 = min_region_um2 / um2_per_px2 if um2_per_px2 else 0.0
    n = 0
    with open_uri(uri, "w", auto_mkdir=True) as f:
        f.write('{"type": "FeatureCollection", "features": [\n')
        for c, polygon in class_regions(grid, bands, n_classes, min_px2):
            colour = [int(v) for v in palette[c % len(palette)]]
            feature = _feature(polygon, spec.class_name(c), colour, um2_per_px2)
            f.write(("" if n == 0 else ",\n") + json.dumps(feature))
            n += 1
        f.write("\n]}\n")
    return n


def _feature(polygon: Any, name: str, colour: list[int], um2_per_px2: float | None) -> dict:
    from shapely.geometry import mapping

    measurements = {"Area px^2": round(float(polygon.area), 1)}
    if um2_per_px2:
        measurements["Area µm^2"] = round(float(polygon.area) * um2_per_px2, 1)
    return {
        "type": "Feature",
        "geometry": mapping(polygon),
        "properties": {
            "objectType": "annotation",
            "classification": {"name": name, "color": colour},
            "measurements": measurements,
        },
    }
