"""Slides -> patch results (predictions, embeddings, segmentations), slide summaries, pictures,
case summaries and dead letters.

    python -m pipelines.slide_inference --slides slides.csv --model tumor=tumor.pt2 \
        --patch_px 224 --patch_mpp 0.5 --output results/

Extract (ReadManifest) -> PlanPatches -> ReadPatches -> RunModel/<name> per model (branches over
one decoded patch stream; a gated model's units go Gate/<name> -> ReadGatedPatches/<name>
first) -> SummarizeSlides (+ SummarizeEmbeddings, SlideModel/<head>) -> Write*.
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
from transforms.core.guard import GUARD
from transforms.core.outcome import OUTCOME, JudgeRun, Outcome
from transforms.core.progress import slide_progress_line
from transforms.io.destinations import WriteTables, report_dir
from transforms.io.incremental import SKIPPED, SkipExisting
from transforms.io.manifests import ReadManifest
from transforms.io.record_run import RecordRun
from transforms.io.schemas import CASE_SUMMARIES, ERRORS, RUNS, SLIDE_SUMMARIES, Table
from transforms.models.kinds import KINDS
from transforms.models.kinds.embedding import KIND as EMBEDDING
from transforms.slides.compose import StageConfig, StageCounts, wire_heads, wire_models
from transforms.slides.features_h5 import FEATURES_H5, EncoderGrid, WriteFeaturesH5
from transforms.slides.gates import GATE_VERDICTS, ExportGateVerdicts
from transforms.slides.heads import (
    ATTENTION,
    CASE_PREDICTIONS,
    PATCH_ATTENTION,
    SLIDE_PREDICTIONS,
    PredictCases,
)
from transforms.slides.manifest_rows import PATCH_ROWS, SLIDE_ROWS
from transforms.slides.plan_grid import PlanGridPatches
from transforms.slides.plan_manifest import PlanManifestPatches
from transforms.slides.qupath import ExportQuPath
from transforms.slides.stitch import StitchClassMaps, StitchOutputs
from transforms.slides.summaries import (
    THUMBNAILS,
    SummarizeCases,
    SummarizeEmbeddings,
    SummarizeSlides,
)
from transforms.slides.survey import SLIDE_INFO
from transforms.slides.viewer import VIEWER


def build(pipeline: beam.Pipeline, cfg: SlideJobConfig) -> dict[str, beam.PCollection]:
    """Wire the slide pipeline; return its output PCollections (before the writes)."""
    assert cfg.slides is not None  # a batch job's config (a stream's has none)
    slides = pipeline | "ReadSlideManifest" >> ReadManifest(cfg.slides, SLIDE_ROWS)
    errors = [slides[DEAD_LETTER]]
    slide_rows, skipped = slides["rows"], None
    if cfg.skip_existing:
        done = tuple((SLIDE_SUMMARIES, m.name, m.version) for m in cfg.models)
        kept = slide_rows | "SkipExisting" >> SkipExisting(cfg.destination, "slide_id", done)
        slide_rows, skipped = kept["rows"], kept[SKIPPED]
    if cfg.patches:
        patches = pipeline | "ReadPatchManifest" >> ReadManifest(cfg.patches, PATCH_ROWS)
        errors.append(patches[DEAD_LETTER])
        plan_input = {"slides": slide_rows, "patches": patches["rows"]}
        if skipped is not None:
            plan_input["skipped"] = skipped
        planned = plan_input | "PlanPatches" >> PlanManifestPatches(cfg.patch_geometries)
    else:
        planned = slide_rows | "PlanPatches" >> PlanGridPatches(cfg.patch_geometries)
    outputs = infer(planned, cfg, errors)
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


def infer(planned: dict, cfg: SlideJobConfig, errors: list) -> dict[str, beam.PCollection]:
    """Planned work units (``PlanPatches``' outputs) -> every result: the models' rows, slide
    summaries and pictures, masks, QuPath files, heads; ``errors`` (the dead letters so far)
    with this part's added, flattened. What the batch pipeline and the stream share."""
    comp = cfg.composition
    errors += [planned[DEAD_LETTER]]
    staged = wire_models(planned["units"], cfg.models, stage_config(cfg))
    errors += staged.errors
    by_output: dict[str, list[beam.PCollection]] = {}
    for spec in cfg.models:
        by_output.setdefault(spec.kind.output, []).append(staged.rows[spec.name])
    results = {
        output: rows | f"All{output.title()}" >> beam.Flatten()
        for output, rows in by_output.items()
    }
    every_result = list(results.values()) | "AllResults" >> beam.Flatten()
    folder = qupath_dir(cfg)
    summary_inputs = {"results": every_result, "infos": planned[SLIDE_INFO]}
    if staged.gated:
        summary_inputs["gated"] = staged.gated | "AllGatedOut" >> beam.Flatten()
        verdict_rows = staged.verdicts | "AllGateVerdicts" >> beam.Flatten()
        if cfg.heatmaps:
            summary_inputs["verdicts"] = verdict_rows
    if staged.class_maps and cfg.heatmaps:
        stitched = (
            staged.class_maps
            | "AllClassMaps" >> beam.Flatten()
            | "StitchClassMaps"
            >> StitchClassMaps(
                cfg.models,
                StitchOutputs(
                    f"{cfg.destination.artifacts}/{MASKS}/{cfg.run.run_id}",
                    folder,
                    cfg.qupath_min_region_um2,
                ),
            )
        )
        errors.append(stitched[DEAD_LETTER])
        summary_inputs["masks"] = stitched["masks"]
    if cfg.heatmaps:  # the viewer shows where patches could not be used
        summary_inputs["errors"] = errors | "ErrorsBeforeSummaries" >> beam.Flatten()
    summarized = summary_inputs | "SummarizeSlides" >> SummarizeSlides(
        cfg.models, picture_dirs(cfg), cfg.run.run_id, cfg.min_coverage, cfg.viewer_mpp
    )
    errors.append(summarized[DEAD_LETTER])
    if folder is not None and any(spec.kind.exports_qupath for spec in cfg.models):
        exported = every_result | "ExportQuPath" >> ExportQuPath(
            cfg.models, folder, cfg.qupath_min_prob, cfg.qupath_merge
        )
        errors.append(exported[DEAD_LETTER])
    if cfg.features_h5 and EMBEDDING.output in results:
        h5 = (results[EMBEDDING.output], planned[SLIDE_INFO]) | "WriteFeaturesH5" >> (
            WriteFeaturesH5(encoder_grids(cfg), features_h5_dir(cfg))
        )
        errors.append(h5[DEAD_LETTER])
    if comp.heads:
        heads = wire_heads(
            results[EMBEDDING.output],
            planned[SLIDE_INFO],
            comp.heads,
            comp.hints,
            run_id=cfg.run.run_id,
            max_patches=comp.slide_max_patches,
            picture_dir=picture_dirs(cfg).get(ATTENTION),
            group_by=cfg.group_by,
        )
        errors += heads.errors
        results[SLIDE_PREDICTIONS.name] = heads.predictions | "AllSlidePredictions" >> (
            beam.Flatten()
        )
        results[PATCH_ATTENTION.name] = heads.attention | "AllPatchAttention" >> beam.Flatten()
    if staged.gated:
        results[GATE_VERDICTS.name] = verdict_rows
        if folder is not None:
            exported = verdict_rows | "ExportGateVerdicts" >> ExportGateVerdicts(folder)
            errors.append(exported[DEAD_LETTER])
    if EMBEDDING.output in results:
        results["slide_embeddings"] = results[EMBEDDING.output] | "SummarizeEmbeddings" >> (
            SummarizeEmbeddings(cfg.models, cfg.run.run_id)
        )
    outputs = {
        **results,
        "summaries": summarized["summaries"],
        "errors": errors | "AllErrors" >> beam.Flatten(),
        GUARD: staged.guard | "AllGuard" >> beam.Flatten(),
    }
    if cfg.group_by:
        outputs["cases"] = outputs["summaries"] | "SummarizeCases" >> SummarizeCases(cfg.group_by)
        if SLIDE_PREDICTIONS.name in outputs:
            outputs[CASE_PREDICTIONS.name] = outputs[SLIDE_PREDICTIONS.name] | (
                "PredictCases" >> PredictCases(cfg.group_by)
            )
    return outputs


def stage_config(cfg: SlideJobConfig) -> StageConfig:
    """How the job's patch models run (``compose.wire_models``)."""
    return StageConfig(
        tuple(g.patch_px for g in cfg.patch_geometries),
        cfg.batching,
        cfg.run.run_id,
        cfg.guard,
        cfg.composition.gates,
        cfg.composition.hints,
    )


QUPATH = "qupath"
"""The folder of the QuPath GeoJSON files (one per slide and model whose kind exports them:
patch detections, or a segmentation's class regions)."""
MASKS = "masks"
"""The folder of the stitched class masks (pyramidal OME-TIFFs, one per slide x segmentation
model)."""


def picture_dirs(cfg: SlideJobConfig) -> dict[str, str]:
    """Picture name (an output kind's ``picture``, or ``thumbnails``) -> the folder of this
    run's pictures of it (none with --no_heatmaps).

    Each run's pictures go in their own folder: runs into one folder never overwrite each other.
    """
    if not cfg.heatmaps:
        return {}
    names = [spec.kind.picture for spec in cfg.models if spec.kind.picture] + [THUMBNAILS, VIEWER]
    if cfg.composition.heads:
        names.append(ATTENTION)
    return {name: f"{cfg.destination.artifacts}/{name}/{cfg.run.run_id}" for name in names}


def features_h5_dir(cfg: SlideJobConfig) -> str:
    """This run's folder of TRIDENT/CLAM-style HDF5 files (``--features_h5``)."""
    return f"{cfg.destination.artifacts}/{FEATURES_H5}/{cfg.run.run_id}"


def encoder_grids(cfg: SlideJobConfig) -> dict[str, EncoderGrid]:
    """Each model's patch size and overlap, for the HDF5 files' attributes."""
    geometries = cfg.patch_geometries
    return {
        spec.name: EncoderGrid(
            geometries[spec.geometry].patch_px, geometries[spec.geometry].overlap_px
        )
        for spec in cfg.models
    }


def qupath_dir(cfg: SlideJobConfig) -> str | None:
    """This run's QuPath folder, when pictures are on and a model's kind exports detections or
    class regions."""
    if not cfg.heatmaps or not (
        cfg.composition.gates
        or any(spec.kind.exports_qupath or spec.kind.class_map for spec in cfg.models)
    ):
        return None
    return f"{cfg.destination.artifacts}/{QUPATH}/{cfg.run.run_id}"


def tables(cfg: SlideJobConfig) -> dict[str, Table]:
    """``build()``'s output name -> the table it is written to, for a run of ``cfg``."""
    out = {}
    for spec in cfg.models:
        out[spec.kind.output] = spec.kind.table
        if spec.kind.slide_table is not None:
            out[spec.kind.slide_table.name] = spec.kind.slide_table
    out.update(summaries=SLIDE_SUMMARIES, errors=ERRORS)
    if cfg.composition.gates:
        out[GATE_VERDICTS.name] = GATE_VERDICTS
    if cfg.composition.heads:
        out[SLIDE_PREDICTIONS.name] = SLIDE_PREDICTIONS
        out[PATCH_ATTENTION.name] = PATCH_ATTENTION
    if cfg.group_by:
        out["cases"] = CASE_SUMMARIES
        if cfg.composition.heads:
            out[CASE_PREDICTIONS.name] = CASE_PREDICTIONS
    return out


def output_tables(cfg: SlideJobConfig) -> list[str]:
    """The tables a run of ``cfg`` writes."""
    return [table.name for table in tables(cfg).values()] + [RUNS.name]


def write(outputs: dict[str, beam.PCollection], cfg: SlideJobConfig) -> None:
    """Write every output table to ``cfg.destination``, then record the run (its ``runs`` row
    and its report) once the writes are done."""
    schemas = tables(cfg)
    by_table = {schemas[name].name: rows for name, rows in outputs.items() if name in schemas}
    written = by_table | "WriteResults" >> WriteTables(
        cfg.destination, cfg.run, tuple(schemas.values())
    )
    if cfg.info is None:  # a config built by hand (tests): nothing to record
        return
    patches = [outputs[kind.output] for kind in KINDS.values() if kind.output in outputs]
    sections = {"slides": outputs["summaries"]}
    if "cases" in outputs:
        sections["cases"] = outputs["cases"]
    stages = {}
    if cfg.composition.edges():
        counted: tuple[beam.PCollection, ...] = (outputs["summaries"],)
        if SLIDE_PREDICTIONS.name in outputs:
            sections["heads"] = outputs[SLIDE_PREDICTIONS.name]
            counted += (outputs[SLIDE_PREDICTIONS.name],)
        stages["stages"] = counted | "StageCounts" >> StageCounts()
    _ = {
        OUTCOME: outputs[OUTCOME],
        "tables": by_table,
        "written": written,
        "errors": outputs["errors"],
        "units": patches | "AllPatchRows" >> beam.Flatten(),
        "sections": sections,
        GUARD: outputs[GUARD],
        **stages,
    } | "RecordRun" >> RecordRun(cfg.info, cfg.destination, report_dir(cfg.destination, cfg.run))


def run(argv: list[str] | None = None) -> PipelineResult:
    """Parse flags, validate them (``ConfigError`` before anything starts), run, report."""
    options = pipeline_options(list(sys.argv[1:] if argv is None else argv), SLIDES)
    cfg = slide_job_config(options)
    check_slide_inputs(cfg, options)
    for model in cfg.models:  # said once, at launch; recorded in the runs row too
        for override in model.overrides:
            print(f"{model.name}: {override}", file=sys.stderr)

    def wire(pipeline: beam.Pipeline) -> None:
        write(build(pipeline, cfg), cfg)

    def report(result: PipelineResult, elapsed: float) -> Outcome:
        pictures = picture_dirs(cfg)
        if qupath_dir(cfg) is not None:
            pictures["QuPath GeoJSON"] = str(qupath_dir(cfg))
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
