"""Class regions for QuPath: a stitched mask's classes as merged polygons, holes kept.

Each band of the mask is traced with rasterio (GDAL's polygonize: polygons along pixel edges,
in level-0 coordinates through the band's affine transform), and each class's polygons are
merged across band seams with shapely's ``unary_union``. A region smaller than
``--qupath_min_region_um2`` is left out of the file (never out of the mask or the areas).
Each region is a QuPath annotation with its class (name and colour) and measurements.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from transforms.io.schemas import file_name
from transforms.slides.heatmaps import palette_of
from transforms.slides.masks import BAND_ROWS, Band, MaskGrid

MIN_REGION_UM2 = 100.0
"""Default of ``--qupath_min_region_um2``: about one nucleus; specks below it are left out."""


def regions_uri(folder: str, slide_id: str, model_name: str) -> str:
    return f"{folder.rstrip('/')}/{file_name(slide_id, model_name, '.geojson')}"


def class_regions(grid: MaskGrid, bands: Sequence[Band], n_classes: int) -> list[Any]:
    """Per class, its merged (Multi)Polygon in level-0 pixel coordinates (None: no pixels)."""
    import shapely
    from rasterio.features import shapes
    from rasterio.transform import Affine
    from shapely.geometry import shape

    parts: list[list[Any]] = [[] for _ in range(n_classes)]
    for band in bands:
        pixels = band.pixels(grid)
        top = band.index * BAND_ROWS * grid.py
        transform = Affine(grid.px, 0.0, 0.0, 0.0, grid.py, top)
        for geometry, value in shapes(pixels, mask=pixels > 0, transform=transform):
            c = int(value) - 1
            if 0 <= c < n_classes:
                parts[c].append(shape(geometry))
    return [shapely.unary_union(p) if p else None for p in parts]


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
        for c, merged in enumerate(class_regions(grid, bands, n_classes)):
            if merged is None:
                continue
            colour = [int(v) for v in palette[c % len(palette)]]
            for polygon in getattr(merged, "geoms", [merged]):
                if polygon.area < min_px2:
                    continue
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
