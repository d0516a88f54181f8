"""Slides -> patch results (predictions, embeddings, segmentations), slide summaries, pictures,
case summaries and dead letters.

    python -m pipelines.slide_inference --slides slides.csv --model tumor=tumor.pt2 \
        --patch_px 224 --patch_mpp 0.5 --output results/

Extract (ReadManifest) -> PlanPatches -> ReadPatches -> RunModel/<name> per model (branches over
one decoded patch stream) -> SummarizeSlides (+ SummarizeEmbeddings) -> Write*.
"""

from __future__ import annotations

import sys

import apache_beam as beam
from apache_beam.runners.runner import PipelineResult

from pipelines.flags import SLIDES
from pipelines.launch import cli, launch, pipeline_options
from pipelines.options import SlideJobConfig, slide_job_config
from pipelines.preflight import check_slide_inputs
from pipelines.report import print_report
from transforms.core.errors import DEAD_LETTER
from transforms.core.outcome import OUTCOME, JudgeRun, Outcome
from transforms.core.progress import slide_progress_line
from transforms.io.destinations import WriteTables, report_dir
from transforms.io.incremental import SKIPPED, SkipExisting
from transforms.io.manifests import ReadManifest
from transforms.io.record_run import RecordRun
from transforms.io.schemas import (
    CASE_SUMMARIES,
    ERRORS,
    PATCH_EMBEDDINGS,
    PATCH_PREDICTIONS,
    PATCH_SEGMENTATIONS,
    RUNS,
    SLIDE_EMBEDDINGS,
    SLIDE_SUMMARIES,
)
from transforms.models.patch_inference import RunModel
from transforms.models.precision import GUARD
from transforms.slides.plan_grid import PlanGridPatches
from transforms.slides.plan_manifest import PlanManifestPatches
from transforms.slides.qupath import ExportQuPath
from transforms.slides.read_patches import ReadPatches, SplitByGeometry
from transforms.slides.summaries import SummarizeCases, SummarizeEmbeddings, SummarizeSlides
from transforms.slides.survey import SLIDE_INFO


def build(pipeline: beam.Pipeline, cfg: SlideJobConfig) -> dict[str, beam.PCollection]:
    """Wire the slide pipeline; return its output PCollections (before the writes)."""
    slides = pipeline | "ReadSlideManifest" >> ReadManifest(cfg.slides, "slides")
    errors = [slides[DEAD_LETTER]]
    slide_rows, skipped = slides["rows"], None
    if cfg.skip_existing:
        done = tuple((SLIDE_SUMMARIES, m.name, m.version) for m in cfg.models)
        kept = slide_rows | "SkipExisting" >> SkipExisting(cfg.destination, "slide_id", done)
        slide_rows, skipped = kept["rows"], kept[SKIPPED]
    if cfg.patches:
        patches = pipeline | "ReadPatchManifest" >> ReadManifest(cfg.patches, "patches")
        errors.append(patches[DEAD_LETTER])
        plan_input = {"slides": slide_rows, "patches": patches["rows"]}
        if skipped is not None:
            plan_input["skipped"] = skipped
        planned = plan_input | "PlanPatches" >> PlanManifestPatches(cfg.patch_geometries)
    else:
        planned = slide_rows | "PlanPatches" >> PlanGridPatches(cfg.patch_geometries)
    read = planned["units"] | "ReadPatches" >> ReadPatches()
    errors += [planned[DEAD_LETTER], read[DEAD_LETTER]]
    streams = read["patches"] | "SplitByGeometry" >> SplitByGeometry(len(cfg.patch_geometries))
    by_kind: dict[str, list[beam.PCollection]] = {kind: [] for kind in KIND_OUTPUTS}
    guard = []
    for spec in cfg.models:
        patch_px = cfg.patch_geometries[spec.geometry].patch_px
        inferred = streams[spec.geometry] | f"RunModel/{spec.name}" >> RunModel(
            spec, cfg.batching, cfg.run.run_id, patch_px, cfg.guard
        )
        by_kind[spec.output_kind].append(inferred["rows"])
        errors.append(inferred[DEAD_LETTER])
        guard.append(inferred[GUARD])
    results = {
        KIND_OUTPUTS[kind]: rows | f"All{KIND_OUTPUTS[kind].title()}" >> beam.Flatten()
        for kind, rows in by_kind.items()
        if rows
    }
    every_result = list(results.values()) | "AllResults" >> beam.Flatten()
    summarized = (every_result, planned[SLIDE_INFO]) | "SummarizeSlides" >> SummarizeSlides(
        cfg.models, picture_dirs(cfg), cfg.run.run_id
    )
    errors.append(summarized[DEAD_LETTER])
    if cfg.heatmaps:
        folder = f"{cfg.destination.artifacts}/{QUPATH}/{cfg.run.run_id}"
        exported = every_result | "ExportQuPath" >> ExportQuPath(
            cfg.models, folder, cfg.qupath_min_prob
        )
        errors.append(exported[DEAD_LETTER])
    if "embeddings" in results:
        results["slide_embeddings"] = results["embeddings"] | "SummarizeEmbeddings" >> (
            SummarizeEmbeddings(cfg.models, cfg.run.run_id)
        )
    outputs = {
        **results,
        "summaries": summarized["summaries"],
        "errors": errors | "AllErrors" >> beam.Flatten(),
        GUARD: guard | "AllGuard" >> beam.Flatten(),
    }
    if cfg.group_by:
        outputs["cases"] = outputs["summaries"] | "SummarizeCases" >> SummarizeCases(cfg.group_by)
    judged = {
        "inputs": slides["rows"],
        "rejected": slides[DEAD_LETTER],
        "results": outputs["summaries"],
        "errors": outputs["errors"],
    }
    if skipped is not None:
        judged["skipped_ids"] = skipped
    outputs[OUTCOME] = judged | "JudgeRun" >> JudgeRun("slide_id", cfg.max_failed_fraction)
    return outputs


