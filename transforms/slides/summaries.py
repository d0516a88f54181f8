"""Patch results -> slide summaries (and their pictures), slide embeddings, case summaries.

Per slide and model a ``CombineFn`` keeps running sums, counts, maxima and the compact patch
positions a heatmap needs, so nothing holds the result rows. Every planned slide gets a summary
row for every model, also when none of its patches had tissue. What a row's statistics are
taken from depends on the model's output kind: class probabilities (classification), the share
of the patch's pixels per class (segmentation: also areas per class, and a class map instead of
a heatmap), or nothing but the count (embedding: the mean embedding goes to ``slide_embeddings``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np

from transforms.core import progress
from transforms.core.errors import (
    DEAD_LETTER,
    ModalityMismatch,
    ResolutionError,
    dead_letter,
    redact,
)
from transforms.io.schemas import metadata_record
from transforms.models.recipe import modality_refusal, modality_refuses
from transforms.models.spec import ModelSpec
from transforms.slides.heatmaps import palette_of, slide_thumbnail
from transforms.slides.viewer import (
    VIEWER,
    VIEWER_MPP,
    Overlay,
    build_page,
    failed_overlay,
    gate_overlay,
    heatmap_overlays,
    mask_overlay,
)

THUMBNAIL_PX = 512
"""Long side of the thumbnail JPEG each slide gets beside its pictures (for the run report)."""
THUMBNAILS = "thumbnails"
"""The folder of the slides' thumbnails (each output kind's pictures have their own)."""
MAX_HEATMAP_SIDE = 1024
"""Heatmap raster cells per side at most; past it, cells merge 2 x 2, so memory stays bounded."""


@dataclass
class SlideStats:
    """Running statistics of one slide's predictions from one model, in bounded memory.

    Besides sums, label counts and maxima, it keeps a dense heatmap raster of ``cell_px`` level-0
    pixels per cell (at first the patch size) holding summed probabilities and a count in its
    last channel; each patch counts in the cell holding its centre, so overlapping grids and
    manifest patches at any offset land where they are. A raster wider than ``MAX_HEATMAP_SIDE``
    cells coarsens by 2, so a slide of any size costs at most a few MB however many patches it
    has.
    """

    n: int = 0
    sums: np.ndarray | None = None
    areas_px: np.ndarray | None = None
    """Per class, the sum of each patch's value times its level-0 area in px (segmentation:
    the class's area)."""
    counts: np.ndarray | None = None
    maxima: np.ndarray | None = None
    cell_px: int = 0
    raster: np.ndarray | None = None
    tissue_px: float | None = None
    """Level-0 px² of tissue in the patches' owned boxes (segmentation), each pixel once."""

    def add(
        self,
        box: tuple[int, int, int],
        probs: Sequence[float],
        grid: Sequence[int] = (),
        areas: Sequence[float] = (),
        tissue_px: float | None = None,
        valid: tuple[int, int] | None = None,
    ) -> None:
        """Count one patch: its values (probabilities or class shares); for a class map, its
        ``k x k`` grid of classes (-1: not tissue), painted cell by cell, its class ``areas``
        and ``tissue_px`` (level-0 px² in its owned box); ``valid``: the level-0 width and
        height of its part inside the slide (a patch paints the centre of that part)."""
        p = np.asarray(probs, dtype=np.float64)
        self.n += 1
        if tissue_px is not None:
            self.tissue_px = (self.tissue_px or 0.0) + float(tissue_px)
        if len(p) == 0:  # an embedding: counted, nothing to average
            return
        k = int(round(np.sqrt(len(grid)))) if len(grid) else 1
        if self.sums is None:
            self.sums, self.counts, self.maxima = np.zeros_like(p), np.zeros_like(p), p.copy()
            self.areas_px = np.zeros_like(p)
            self.cell_px = max(1, int(box[2]) // k)
            self.raster = np.zeros((1, 1, len(p) + 1), np.float32)
        assert self.counts is not None and self.maxima is not None and self.areas_px is not None
        self.sums += p
        if len(areas):
            self.areas_px += np.asarray(areas, dtype=np.float64)
        self.counts[int(np.argmax(p))] += 1
        np.maximum(self.maxima, p, out=self.maxima)
        if len(grid):
            self._paint_grid(box, np.asarray(grid).reshape(k, k), len(p))
            return
        w, h = valid or (box[2], box[2])  # a patch paints the cell holding its centre
        self._paint(
            np.array([box[0] + int(w) // 2]),
            np.array([box[1] + int(h) // 2]),
            np.append(p, 1.0)[None, :],
        )

    def _paint_grid(self, box: tuple[int, int, int], grid: np.ndarray, n_classes: int) -> None:
        """Paint a patch's class grid: each tissue cell one-hot at its centre."""
        k = grid.shape[0]
        ys, xs = np.nonzero(grid >= 0)
        if not len(ys):
            return
        step = box[2] / k
        values = np.zeros((len(ys), n_classes + 1), np.float32)
        values[np.arange(len(ys)), grid[ys, xs]] = 1.0
        values[:, -1] = 1.0
        centre_x = (box[0] + (xs + 0.5) * step).astype(np.int64)
        centre_y = (box[1] + (ys + 0.5) * step).astype(np.int64)
        self._paint(centre_x, centre_y, values)

    def _paint(self, xs: np.ndarray, ys: np.ndarray, values: np.ndarray) -> None:
        """Add ``values`` (``N x (C+1)``) at level-0 points, growing or coarsening the raster."""
        assert self.raster is not None
        cx, cy = xs // self.cell_px, ys // self.cell_px
        while max(cx.max(), cy.max()) >= MAX_HEATMAP_SIDE:
            self._coarsen()
            cx, cy = xs // self.cell_px, ys // self.cell_px
        h, w = self.raster.shape[:2]
        if cy.max() >= h or cx.max() >= w:
            new_h = min(MAX_HEATMAP_SIDE, max(int(cy.max()) + 1, 2 * h))
            new_w = min(MAX_HEATMAP_SIDE, max(int(cx.max()) + 1, 2 * w))
            grown = np.zeros((new_h, new_w, self.raster.shape[2]), np.float32)
            grown[:h, :w] = self.raster
            self.raster = grown
        np.add.at(self.raster, (cy, cx), values.astype(np.float32))

    def _coarsen(self) -> None:
        assert self.raster is not None
        h, w, c = self.raster.shape
        padded = np.zeros((h + h % 2, w + w % 2, c), np.float32)
        padded[:h, :w] = self.raster
        self.raster = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2, c).sum(
            axis=(1, 3)
        )
        self.cell_px *= 2

    def merge(self, other: SlideStats) -> SlideStats:
        if other.sums is None:
            self.n += other.n
            return self
        if self.sums is None:
            other.n += self.n
            if self.tissue_px is not None:
                other.tissue_px = (other.tissue_px or 0.0) + self.tissue_px
            return other
        assert self.counts is not None and self.maxima is not None and self.areas_px is not None
        assert other.counts is not None and other.maxima is not None and other.raster is not None
        assert other.areas_px is not None
        self.n += other.n
        if other.tissue_px is not None:
            self.tissue_px = (self.tissue_px or 0.0) + other.tissue_px
        self.sums += other.sums
        self.areas_px += other.areas_px
        self.counts += other.counts
        np.maximum(self.maxima, other.maxima, out=self.maxima)
        while self.cell_px < other.cell_px:
            self._coarsen()
        cy, cx = np.nonzero(other.raster[..., -1])  # re-bin the other's cells by their centres
        half = other.cell_px // 2
        self._paint(cx * other.cell_px + half, cy * other.cell_px + half, other.raster[cy, cx])
        return self

    def heatmap_raster(
        self, slide_dims: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean probabilities per cell (``H x W x C``) and which cells hold any patch; with
        ``slide_dims`` (level-0 width, height), exactly the cells over the slide."""
        assert self.raster is not None
        raster = self.raster
        if slide_dims is not None:
            cols, rows = (-(-int(d) // self.cell_px) for d in slide_dims)
            raster = np.zeros((rows, cols, raster.shape[2]), np.float32)
            h, w = min(rows, self.raster.shape[0]), min(cols, self.raster.shape[1])
            raster[:h, :w] = self.raster[:h, :w]
        counts = raster[..., -1:]
        painted = counts[..., 0] > 0
        return raster[..., :-1] / np.maximum(counts, 1), painted

    def class_stats(self) -> dict[str, list[float]]:
        """Per-class mean probability, label fraction and max probability (empty if no patches)."""
        if self.n == 0 or self.sums is None:
            return {"class_mean_prob": [], "class_fraction": [], "class_max_prob": []}
        assert self.counts is not None and self.maxima is not None
        return {
            "class_mean_prob": (self.sums / self.n).tolist(),
            "class_fraction": (self.counts / self.n).tolist(),
            "class_max_prob": self.maxima.tolist(),
        }


class SlideStatsFn(beam.CombineFn):
    """Result rows of one slide and model -> ``SlideStats`` (what a row adds: its model's
    output kind says)."""

    def __init__(self, specs: Sequence[ModelSpec]) -> None:
        self._kinds = {s.name: s.kind for s in specs}

    def create_accumulator(self) -> SlideStats:
        return SlideStats()

    def add_input(self, acc: SlideStats, row: dict) -> SlideStats:
        box = (row["x_px"], row["y_px"], row["size_px"])
        kind = self._kinds[row["model_name"]]
        valid = (row.get("valid_width_px"), row.get("valid_height_px"))
        acc.add(
            box,
            kind.slide_values(row),
            kind.slide_grid(row),
            kind.slide_areas(row),
            row.get("tissue_area_px"),
            valid if None not in valid else None,  # type: ignore[arg-type]
        )
        return acc

    def merge_accumulators(self, accs: Iterable[SlideStats]) -> SlideStats:
        out = SlideStats()
        for acc in accs:
            out = out.merge(acc)
        return out

    def extract_output(self, acc: SlideStats) -> SlideStats:
        return acc


def _key_slide_model(row: dict) -> tuple[tuple[str, str], dict]:
    return (row["slide_id"], row["model_name"]), row


def _key_stats_by_slide(item: tuple[tuple[str, str], SlideStats]) -> tuple[str, tuple]:
    (slide_id, model_name), stats = item
    return slide_id, (model_name, stats)


def _key_info(info: dict) -> tuple[str, dict]:
    return info["slide_id"], info


def failed_box(error: dict) -> Iterator[tuple[str, tuple[int, int, int]]]:
    """A dead letter's patch box ``(x, y, size)`` keyed by its slide, if it is a patch's."""
    import json

    try:
        element = json.loads(error["input"])
        box = (int(element["x_px"]), int(element["y_px"]), int(element["size_px"]))
        yield str(element["slide_id"]), box
    except (ValueError, KeyError, TypeError):
        return


def _refusal(spec: ModelSpec, slide_id: str, info: dict) -> tuple[str, Exception] | None:
    """Why a model must not run on this slide (its stage and error), if it must not: a slide of
    another modality than its recipe's, or too coarse for its patch geometry."""
    if modality_refuses(spec.modality, info["tissue_method"]):
        message = modality_refusal(spec.name, spec.modality, slide_id, info["tissue_method"])
        return "CheckModality", ModalityMismatch(message)
    refused = info.get("refused") or ()
    if spec.geometry < len(refused) and refused[spec.geometry]:
        return "CheckResolution", ResolutionError(
            f"model {spec.name!r}: slide {slide_id!r}: {refused[spec.geometry]}"
        )
    return None


class _SummarizeSlide(beam.DoFn):
    STAGE = "RenderHeatmap"

    def __init__(
        self,
        specs: Sequence[ModelSpec],
        picture_dirs: dict[str, str],
        run_id: str,
        min_coverage: float,
        viewer_mpp: float,
    ) -> None:
        self._specs = list(specs)
        self._picture_dirs = picture_dirs
        self._run_id = run_id
        self._min_coverage = min_coverage
        self._viewer_mpp = viewer_mpp

    def process(self, element: tuple[str, dict[str, list]]) -> Iterator[Any]:
        slide_id, groups = element
        infos = list(groups["info"])
        masks = {m["model_name"]: m for m in groups.get("masks", ())}
        if infos:  # predictions always come from a planned slide, so this holds
            failed = list(groups.get("failed", ()))
            gated: dict[str, int] = {}
            for count in groups.get("gated", ()):
                gated[count["model_name"]] = gated.get(count["model_name"], 0) + count["gated_out"]
            verdicts: dict[tuple[str, str], list[dict]] = {}
            for v in groups.get("verdicts", ()):
                verdicts.setdefault((v["model_name"], v["gate_name"]), []).append(v)
            yield from self._summaries(
                slide_id, infos[0], dict(groups["stats"]), masks, failed, gated, verdicts
            )

    def _summaries(
        self,
        slide_id: str,
        info: dict,
        by_model: dict,
        masks: dict[str, dict],
        failed: list[tuple[int, int, int]],
        gated: dict[str, int],
        verdicts: dict[tuple[str, str], list[dict]],
    ) -> Iterator[Any]:
        thumb, thumbnail_uri = None, None
        if self._picture_dirs:
            try:
                thumb = slide_thumbnail(info["uri"])
                thumbnail_uri = self._write_thumbnail(info, thumb[0])
            except Exception as exc:  # noqa: BLE001 - the summary rows still go out
                yield self._failed(slide_id, "thumbnail", exc)
        rows, overlays = [], []
        for spec in self._specs:
            refusal = _refusal(spec, slide_id, info)
            if refusal is not None:
                stage, error = refusal
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTER,
                    dead_letter(
                        f"{stage}/{spec.name}",
                        slide_id,
                        error,
                        {"slide_id": slide_id, "model_name": spec.name},
                    ),
                )
                continue
            stats = by_model.get(spec.name, SlideStats())
            heatmap_uri = None
            if thumb and spec.kind.picture in self._picture_dirs and stats.sums is not None:
                try:
                    heatmap_uri = self._write_heatmap(info, spec, stats, thumb)
                except Exception as exc:  # noqa: BLE001 - the summary row still goes out
                    yield self._failed(slide_id, spec.name, exc)
            if VIEWER in self._picture_dirs and stats.sums is not None:
                try:
                    overlays += self._overlays(info, spec, stats, masks.get(spec.name))
                except Exception as exc:  # noqa: BLE001 - the summary row still goes out
                    yield self._failed(slide_id, f"{spec.name}/overlay", exc)
            row = summary_row(info, spec, stats, heatmap_uri, self._run_id, masks.get(spec.name))
            row["patches_gated_out"] = gated.get(spec.name)
            row["low_coverage"] = row["coverage"] is not None and (
                row["coverage"] < self._min_coverage
            )
            if row["low_coverage"]:
                progress.count("slide_models_low_coverage")
            rows.append({**row, "thumbnail_uri": thumbnail_uri})
        viewer_uri = None
        if VIEWER in self._picture_dirs and rows:
            try:
                folder = self._picture_dirs[VIEWER]
                for (model, gate), its in sorted(verdicts.items()):
                    overlays.append(gate_overlay(folder, info, model, gate, its))
                if failed:
                    overlays.append(failed_overlay(folder, info, failed))
                viewer_uri = build_page(
                    self._picture_dirs[VIEWER], info, overlays, self._viewer_mpp
                )
            except Exception as exc:  # noqa: BLE001 - the summary rows still go out
                yield self._failed(slide_id, "viewer", exc)
        for row in rows:
            yield {**row, "viewer_uri": viewer_uri}
        progress.count("slides_summarized")

    def _overlays(
        self, info: dict, spec: ModelSpec, stats: SlideStats, mask: dict | None
    ) -> list[Overlay]:
        """The model's layers in the slide's viewer: its stitched class mask (segmentation),
        else its heatmap per class."""
        folder, slide_id = self._picture_dirs[VIEWER], info["slide_id"]
        assert stats.sums is not None
        names = [spec.class_name(c) for c in range(len(stats.sums))]
        if spec.kind.class_map:
            if mask is None or not mask.get("mask_uri"):
                return []
            palette = palette_of(spec.class_colours)
            return [mask_overlay(folder, slide_id, spec.name, mask, names, palette)]
        probs, painted = stats.heatmap_raster((info["width_px"], info["height_px"]))
        return heatmap_overlays(folder, slide_id, spec.name, names, probs, painted, stats.cell_px)

    def _failed(self, slide_id: str, what: str, exc: Exception) -> Any:
        return beam.pvalue.TaggedOutput(
            DEAD_LETTER, dead_letter(self.STAGE, f"{slide_id}/{what}", exc, {"slide_id": slide_id})
        )

    def _write_thumbnail(self, info: dict, thumb: np.ndarray) -> str:
        import io

        from PIL import Image

        from transforms.slides.heatmaps import thumbnail_uri, write_image

        image = Image.fromarray(thumb)
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        uri = thumbnail_uri(self._picture_dirs[THUMBNAILS], info["slide_id"])
        write_image(uri, buffer.getvalue())
        return uri

    def _write_heatmap(
        self, info: dict, spec: ModelSpec, stats: SlideStats, thumb: tuple[np.ndarray, float]
    ) -> str:
        from transforms.slides.heatmaps import (
            heatmap_uri,
            render_heatmap,
            write_heatmap_pyramid,
            write_image,
        )

        assert stats.sums is not None
        title = (
            f"{info['slide_id']} | {spec.name} {spec.version} | {stats.n} patches | "
            f"{spec.kind.shown_value} = {np.round(stats.sums / stats.n, 3).tolist()}"
        )
        n_classes = len(stats.sums)
        png = render_heatmap(
            thumb[0],
            thumb[1],
            stats.cell_px,
            *stats.heatmap_raster(),
            title,
            [spec.class_name(c) for c in range(n_classes)],
            class_map=spec.kind.class_map,
            colours=spec.class_colours,
        )
        assert spec.kind.picture is not None
        uri = heatmap_uri(self._picture_dirs[spec.kind.picture], info["slide_id"], spec.name)
        write_image(uri, png)
        if not spec.kind.class_map:  # a segmentation's overlay is its stitched mask
            write_heatmap_pyramid(
                uri.removesuffix(".png") + ".ome.tif",
                *stats.heatmap_raster((info["width_px"], info["height_px"])),
                stats.cell_px,
                info["mpp"],
                palette_of(spec.class_colours),
            )
        return uri


def summary_row(
    info: dict,
    spec: ModelSpec,
    stats: SlideStats,
    heatmap_uri: str | None,
    run_id: str,
    mask: dict | None = None,
) -> dict:
    """One ``slide_summaries`` row (``mask``: the record of its stitched class mask)."""
    mask = mask or {}
    mpp = info["mpp"]
    return {
        "slide_id": info["slide_id"],
        "model_name": spec.name,
        "model_version": spec.version,
        "uri": redact(info["uri"]),
        "width_px": info["width_px"],
        "height_px": info["height_px"],
        "slide_mpp": info["mpp"],
        "patches_planned": info["patches_planned"][spec.geometry],
        "patch_count": stats.n,
        "coverage": coverage_of(info, spec),
        "tissue_area_mm2": info["tissue_area_mm2"],
        "tissue_method": info["tissue_method"],
        **stats.class_stats(),
        "class_area_mm2": class_areas_mm2(spec, mask.get("class_area_px", stats.areas_px), mpp),
        "analysed_tissue_mm2": _mm2(stats.tissue_px, mpp),
        "class_names": list(spec.class_names),
        "heatmap_uri": heatmap_uri,
        "mask_uri": mask.get("mask_uri"),
        "regions_uri": mask.get("regions_uri"),
        "metadata": metadata_record({k: redact(v) for k, v in info["metadata"].items()}),
        "run_id": run_id,
    }


MIN_COVERAGE = 0.9
"""The default ``--min_coverage``: a slide x model whose planned patches cover less of its
tissue is flagged (whole patches at the grid's edges leave tissue unanalysed)."""


def coverage_of(info: dict, spec: ModelSpec) -> float | None:
    """The share of the slide's detected tissue that the model's planned patches cover (None
    with a patch manifest, or a slide without tissue)."""
    coverage = info.get("coverage") or ()
    return coverage[spec.geometry] if spec.geometry < len(coverage) else None


def class_areas_mm2(spec: ModelSpec, areas_px: Any, mpp: float | None) -> list[float]:
    """Tissue area per class (level-0 px² -> mm²), for kinds that have areas (segmentation);
    empty for others, or without an mpp."""
    if not spec.kind.class_areas or areas_px is None or not mpp:
        return []
    return (np.asarray(areas_px, np.float64) * (mpp / 1000.0) ** 2).tolist()


def _mm2(px2: float | None, mpp: float | None) -> float | None:
    return px2 * (mpp / 1000.0) ** 2 if px2 is not None and mpp else None


class SummarizeSlides(beam.PTransform):
    """(result rows, slide infos) -> ``slide_summaries`` rows, and one picture per slide × model:
    its output kind's (a heatmap, or a class map) in ``picture_dirs[kind.picture]``, and a
    thumbnail per slide in ``picture_dirs[THUMBNAILS]``.

    Out: a dict with ``summaries`` and ``DEAD_LETTER`` rows (pictures that failed to render).
    """

    def __init__(
        self,
        specs: Sequence[ModelSpec],
        picture_dirs: dict[str, str],
        run_id: str,
        min_coverage: float = 0.0,
        viewer_mpp: float = VIEWER_MPP,
    ) -> None:
        super().__init__()
        self._fn = _SummarizeSlide(specs, picture_dirs, run_id, min_coverage, viewer_mpp)
        self._specs = list(specs)

    def expand(self, inputs: dict[str, beam.PCollection]) -> dict:
        """``inputs``: ``results`` (result rows), ``infos`` (slide infos) and, optionally,
        ``masks`` (the stitched masks' records, ``stitch.StitchClassMaps``) and ``errors`` (dead
        letters so far: the viewer shows where patches could not be used) and ``gated`` (per
        slide x gated model, the patches its gate held back: ``gates.GateUnits``) and ``verdicts``
        (``gate_verdicts`` rows, drawn in the viewer)."""
        predictions, infos = inputs["results"], inputs["infos"]
        stats = (
            predictions
            | "KeyBySlideAndModel" >> beam.Map(_key_slide_model)
            | "CombineStats" >> beam.CombinePerKey(SlideStatsFn(self._specs))
            | "KeyStatsBySlide" >> beam.Map(_key_stats_by_slide)
        )
        keyed_infos = infos | "KeyInfos" >> beam.Map(_key_info)
        joined = {"info": keyed_infos, "stats": stats}
        if "masks" in inputs:
            joined["masks"] = inputs["masks"] | "KeyMasks" >> beam.Map(_key_info)
        if "gated" in inputs:
            joined["gated"] = inputs["gated"] | "KeyGatedOut" >> beam.Map(_key_info)
        if "verdicts" in inputs:
            joined["verdicts"] = inputs["verdicts"] | "KeyGateVerdicts" >> beam.Map(_key_info)
        if "errors" in inputs:
            joined["failed"] = inputs["errors"] | "FailedPatchBoxes" >> beam.FlatMap(failed_box)
        out = (
            joined
            | "JoinStatsToSlides" >> beam.CoGroupByKey()
            | "Summarize" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER, main="summaries")
        )
        return {"summaries": out.summaries, DEAD_LETTER: out[DEAD_LETTER]}


class _MeanEmbeddingFn(beam.CombineFn):
    """Embedding rows -> (count, sum of vectors) -> the mean vector."""

    def create_accumulator(self) -> tuple[int, np.ndarray | None]:
        return 0, None

    def add_input(self, acc: tuple, row: dict) -> tuple[int, np.ndarray]:
        n, total = acc
        vector = np.asarray(row["embedding"], np.float64)
        return n + 1, vector if total is None else total + vector

    def merge_accumulators(self, accs: Iterable[tuple]) -> tuple[int, np.ndarray | None]:
        n, total = 0, None
        for count, vectors in accs:
            if vectors is not None:
                n, total = n + count, vectors if total is None else total + vectors
        return n, total

    def extract_output(self, acc: tuple) -> tuple[int, np.ndarray | None]:
        n, total = acc
        return n, None if total is None else total / n


class SummarizeEmbeddings(beam.PTransform):
    """``patch_embeddings`` rows -> one ``slide_embeddings`` row per slide and model: the mean
    embedding and the patch count."""

    def __init__(self, specs: Sequence[ModelSpec], run_id: str) -> None:
        super().__init__()
        self._versions = {s.name: s.version for s in specs}
        self._run_id = run_id

    def _row(self, item: tuple[tuple[str, str], tuple[int, np.ndarray]]) -> dict:
        (slide_id, model_name), (n, mean) = item
        return {
            "slide_id": slide_id,
            "model_name": model_name,
            "model_version": self._versions[model_name],
            "patch_count": n,
            "embedding": mean.astype(np.float32).tolist(),
            "run_id": self._run_id,
        }

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return (
            rows
            | "KeyBySlideAndModel" >> beam.Map(_key_slide_model)
            | "MeanEmbedding" >> beam.CombinePerKey(_MeanEmbeddingFn())
            | "SlideEmbeddingRow" >> beam.Map(self._row)
        )


def case_summary(group_by: str, group_value: str, rows: Iterable[dict]) -> dict:
    """One ``case_summaries`` row from the slide summaries of one case and model.

    Means and fractions are weighted by each slide's patch count; maxima are maxima.
    """
    rows = sorted(rows, key=lambda r: r["slide_id"])
    n = sum(r["patch_count"] for r in rows)
    with_patches = [r for r in rows if r["patch_count"]]
    stats: dict[str, list[float]] = {
        "class_mean_prob": [],
        "class_fraction": [],
        "class_max_prob": [],
    }
    if with_patches:
        weights = np.array([r["patch_count"] for r in with_patches], dtype=np.float64)[:, None]
        for name in ("class_mean_prob", "class_fraction"):
            values = np.array([r[name] for r in with_patches])
            stats[name] = ((values * weights).sum(axis=0) / n).tolist()
        stats["class_max_prob"] = np.max([r["class_max_prob"] for r in with_patches], 0).tolist()
    areas = [r["tissue_area_mm2"] for r in rows if r["tissue_area_mm2"] is not None]
    return {
        "group_by": group_by,
        "group_value": group_value,
        "model_name": rows[0]["model_name"],
        "model_version": rows[0]["model_version"],
        "slide_count": len(rows),
        "slide_ids": [r["slide_id"] for r in rows],
        "patch_count": n,
        "tissue_area_mm2": float(sum(areas)) if areas else None,
        **stats,
        "run_id": rows[0]["run_id"],
    }


class _KeyByGroup(beam.DoFn):
    def __init__(self, group_by: str) -> None:
        self._group_by = group_by

    def process(self, row: dict) -> Iterator[tuple]:
        value = next(
            (m["value"] for m in row["metadata"] if m["key"] == self._group_by), "(missing)"
        )
        yield (value, row["model_name"]), row


class _CaseSummary(beam.DoFn):
    def __init__(self, group_by: str) -> None:
        self._group_by = group_by

    def process(self, element: tuple[tuple[str, str], Iterable[dict]]) -> Iterator[dict]:
        (value, _), rows = element
        yield case_summary(self._group_by, value, rows)


class SummarizeCases(beam.PTransform):
    """Slide summaries -> ``case_summaries`` rows, grouped by a slide-manifest column."""

    def __init__(self, group_by: str) -> None:
        super().__init__()
        self._group_by = group_by

    def expand(self, summaries: beam.PCollection) -> beam.PCollection:
        return (
            summaries
            | "KeyByGroup" >> beam.ParDo(_KeyByGroup(self._group_by))
            | "GroupSlides" >> beam.GroupByKey()
            | "CaseSummary" >> beam.ParDo(_CaseSummary(self._group_by))
        )
