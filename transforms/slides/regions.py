"""Class regions for QuPath: a stitched mask's classes as merged polygons, holes kept.

Each band of the mask is traced with rasterio (GDAL's polygonize: polygons along pixel edges,
in level-0 coordinates through the band's affine transform), and the polygons that touch a band
seam are merged across it with shapely's ``unary_union``. A region smaller than
``--qupath_min_region_um2`` is left out of the file (never out of the mask or the areas): such
specks are sieved into their surroundings before tracing, so a noisy mask costs no more than a
clean one.
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


Region = tuple[int, dict, float]
"""A class region: its class, its GeoJSON polygon (level-0 pixel coordinates), its area."""


def class_regions(
    grid: MaskGrid, bands: Sequence[Band], n_classes: int, min_px2: float = 0.0
) -> Iterator[Region]:
    """Each class region of the mask, holes kept (holes under ``min_px2`` filled), leaving out
    regions under ``min_px2`` level-0 px² (specks of one class inside another take their
    surroundings' class, as GDAL's sieve does: the regions are for looking at; the mask and
    the areas keep every pixel).

    A band's regions that touch neither of its seams are final as traced (GDAL's GeoJSON, its
    areas by the shoelace formula in numpy); those that do are merged with their neighbours
    across the seam (shapely's ``unary_union``) at the end, so only seam regions are held.
    Small regions are sieved before tracing (connected components, 4-connected as GDAL traces
    them), so a speckled mask costs what its real regions cost."""
    import shapely
    from rasterio.features import shapes
    from rasterio.transform import Affine
    from shapely.geometry import mapping, shape

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
            outer = np.asarray(geometry["coordinates"][0])
            y0, y1 = outer[:, 1].min(), outer[:, 1].max()
            if (band.index > 0 and y0 <= top) or (band.index < last and y1 >= bottom):
                rings = _kept_holes(geometry["coordinates"], min_px2)  # a cheaper union
                seams[c].append(shape({"type": "Polygon", "coordinates": rings}))
            elif (region := _filled(geometry["coordinates"], min_px2)) is not None:
                yield c, *region
    for c, parts in enumerate(seams):
        if parts:
            merged = shapely.unary_union(parts)
            for polygon in getattr(merged, "geoms", [merged]):
                region = _filled(mapping(polygon)["coordinates"], min_px2)
                if region is not None:
                    yield c, *region


def _area(ring: Any) -> float:
    xy = np.asarray(ring, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    return float(abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2)


def _kept_holes(rings: Sequence[Any], min_px2: float) -> list[Any]:
    """The outer ring and the holes of at least ``min_px2``."""
    return [rings[0], *(ring for ring in rings[1:] if _area(ring) >= min_px2)]


def _filled(rings: Sequence[Any], min_px2: float) -> tuple[dict, float] | None:
    """A polygon's rings with holes under ``min_px2`` filled, and its area; None if its outer
    ring encloses less than ``min_px2``."""
    outer = _area(rings[0])
    if outer < min_px2 or outer == 0:
        return None
    kept = _kept_holes(rings, min_px2)
    polygon = {"type": "Polygon", "coordinates": kept}
    return polygon, outer - sum(_area(ring) for ring in kept[1:])


def _without_specks(
    pixels: np.ndarray, n_classes: int, min_pixels: float, index: int, last: int
) -> np.ndarray:
    """``pixels`` with each connected region under ``min_pixels`` (of a class, or of background
    inside tissue) given the value of the nearest pixel outside such specks, as GDAL's sieve
    does, except those touching a seam the band shares with another (they may be larger
    across it)."""
    if min_pixels <= 1:
        return pixels
    from scipy import ndimage

    specks = np.zeros(pixels.shape, bool)
    for value in range(n_classes + 1):
        labels, n = ndimage.label(pixels == value)
        if n == 0:
            continue
        small = np.bincount(labels.ravel(), minlength=n + 1) < min_pixels
        small[0] = False
        if index > 0:
            small[labels[0]] = False
        if index < last:
            small[labels[-1]] = False
        specks |= small[labels]
    if not specks.any() or specks.all():
        return pixels if not specks.all() else np.zeros_like(pixels)
    nearest = ndimage.distance_transform_edt(specks, return_distances=False, return_indices=True)
    return pixels[tuple(nearest)]


def write_regions(
    uri: str,
    grid: MaskGrid,
    bands: Sequence[Band],
    spec: Any,
    n_classes: int,
    min_region_um2: float,
) -> int:
    """Write the mask's class regions as QuPath GeoJSON; returns how many were written."""
    from transforms.core.remote_io import open_uri

    palette = palette_of(spec.class_colours)
    um2_per_px2 = grid.slide_mpp**2 if grid.slide_mpp else None
    min_px2 = min_region_um2 / um2_per_px2 if um2_per_px2 else 0.0
    n = 0
    with open_uri(uri, "w", auto_mkdir=True) as f:
        f.write('{"type": "FeatureCollection", "features": [\n')
        for c, polygon, area in class_regions(grid, bands, n_classes, min_px2):
            colour = [int(v) for v in palette[c % len(palette)]]
            feature = _feature(polygon, area, spec.class_name(c), colour, um2_per_px2)
            f.write(("" if n == 0 else ",\n") + json.dumps(feature))
            n += 1
        f.write("\n]}\n")
    return n


def _feature(
    polygon: dict, area: float, name: str, colour: list[int], um2_per_px2: float | None
) -> dict:
    measurements = {"Area px^2": round(area, 1)}
    if um2_per_px2:
        measurements["Area µm^2"] = round(area * um2_per_px2, 1)
    return {
        "type": "Feature",
        "geometry": polygon,
        "properties": {
            "objectType": "annotation",
            "classification": {"name": name, "color": colour},
            "measurements": measurements,
        },
    }
