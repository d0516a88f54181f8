"""Slide-level heads: all of a slide's patch embeddings (one encoder) -> one prediction.

    --slide_model subtype=abmil.pt2 --slide_model_input subtype=uni --slide_class_names ...

A slide's embedding rows are made compact (``slide_embeddings.compact``: a float32 vector and the
box) on the worker that computed them, grouped per slide in the pipeline (never written and read
back) and stacked in row-major order, so the head sees the same input whatever order the
patches arrived in. The head (``models/slide_head.py``) is loaded once per worker process.

Out: ``slide_predictions`` (slide x head: probabilities and label), ``patch_attention`` (the
head's weight per patch, where it gives them; each slide's sum to 1), an attention heatmap per
slide x head, and ``case_predictions`` (the mean of a case's slide probabilities).

Bound: one slide's N x D float32 is held at once, N x D x 4 bytes (50,000 patches x 1,536 is
307 MB). A slide with more than ``max_patches`` embeddings is a dead letter naming its count.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.utils.shared import Shared

from transforms.core import progress
from transforms.core.errors import DEAD_LETTER, dead_letter
from transforms.io.schemas import RUN_COLUMNS, Column, Table
from transforms.models.kinds.base import activate
from transforms.slides.slide_embeddings import SlideEmbeddings, compact, stacked

SLIDE_MAX_PATCHES = 100_000
"""The default ``--slide_max_patches``: 100,000 x 1,536 float32 is 614 MB on one worker."""

ATTENTION = "attention"
"""The folder of the attention heatmaps (one per slide x head)."""


@dataclass(frozen=True)
class HeadSpec:
    """One slide-level head: its file, the encoder it takes and how its logits are read."""

    name: str
    uri: str
    encoder: str
    class_names: tuple[str, ...] = ()
    activation: str = "softmax"
    version: str = "1"
    require_gpu: bool = False

    def class_name(self, c: int) -> str:
        return self.class_names[c] if c < len(self.class_names) else f"class {c}"


_HEAD_KEY = ("slide_id", "head_name", "head_version")
SLIDE_PREDICTIONS = Table(
    "slide_predictions",
    (
        Column("slide_id", "STRING", "REQUIRED"),
        Column("head_name", "STRING", "REQUIRED"),
        Column("head_version", "STRING", "REQUIRED"),
        Column("encoder_name", "STRING", "REQUIRED", description="whose embeddings it took"),
        Column("patch_count", "INT64", "REQUIRED"),
        Column("logits", "FLOAT64", "REPEATED"),
        Column("probs", "FLOAT64", "REPEATED"),
        Column("label", "INT64", "REQUIRED", description="argmax of probs"),
        Column("class_names", "STRING", "REPEATED"),
        Column("group_value", "STRING", description="the slide's --group_by value (its case)"),
        Column("attention_uri", "STRING", description="the attention heatmap (PNG)"),
        *RUN_COLUMNS,
    ),
    _HEAD_KEY,
    ("slide_id", "head_name"),
)
PATCH_ATTENTION = Table(
    "patch_attention",
    (
        Column("slide_id", "STRING", "REQUIRED"),
        Column("head_name", "STRING", "REQUIRED"),
        Column("head_version", "STRING", "REQUIRED"),
        Column("x_px", "INT64", "REQUIRED"),
        Column("y_px", "INT64", "REQUIRED"),
        Column("size_px", "INT64", "REQUIRED"),
        Column("attention", "FLOAT64", "REQUIRED", description="the slide's weights sum to 1"),
        *RUN_COLUMNS,
    ),
    _HEAD_KEY,
    ("slide_id", "head_name"),
)
CASE_PREDICTIONS = Table(
    "case_predictions",
    (
        Column("group_by", "STRING", "REQUIRED"),
        Column("group_value", "STRING", "REQUIRED"),
        Column("head_name", "STRING", "REQUIRED"),
        Column("head_version", "STRING", "REQUIRED"),
        Column("slide_count", "INT64", "REQUIRED"),
        Column("slide_ids", "STRING", "REPEATED"),
        Column("probs", "FLOAT64", "REPEATED", description="the mean of its slides' probs"),
        Column("label", "INT64", "REQUIRED"),
        Column("class_names", "STRING", "REPEATED"),
        *RUN_COLUMNS,
    ),
    ("group_by", "group_value", "head_name", "head_version"),
    ("group_value", "head_name"),
)


class _HeadHolder:
    """A weak-referenceable box for ``Shared``."""

    def __init__(self, head: Any) -> None:
        self.head = head


class _RunHead(beam.DoFn):
    STAGE = "SlideModel"

    def __init__(
        self,
        spec: HeadSpec,
        run_id: str,
        max_patches: int,
        picture_dir: str | None,
        group_by: str | None,
    ) -> None:
        self._spec = spec
        self._run_id = run_id
        self._max = max_patches
        self._picture_dir = picture_dir
        self._group_by = group_by
        self._shared = Shared()
        self._head: Any = None

    def setup(self) -> None:
        from transforms.models.slide_head import SlideHead

        spec = self._spec
        self._head = self._shared.acquire(
            lambda: _HeadHolder(SlideHead(spec.uri, spec.require_gpu)),
            tag=f"slide-head:{spec.name}:{spec.uri}",
        ).head

    def _failed(self, slide_id: str, exc: Exception) -> Any:
        return beam.pvalue.TaggedOutput(
            DEAD_LETTER,
            dead_letter(
                f"{self.STAGE}/{self._spec.name}",
                slide_id,
                exc,
                {"slide_id": slide_id, "model_name": self._spec.name},
            ),
        )

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        slide_id, groups = element
        infos = list(groups["info"])
        items = list(groups["embeddings"])
        if not items or not infos:
            return
        spec = self._spec
        if len(items) > self._max:
            yield self._failed(
                slide_id,
                MemoryError(
                    f"{len(items)} patch embeddings from {spec.encoder}, over "
                    f"--slide_max_patches {self._max} (held at once: N x D x 4 bytes)"
                ),
            )
            return
        bag = stacked(items)
        try:
            logits, attention = self._head(bag.features, bag.coords, bag.patch_size_l0)
            if not np.isfinite(logits).all() or (
                attention is not None and not np.isfinite(attention).all()
            ):
                raise ValueError("the head gave a NaN or infinite output")
        except Exception as exc:  # noqa: BLE001 - this slide's head result is a dead letter
            yield self._failed(slide_id, exc)
            return
        probs = activate(logits[None], spec.activation)[0]
        info = infos[0]
        row = {
            "slide_id": slide_id,
            "head_name": spec.name,
            "head_version": spec.version,
            "encoder_name": spec.encoder,
            "patch_count": len(bag.coords),
            "logits": [float(v) for v in logits],
            "probs": [float(p) for p in probs],
            "label": int(np.argmax(probs)),
            "class_names": list(spec.class_names),
            "group_value": _group_value(info, self._group_by),
            "attention_uri": None,
            "run_id": self._run_id,
        }
        if attention is not None:
            for (x, y), weight in zip(bag.coords.tolist(), attention.tolist(), strict=True):
                yield beam.pvalue.TaggedOutput(
                    ATTENTION,
                    {
                        "slide_id": slide_id,
                        "head_name": spec.name,
                        "head_version": spec.version,
                        "x_px": x,
                        "y_px": y,
                        "size_px": bag.patch_size_l0,
                        "attention": weight,
                        "run_id": self._run_id,
                    },
                )
            if self._picture_dir is not None:
                try:
                    row["attention_uri"] = self._write_heatmap(info, bag, attention, probs)
                except Exception as exc:  # noqa: BLE001 - the prediction row still goes out
                    yield self._failed(f"{slide_id}/attention_heatmap", exc)
        progress.count("slide_predictions")
        yield row

    def _write_heatmap(
        self, info: dict, bag: SlideEmbeddings, attention: np.ndarray, probs: np.ndarray
    ) -> str:
        from transforms.slides.heatmaps import (
            heatmap_uri,
            render_heatmap,
            slide_thumbnail,
            write_image,
        )

        assert self._picture_dir is not None
        cell = bag.patch_size_l0
        cols = -(-int(info["width_px"]) // cell) + 1
        rows = -(-int(info["height_px"]) // cell) + 1
        raster = np.zeros((rows, cols, 1), np.float32)
        painted = np.zeros((rows, cols), bool)
        low, high = float(attention.min()), float(attention.max())
        scaled = (attention - low) / (high - low) if high - low > 1e-12 else attention * 0 + 0.5
        cx = np.minimum((bag.coords[:, 0] + cell // 2) // cell, cols - 1)
        cy = np.minimum((bag.coords[:, 1] + cell // 2) // cell, rows - 1)
        raster[cy, cx, 0] = np.maximum(raster[cy, cx, 0], scaled)
        painted[cy, cx] = True
        thumb, ds = slide_thumbnail(info["uri"])
        label = int(np.argmax(probs))
        title = (
            f"{info['slide_id']} | {self._spec.name} {self._spec.version} | {len(scaled)} "
            f"patches | {self._spec.class_name(label)} P={probs[label]:.3f} | attention, min to max"
        )
        png = render_heatmap(thumb, ds, cell, raster, painted, title, ["attention"])
        uri = heatmap_uri(self._picture_dir, info["slide_id"], self._spec.name)
        write_image(uri, png)
        return uri


def _group_value(info: dict, group_by: str | None) -> str | None:
    if group_by is None:
        return None
    value = info.get("metadata", {}).get(group_by)
    return "(missing)" if value is None else str(value)  # as case_summaries say it


def _key_info(info: dict) -> tuple[str, dict]:
    return info["slide_id"], info


class RunSlideHead(beam.PTransform):
    """(``patch_embeddings`` rows of any encoders, slide infos) -> one head's results.

    Out: a dict with ``predictions`` (``slide_predictions`` rows), ``attention``
    (``patch_attention`` rows) and ``DEAD_LETTER`` rows (one per slide the head could not take).
    """

    def __init__(
        self,
        spec: HeadSpec,
        run_id: str,
        max_patches: int = SLIDE_MAX_PATCHES,
        picture_dir: str | None = None,
        group_by: str | None = None,
    ) -> None:
        super().__init__()
        self._spec = spec
        self._fn = _RunHead(spec, run_id, max_patches, picture_dir, group_by)

    def expand(self, inputs: tuple[beam.PCollection, beam.PCollection]) -> dict:
        rows, infos = inputs
        encoder = self._spec.encoder
        out = (
            {
                "embeddings": rows
                | "ItsEncoder" >> beam.Filter(lambda r: r["model_name"] == encoder)
                | "Compact" >> beam.Map(compact),
                "info": infos | "KeyInfos" >> beam.Map(_key_info),
            }
            | "GroupBySlide" >> beam.CoGroupByKey()
            | "RunHead"
            >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER, ATTENTION, main="predictions")
        )
        return {
            "predictions": out.predictions,
            "attention": out[ATTENTION],
            DEAD_LETTER: out[DEAD_LETTER],
        }


def case_prediction(group_by: str, group_value: str, rows: Sequence[dict]) -> dict:
    """One ``case_predictions`` row: the mean of the case's slide probabilities."""
    rows = sorted(rows, key=lambda r: r["slide_id"])
    probs = np.mean([r["probs"] for r in rows], axis=0)
    first = rows[0]
    return {
        "group_by": group_by,
        "group_value": group_value,
        "head_name": first["head_name"],
        "head_version": first["head_version"],
        "slide_count": len(rows),
        "slide_ids": [r["slide_id"] for r in rows],
        "probs": [float(p) for p in probs],
        "label": int(np.argmax(probs)),
        "class_names": list(first["class_names"]),
        "run_id": first["run_id"],
    }


def _key_case(row: dict) -> Iterator[tuple[tuple[str, str, str], dict]]:
    if row["group_value"] is not None:
        yield (row["group_value"], row["head_name"], row["head_version"]), row


class PredictCases(beam.PTransform):
    """``slide_predictions`` rows -> ``case_predictions`` rows (slides with a group value)."""

    def __init__(self, group_by: str) -> None:
        super().__init__()
        self._group_by = group_by

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        group_by = self._group_by
        return (
            rows
            | "KeyByCase" >> beam.FlatMap(_key_case)
            | "GroupCases" >> beam.GroupByKey()
            | "MeanOfSlides"
            >> beam.MapTuple(lambda key, group: case_prediction(group_by, key[0], list(group)))
        )
