"""WriteFeaturesH5: patch embeddings -> one TRIDENT/CLAM-style HDF5 file per slide x encoder.

``<artifacts>/features_h5/<run_id>/<slide_id>.<model>.h5`` holds what most attention-MIL code
reads (TRIDENT's ``trident/IO.py``: ``f['features'][:]``, ``f['coords'][:]`` and
``dict(f['coords'].attrs)``):

- ``features``: ``(N, D)`` float32, one row per patch, attribute ``name`` (the encoder);
- ``coords``: ``(N, 2)`` int64, each patch's level-0 top-left corner ``(x, y)``, in the same
  order, with TRIDENT's attributes: ``patch_size`` (px at the target magnification),
  ``patch_size_level0``, ``level0_magnification``, ``target_magnification`` (10 / mpp, the
  usual 0.25 µm/px = 40x convention), ``overlap`` (px), ``name`` (the slide), ``savetodir``,
  ``level0_width`` and ``level0_height``.

Patches are in row-major order (y, then x: ``slide_embeddings.stacked``), whatever order they
arrived in, so a rerun writes the same file. Each file is written whole to a local temporary
file and copied into place: a retried bundle rewrites it, never appends.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from transforms.core import progress
from transforms.core.errors import DEAD_LETTER, dead_letter
from transforms.io.schemas import file_name
from transforms.slides.slide_embeddings import SlideEmbeddings, by_model, compact, stacked

FEATURES_H5 = "features_h5"
"""The folder of the HDF5 files (one per slide x embedding model)."""


@dataclass(frozen=True)
class EncoderGrid:
    """What an encoder's patches were cut as: ``patch_px`` and the overlap, in its pixels."""

    patch_px: int
    overlap_px: int


def features_h5_uri(folder: str, slide_id: str, model_name: str) -> str:
    return f"{folder.rstrip('/')}/{file_name(slide_id, model_name, '.h5')}"


def magnification(mpp: float | None) -> float | None:
    """The objective magnification an mpp stands for (10 / mpp: 0.25 µm/px is 40x)."""
    return round(10.0 / mpp, 3) if mpp else None


def write_h5(uri: str, bag: SlideEmbeddings, info: dict, grid: EncoderGrid, folder: str) -> int:
    """Write one slide x encoder's file from its stacked embeddings; returns N."""
    import h5py

    from transforms.core.remote_io import open_uri

    coords_attrs = {
        "patch_size": grid.patch_px,
        "patch_size_level0": bag.patch_size_l0,
        "level0_magnification": magnification(info["mpp"]) or "None",
        "target_magnification": magnification(bag.mpp) or "None",
        "overlap": grid.overlap_px,
        "name": str(info["slide_id"]),
        "savetodir": folder,
        "level0_width": int(info["width_px"]),
        "level0_height": int(info["height_px"]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "features.h5")
        with h5py.File(local, "w") as f:
            f.create_dataset("features", data=bag.features).attrs["name"] = bag.model_name
            dataset = f.create_dataset("coords", data=bag.coords)
            for key, value in coords_attrs.items():
                dataset.attrs[key] = value
        with open(local, "rb") as src, open_uri(uri, "wb", auto_mkdir=True) as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
    return len(bag.coords)


class _WriteSlide(beam.DoFn):
    STAGE = "WriteFeaturesH5"

    def __init__(self, grids: dict[str, EncoderGrid], folder: str) -> None:
        self._grids = grids
        self._folder = folder

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        slide_id, groups = element
        infos = list(groups["info"])
        if not infos:
            return
        for model_name, items in sorted(by_model(groups["rows"]).items()):
            uri = features_h5_uri(self._folder, slide_id, model_name)
            try:
                bag = stacked(items)
                n = write_h5(uri, bag, infos[0], self._grids[model_name], self._folder)
            except Exception as exc:  # noqa: BLE001 - the tables are written already
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTER,
                    dead_letter(
                        self.STAGE, f"{slide_id}/{model_name}", exc, {"slide_id": slide_id}
                    ),
                )
                continue
            progress.count("features_h5_patches", n)
            yield uri


def _by_slide(item: dict) -> tuple[str, dict]:
    return item["slide_id"], item


class WriteFeaturesH5(beam.PTransform):
    """(``patch_embeddings`` rows, slide infos) -> one HDF5 file per slide x encoder in
    ``folder``. Out: a dict with ``files`` (URIs) and ``DEAD_LETTER`` rows (files not written).
    """

    def __init__(self, grids: dict[str, EncoderGrid], folder: str) -> None:
        super().__init__()
        self._grids = grids
        self._folder = folder

    def expand(self, inputs: tuple[beam.PCollection, beam.PCollection]) -> dict:
        rows, infos = inputs
        written = (
            {
                "rows": rows | "RowsBySlide" >> beam.Map(compact),
                "info": infos | "InfosBySlide" >> beam.Map(_by_slide),
            }
            | "JoinSlides" >> beam.CoGroupByKey()
            | "WriteH5"
            >> beam.ParDo(_WriteSlide(self._grids, self._folder)).with_outputs(
                DEAD_LETTER, main="files"
            )
        )
        return {"files": written.files, DEAD_LETTER: written[DEAD_LETTER]}
