"""StitchClassMaps: segmentation patches -> one class mask per slide x model, and its regions.

Each patch hands over the class map of the box it alone accounts for (``PatchBox.own``: the
boundary between overlapping neighbours lies in the middle of their overlap, so the owned boxes
tile the slide). Blending is therefore a centre crop: every mask pixel comes from exactly one
patch, the one whose centre is nearest along each axis, where a model sees most context.

The mask lives on a grid at the model's output resolution (one class-map pixel of a patch). It
is assembled in bands of ``BAND_ROWS`` mask rows (one band in memory per worker at a time),
compressed, and written per slide as a tiled, pyramidal OME-TIFF (``masks.py``), with class
regions traced band by band and merged across band seams (``regions.py``). A gigapixel slide
is never held as a full-resolution array: the writer holds the compressed bands.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np

from transforms.core import progress
from transforms.core.errors import DEAD_LETTER, dead_letter
from transforms.slides.masks import BAND_ROWS, Band, MaskGrid, mask_uri, write_mask
from transforms.slides.regions import regions_uri, write_regions

CLASS_MAPS = "class_maps"
"""The tag of ``RunModel``'s output of ``MaskPiece`` elements (class-map kinds only)."""


@dataclass
class MaskPiece:
    """One patch's owned class map on its slide's mask grid (0 off tissue, ``c + 1`` class c)."""

    slide_id: str
    model_name: str
    row: int
    col: int
    labels: np.ndarray
    px: float
    """Level-0 pixels one mask pixel spans across (``py`` down)."""
    py: float
    slide_dims: tuple[int, int]
    slide_mpp: float | None


def mask_piece(patch: Any, spec: Any, owned: Any) -> MaskPiece:
    """``patch``'s piece of its slide's mask, from its ``OwnedMap``."""
    dims = patch.slide_dims or (patch.x_px + patch.size_px, patch.y_px + patch.size_px)
    slide_mpp = patch.mpp * patch.pixels.shape[1] / patch.size_px if patch.mpp else None
    return MaskPiece(
        patch.slide_id,
        spec.name,
        owned.row,
        owned.col,
        owned.labels,
        owned.px,
        owned.py,
        dims,
        slide_mpp,
    )


def _split_into_bands(piece: MaskPiece) -> Iterator[tuple[tuple[str, str, int], Any]]:
    """A piece keyed by each band it touches, cut at the band's edges."""
    grid = MaskGrid.of(piece.slide_dims, piece.px, piece.py, piece.slide_mpp)
    top = piece.row
    bottom = min(piece.row + piece.labels.shape[0], grid.height)
    right = min(piece.col + piece.labels.shape[1], grid.width)
    for band in range(top // BAND_ROWS, (max(top, bottom - 1)) // BAND_ROWS + 1):
        y0, y1 = max(top, band * BAND_ROWS), min(bottom, (band + 1) * BAND_ROWS)
        if y1 <= y0 or right <= piece.col:
            continue
        cut = np.ascontiguousarray(piece.labels[y0 - top : y1 - top, : right - piece.col])
        yield (  # compressed through the shuffle: a slide's pieces are its whole mask
            (piece.slide_id, piece.model_name, band),
            (grid, y0 - band * BAND_ROWS, piece.col, cut.shape, zlib.compress(cut.tobytes(), 1)),
        )


def _assemble_band(
    element: tuple[tuple[str, str, int], Iterable[Any]],
) -> tuple[tuple[str, str], tuple[MaskGrid, Band]]:
    (slide_id, model_name, band), cuts = element
    grid, pixels = None, None
    for grid, y, x, (h, w), data in cuts:
        if pixels is None:
            pixels = np.zeros((grid.band_rows(band), grid.width), np.uint8)
        pixels[y : y + h, x : x + w] = np.frombuffer(zlib.decompress(data), np.uint8).reshape(h, w)
    assert grid is not None and pixels is not None
    counts = np.bincount(pixels.ravel(), minlength=256)
    return (slide_id, model_name), (grid, Band(band, zlib.compress(pixels.tobytes(), 1), counts))


@dataclass(frozen=True)
class StitchOutputs:
    """Where a run's stitched masks and region files go (None: not written)."""

    mask_dir: str | None
    regions_dir: str | None
    min_region_um2: float = 0.0


class _WriteSlideMask(beam.DoFn):
    """A slide x model's bands -> its mask OME-TIFF, its regions GeoJSON, and a record of both
    with the class areas the mask holds."""

    STAGE = "StitchMask"

    def __init__(self, specs: Sequence[Any], out: StitchOutputs) -> None:
        self._specs = {s.name: s for s in specs}
        self._out = out

    def process(self, element: tuple[tuple[str, str], Iterable[Any]]) -> Iterator[Any]:
        (slide_id, model_name), items = element
        spec = self._specs[model_name]
        items = list(items)  # compressed bands: a few MB for a gigapixel slide
        grid: MaskGrid = items[0][0]
        bands = sorted((band for _, band in items), key=lambda b: b.index)
        counts = np.sum([b.counts for b in bands], axis=0)
        n_classes = len(spec.class_names) or int(np.nonzero(counts)[0].max(initial=0))
        record: dict[str, Any] = {
            "slide_id": slide_id,
            "model_name": model_name,
            "mask_uri": None,
            "regions_uri": None,
            "mask_mpp": grid.mpp,
            "mask_px": grid.px,
            "mask_dims": (grid.width, grid.height),
            "class_area_px": [float(c) * grid.px * grid.py for c in counts[1 : n_classes + 1]],
        }
        try:
            if self._out.mask_dir is not None:
                record["mask_uri"] = mask_uri(self._out.mask_dir, slide_id, model_name)
                write_mask(record["mask_uri"], grid, bands)
            if self._out.regions_dir is not None:
                record["regions_uri"] = regions_uri(self._out.regions_dir, slide_id, model_name)
                record["regions"] = write_regions(
                    record["regions_uri"], grid, bands, spec, n_classes, self._out.min_region_um2
                )
        except Exception as exc:  # noqa: BLE001 - the summaries still go out
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER,
                dead_letter(self.STAGE, f"{slide_id}/{model_name}", exc, {"slide_id": slide_id}),
            )
            record["mask_uri"] = record["regions_uri"] = None
        progress.count("masks_stitched")
        yield record


class StitchClassMaps(beam.PTransform):
    """``MaskPiece`` elements -> per slide x model a record of its stitched mask (``mask_uri``,
    ``regions_uri``, ``class_area_px`` from the mask), after writing the files ``out`` asks for.

    Out: a dict with ``masks`` (the records) and ``DEAD_LETTER`` rows (files that failed).
    """

    def __init__(self, specs: Sequence[Any], out: StitchOutputs) -> None:
        super().__init__()
        self._specs = list(specs)
        self._out = out

    def expand(self, pieces: beam.PCollection) -> dict[str, beam.PCollection]:
        written = (
            pieces
            | "SplitIntoBands" >> beam.FlatMap(_split_into_bands)
            | "GroupBands" >> beam.GroupByKey()
            | "AssembleBands" >> beam.Map(_assemble_band)
            | "GroupSlideMasks" >> beam.GroupByKey()
            | "WriteMasks"
            >> beam.ParDo(_WriteSlideMask(self._specs, self._out)).with_outputs(
                DEAD_LETTER, main="masks"
            )
        )
        return {"masks": written.masks, DEAD_LETTER: written[DEAD_LETTER]}
