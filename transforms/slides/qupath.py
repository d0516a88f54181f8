"""QuPath GeoJSON per slide and model: each exported patch a detection a pathologist can open.

``<artifacts>/qupath/<run_id>/<slide_id>__<model>.geojson`` is a FeatureCollection. Each patch is
a square polygon in level-0 pixel coordinates (QuPath's image coordinates) with
``objectType: "detection"``, its top class as the classification (name and colour), and its
class probabilities (classification) or tissue shares per class (segmentation) as measurements.
Only patches whose top value reaches ``--qupath_min_prob`` are exported, so files stay small;
``--qupath_merge`` merges them by top class into annotations (connected patches one polygon).
A patch at the slide's edge is its part inside the slide.
What a patch exports is its model's output kind's (``qupath_values``): embedding models export
nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam

from transforms.core import progress
from transforms.core.errors import DEAD_LETTER, dead_letter
from transforms.io.schemas import file_name
from transforms.models.spec import ModelSpec
from transforms.slides.heatmaps import PALETTE

MIN_PROB = 0.5
"""Default of ``--qupath_min_prob``."""


def geojson_uri(folder: str, slide_id: str, model_name: str) -> str:
    return f"{folder.rstrip('/')}/{file_name(slide_id, model_name, '.geojson')}"


def _valid_box(row: dict) -> tuple[int, int, int, int]:
    """The level-0 box of a patch's part inside the slide: ``(x0, y0, x1, y1)``."""
    x, y, size = int(row["x_px"]), int(row["y_px"]), int(row["size_px"])
    w = int(row.get("valid_width_px") or size)
    h = int(row.get("valid_height_px") or size)
    return x, y, x + w, y + h


def _top(row: dict, spec: ModelSpec) -> tuple[Sequence[float], int]:
    values = spec.kind.qupath_values(row) or ()
    return values, max(range(len(values)), key=lambda i: values[i])


def feature(row: dict, spec: ModelSpec) -> dict[str, Any]:
    """One patch (its part inside the slide) as a QuPath detection."""
    x0, y0, x1, y1 = _valid_box(row)
    values, top = _top(row, spec)
    colour = [int(c) for c in PALETTE[top % len(PALETTE)]]
    measurements = {spec.class_name(i): round(float(v), 6) for i, v in enumerate(values)}
    measurements.update(spec.kind.qupath_measurements(row))
    return {
        "type": "Feature",
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
        },
        "properties": {
            "objectType": "detection",
            "classification": {"name": spec.class_name(top), "color": colour},
            "measurements": measurements,
        },
    }


class _Keep(beam.DoFn):
    def __init__(self, specs: Sequence[ModelSpec], min_prob: float) -> None:
        self._kinds = {s.name: s.kind for s in specs}
        self._min = min_prob

    def process(self, row: dict) -> Iterator[tuple[tuple[str, str], dict]]:
        kind = self._kinds[row["model_name"]]
        if not kind.exports_qupath:
            return
        values = kind.qupath_values(row)
        if values is not None and len(values) and max(values) >= self._min:
            yield (row["slide_id"], row["model_name"]), row


def merged_features(rows: Iterable[dict], spec: ModelSpec) -> Iterator[dict[str, Any]]:
    """The patches merged by top class: each connected group one QuPath annotation (holes
    kept), with its patch count and area."""
    import shapely
    from shapely.geometry import box, mapping

    by_class: dict[int, list[Any]] = {}
    for row in rows:
        by_class.setdefault(_top(row, spec)[1], []).append(box(*_valid_box(row)))
    for top, boxes in sorted(by_class.items()):
        merged = shapely.unary_union(boxes)
        colour = [int(c) for c in PALETTE[top % len(PALETTE)]]
        for polygon in getattr(merged, "geoms", [merged]):
            count = sum(1 for b in boxes if polygon.contains(b.representative_point()))
            yield {
                "type": "Feature",
                "geometry": mapping(polygon),
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": spec.class_name(top), "color": colour},
                    "measurements": {"patches": count, "Area px^2": float(polygon.area)},
                },
            }


class _WriteGeoJson(beam.DoFn):
    STAGE = "ExportQuPath"

    def __init__(self, specs: Sequence[ModelSpec], folder: str, merge: bool = False) -> None:
        self._specs = {s.name: s for s in specs}
        self._folder = folder
        self._merge = merge

    def process(self, element: tuple[tuple[str, str], Iterable[dict]]) -> Iterator[Any]:

        from transforms.core.remote_io import open_uri

        (slide_id, model_name), rows = element
        spec = self._specs[model_name]
        uri = geojson_uri(self._folder, slide_id, model_name)
        try:
            n = 0
            with open_uri(uri, "w", auto_mkdir=True) as f:
                f.write('{"type": "FeatureCollection", "features": [\n')
                features = (
                    merged_features(rows, spec)
                    if self._merge
                    else (feature(row, spec) for row in rows)  # streamed, never held together
                )
                for item in features:
                    f.write(("" if n == 0 else ",\n") + json.dumps(item))
                    n += 1
                f.write("\n]}\n")
            progress.count("qupath_detections", n)
            yield uri
        except Exception as exc:  # noqa: BLE001 - the results are written already
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER,
                dead_letter(self.STAGE, f"{slide_id}/{model_name}", exc, {"slide_id": slide_id}),
            )


class ExportQuPath(beam.PTransform):
    """Patch result rows -> one GeoJSON file per slide and model in ``folder``.

    Out: a dict with ``files`` (URIs) and ``DEAD_LETTER`` rows (files that failed to write).
    """

    def __init__(
        self, specs: Sequence[ModelSpec], folder: str, min_prob: float, merge: bool = False
    ) -> None:
        super().__init__()
        self._specs = list(specs)
        self._folder = folder
        self._min_prob = min_prob
        self._merge = merge

    def expand(self, rows: beam.PCollection) -> dict[str, beam.PCollection]:
        written = (
            rows
            | "KeepConfident" >> beam.ParDo(_Keep(self._specs, self._min_prob))
            | "BySlideAndModel" >> beam.GroupByKey()
            | "WriteGeoJson"
            >> beam.ParDo(_WriteGeoJson(self._specs, self._folder, self._merge)).with_outputs(
                DEAD_LETTER, main="files"
            )
        )
        return {"files": written.files, DEAD_LETTER: written[DEAD_LETTER]}