PICTURES = {
    "classification": "heatmaps",
    "segmentation": "segmentations",
    "thumbnail": "thumbnails",
}
QUPATH = "qupath"
"""The folder of the QuPath GeoJSON files (one per slide and classifying model)."""
"""The picture each output kind gets per slide (embeddings get none), and its folder's name;
every slide also gets a thumbnail."""


def picture_dirs(cfg: SlideJobConfig) -> dict[str, str]:
    """Output kind -> the folder of this run's pictures of that kind (none with --no_heatmaps).

    Each run's pictures go in their own folder: runs into one folder never overwrite each other.
    """
    if not cfg.heatmaps:
        return {}
    kinds = {spec.output_kind for spec in cfg.models} | {"thumbnail"}
    return {
        kind: f"{cfg.destination.artifacts}/{folder}/{cfg.run.run_id}"
        for kind, folder in PICTURES.items()
        if kind in kinds
    }


def output_tables(cfg: SlideJobConfig) -> list[str]:
    """The tables a run of ``cfg`` writes."""
    kinds = {spec.output_kind for spec in cfg.models}
    names = [TABLES[KIND_OUTPUTS[kind]].name for kind in KIND_OUTPUTS if kind in kinds]
    if "embedding" in kinds:
        names.append(SLIDE_EMBEDDINGS.name)
    names.append(SLIDE_SUMMARIES.name)
    if cfg.group_by:
        names.append(CASE_SUMMARIES.name)
    return [*names, ERRORS.name, RUNS.name]


KIND_OUTPUTS = {
    "classification": "predictions",
    "embedding": "embeddings",
    "segmentation": "segmentations",
}
"""The output of ``build`` that each model output kind's rows go to."""

TABLES = {
    "predictions": PATCH_PREDICTIONS,
    "embeddings": PATCH_EMBEDDINGS,
    "segmentations": PATCH_SEGMENTATIONS,
    "slide_embeddings": SLIDE_EMBEDDINGS,
    "summaries": SLIDE_SUMMARIES,
    "cases": CASE_SUMMARIES,
    "errors": ERRORS,
}
"""The table each output of ``build`` is written to."""


def write(outputs: dict[str, beam.PCollection], cfg: SlideJobConfig) -> None:
    """Write every output table to ``cfg.destination``, then record the run (its ``runs`` row
    and its report) once the writes are done."""
    tables = {TABLES[name].name: rows for name, rows in outputs.items() if name in TABLES}
    written = tables | "WriteResults" >> WriteTables(cfg.destination, cfg.run)
    if cfg.info is None:  # a config built by hand (tests): nothing to record
        return
    patches = [outputs[name] for name in KIND_OUTPUTS.values() if name in outputs]
    sections = {"slides": outputs["summaries"]}
    if "cases" in outputs:
        sections["cases"] = outputs["cases"]
    _ = {
        OUTCOME: outputs[OUTCOME],
        "tables": tables,
        "written": written,
        "errors": outputs["errors"],
        "units": patches | "AllPatchRows" >> beam.Flatten(),
        "sections": sections,
        GUARD: outputs[GUARD],
    } | "RecordRun" >> RecordRun(cfg.info, cfg.destination, report_dir(cfg.destination, cfg.run))


def run(argv: list[str] | None = None) -> PipelineResult:
    """Parse flags, validate them (``ConfigError`` before anything starts), run, report."""
    options = pipeline_options(list(sys.argv[1:] if argv is None else argv), SLIDES)
    cfg = slide_job_config(options)
    check_slide_inputs(cfg, options)

    def wire(pipeline: beam.Pipeline) -> None:
        write(build(pipeline, cfg), cfg)

    def report(result: PipelineResult, elapsed: float) -> Outcome:
        pictures = {PICTURES[kind]: folder for kind, folder in picture_dirs(cfg).items()}
        if cfg.heatmaps:
            pictures["QuPath GeoJSON"] = f"{cfg.destination.artifacts}/{QUPATH}/{cfg.run.run_id}"
        return print_report(
            result,
            cfg.destination,
            cfg.run.run_id,
            elapsed,
            output_tables(cfg),
            pictures,
            report_dir(cfg.destination, cfg.run),
        )

    return launch(
        options, cfg.destination, cfg.info, wire, slide_progress_line, len(cfg.models), report
    )


SUMMARY = (
    "Run patch models over whole-slide images: patch predictions, slide and case summaries, "
    "heatmaps and dead letters."
)


def main() -> None:
    cli(run, "pipelines.slide_inference", SUMMARY, SLIDES)


if __name__ == "__main__":
    main()
