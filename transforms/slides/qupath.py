"""QuPath GeoJSON per slide and model: each exported patch a detection a pathologist can open.

``<artifacts>/qupath/<run_id>/<slide_id>__<model>.geojson`` is a FeatureCollection. Each patch is
a square polygon in level-0 pixel coordinates (QuPath's image coordinates) with
``objectType: "detection"``, its top class as the classification (name and colour), and its
class probabilities (classification) or tissue shares per class (segmentation) as measurements.
Only patches whose top value reaches ``--qupath_min_prob`` are exported, so files stay small.
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


def feature(row: dict, spec: ModelSpec) -> dict[str, Any]:
    """One patch as a QuPath detection."""
    x, y, size = int(row["x_px"]), int(row["y_px"]), int(row["size_px"])
    values = spec.kind.qupath_values(row) or ()
    top = max(range(len(values)), key=lambda i: values[i])
    colour = [int(c) for c in PALETTE[top % len(PALETTE)]]
    measurements = {spec.class_name(i): round(float(v), 6) for i, v in enumerate(values)}
    measurements.update(spec.kind.qupath_measurements(row))
    return {
        "type": "Feature",
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]],
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


class _WriteGeoJson(beam.DoFn):
    STAGE = "ExportQuPath"

    def __init__(self, specs: Sequence[ModelSpec], folder: str) -> None:
        self._specs = {s.name: s for s in specs}
        self._folder = folder

    def process(self, element: tuple[tuple[str, str], Iterable[dict]]) -> Iterator[Any]:

        from transforms.core.remote_io import open_uri

        (slide_id, model_name), rows = element
        spec = self._specs[model_name]
        uri = geojson_uri(self._folder, slide_id, model_name)
        try:
            n = 0
            with open_uri(uri, "w", auto_mkdir=True) as f:
                f.write('{"type": "FeatureCollection", "features": [\n')
                for row in rows:  # streamed: a slide's patches are never held together
                    f.write(("" if n == 0 else ",\n") + json.dumps(feature(row, spec)))
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

    def __init__(self, specs: Sequence[ModelSpec], folder: str, min_prob: float) -> None:
        super().__init__()
        self._specs = list(specs)
        self._folder = folder
        self._min_prob = min_prob

    def expand(self, rows: beam.PCollection) -> dict[str, beam.PCollection]:
        written = (
            rows
            | "KeepConfident" >> beam.ParDo(_Keep(self._specs, self._min_prob))
            | "BySlideAndModel" >> beam.GroupByKey()
            | "WriteGeoJson"
            >> beam.ParDo(_WriteGeoJson(self._specs, self._folder)).with_outputs(
                DEAD_LETTER, main="files"
            )
        )
        return {"files": written.files, DEAD_LETTER: written[DEAD_LETTER]}
