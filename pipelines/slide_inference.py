"""Slides -> patch predictions, slide summaries, heatmaps, case summaries and dead letters.

    python -m pipelines.slide_inference --slides slides.csv --model tumor=tumor.pt2 \
        --patch_px 224 --patch_mpp 0.5 --output results/

Extract (ReadManifest) -> PlanPatches -> ReadPatches -> RunModel/<name> per model (branches over
one decoded patch stream) -> SummarizeSlides -> Write*.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult

from pipelines.launch import cli, launch
from pipelines.options import SlideJobConfig, slide_job_config
from pipelines.report import print_report
from transforms.aggregate import SummarizeCases, SummarizeSlides
from transforms.errors import DEAD_LETTER
from transforms.inference import RunModel
from transforms.manifests import ReadManifest
from transforms.progress import slide_progress_line
from transforms.sinks import (
    CASE_SUMMARIES,
    PATCH_PREDICTIONS,
    SLIDE_SUMMARIES,
    WriteErrors,
    WriteTable,
)
from transforms.slides import SLIDE_INFO, PlanPatches, ReadPatches


def build(pipeline: beam.Pipeline, cfg: SlideJobConfig) -> dict[str, beam.PCollection]:
    """Wire the slide pipeline; return its output PCollections (before the writes)."""
    slides = pipeline | "ReadSlideManifest" >> ReadManifest(cfg.slides, "slides")
    errors = [slides[DEAD_LETTER]]
    plan_input = slides["rows"]
    if cfg.patches:
        patches = pipeline | "ReadPatchManifest" >> ReadManifest(cfg.patches, "patches")
        errors.append(patches[DEAD_LETTER])
        plan_input = (slides["rows"], patches["rows"])
    planned = plan_input | "PlanPatches" >> PlanPatches(cfg.patching)
    read = planned["units"] | "ReadPatches" >> ReadPatches()
    errors += [planned[DEAD_LETTER], read[DEAD_LETTER]]
    predictions = []
    for spec in cfg.models:
        inferred = read["patches"] | f"RunModel/{spec.name}" >> RunModel(
            spec, cfg.batching, cfg.run_id, cfg.patching.patch_px
        )
        predictions.append(inferred["predictions"])
        errors.append(inferred[DEAD_LETTER])
    all_predictions = predictions | "AllPredictions" >> beam.Flatten()
    heatmap_dir = f"{cfg.output.rstrip('/')}/heatmaps" if cfg.heatmaps else None
    summarized = (all_predictions, planned[SLIDE_INFO]) | "SummarizeSlides" >> SummarizeSlides(
        cfg.models, heatmap_dir, cfg.run_id
    )
    errors.append(summarized[DEAD_LETTER])
    outputs = {
        "predictions": all_predictions,
        "summaries": summarized["summaries"],
        "errors": errors | "AllErrors" >> beam.Flatten(),
    }
    if cfg.group_by:
        outputs["cases"] = outputs["summaries"] | "SummarizeCases" >> SummarizeCases(cfg.group_by)
    return outputs


def write(outputs: dict[str, beam.PCollection], cfg: SlideJobConfig) -> None:
    """Write every output table under ``cfg.output``."""
    outputs["predictions"] | "WritePredictions" >> WriteTable(
        PATCH_PREDICTIONS, cfg.output, cfg.run_id
    )
    outputs["summaries"] | "WriteSlideSummaries" >> WriteTable(
        SLIDE_SUMMARIES, cfg.output, cfg.run_id
    )
    if "cases" in outputs:
        outputs["cases"] | "WriteCaseSummaries" >> WriteTable(
            CASE_SUMMARIES, cfg.output, cfg.run_id
        )
    outputs["errors"] | "WriteErrors" >> WriteErrors(cfg.output, cfg.run_id)


def run(argv: list[str] | None = None) -> PipelineResult:
    """Parse flags, validate them (``ConfigError`` before anything starts), run, report."""
    options = PipelineOptions(argv)
    cfg = slide_job_config(options)

    def wire(pipeline: beam.Pipeline) -> None:
        write(build(pipeline, cfg), cfg)

    result, elapsed = launch(options, wire, slide_progress_line, len(cfg.models))
    print_report(result, cfg.output, cfg.run_id, elapsed)
    return result


def main() -> None:
    cli(run)


if __name__ == "__main__":
    main()
