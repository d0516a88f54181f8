"""Slides processed as they land: Pub/Sub notifications -> the slide pipeline's stages -> each
slide's rows, once, in a folder (local or gs://) or in BigQuery.

    python -m pipelines.slide_stream --subscription projects/P/subscriptions/scans \
        --model tumor=gs://B/tumor.pt2 --output gs://B/stream --window_s 60

ReadNotifications (Cloud Storage objects; DICOM series once quiet and readable; duplicates
dropped) -> RecordLanded (the inbox) -> CheckSlideRows -> Windows -> PlanPatches -> the slide
pipeline's model stages and summaries (``slide_inference.infer``) -> WriteKeyedTables (a folder:
one file per table and slide, replaced whole; BigQuery: a keyed merge per table and window) ->
MarkDone; RecordStream rewrites the stream's runs row after each window. A separate entry point,
not a flag of the batch one: its input (subscriptions, not manifests), its end (none: it runs
until drained) and its writes differ; the stages between are the batch pipeline's own.
"""

from __future__ import annotations

import logging
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.runners.runner import PipelineResult
from apache_beam.transforms.window import FixedWindows

from pipelines.flags import STREAM
from pipelines.launch import cli, pipeline_options
from pipelines.options import LOCAL_RUNNER, SlideJobConfig, StreamConfig, stream_config
from pipelines.preflight import check_slide_inputs
from pipelines.slide_inference import infer, tables
from transforms.core.errors import DEAD_LETTER
from transforms.io.keyed_writes import WriteKeyedTables
from transforms.io.manifests import CheckRows
from transforms.slides.manifest_rows import SLIDE_ROWS
from transforms.slides.plan_grid import PlanGridPatches
from transforms.slides.reader import unreadable
from transforms.stream.inbox import MarkDone, RecordLanded, inbox_folder, pending, restamped
from transforms.stream.read import IGNORED, ReadNotifications
from transforms.stream.record import RecordStream, landed_row, with_latency
from transforms.stream.series import FirstOfEach


def build(pipeline: beam.Pipeline, cfg: SlideJobConfig, stream: StreamConfig) -> dict:
    """Wire the stream; return its outputs (windowed, before the writes)."""
    read = pipeline | "ReadNotifications" >> ReadNotifications(
        stream.subscriptions, unreadable, stream.dicomweb_roots, stream.quiet_s, stream.max_wait_s
    )
    folder = inbox_folder(cfg.destination)
    landed = read["slides"] | "RecordLanded" >> RecordLanded(folder)
    left = pending(folder)  # slides a stopped stream had taken and not finished
    if left:  # once each: an updated Dataflow job may still hold some of them in flight
        taken_up = pipeline | "TakeUpInbox" >> beam.Create(left)
        landed = (
            (landed, taken_up) | "AllLanded" >> beam.Flatten() | "OncePerSlide" >> FirstOfEach()
        )
    windows = FixedWindows(stream.window_s)  # of landing time: every input is stamped as it lands
    rows = (
        landed
        | "StampLanding" >> beam.Map(restamped)
        | "ToSlideRows" >> beam.Map(landed_row)
        | "Windows" >> beam.WindowInto(windows)
        | "CheckSlideRows" >> CheckRows(SLIDE_ROWS, "CheckSlideRows")
    )
    planned = rows["rows"] | "PlanPatches" >> PlanGridPatches(cfg.patch_geometries)
    errors = [rows[DEAD_LETTER]]
    outputs = infer(planned, cfg, errors)
    outputs["summaries"] = outputs["summaries"] | "Latency" >> beam.Map(with_latency)
    for name, part in (("read_errors", read[DEAD_LETTER]), (IGNORED, read[IGNORED])):
        outputs[name] = (
            part
            | f"Stamp/{name}" >> beam.Map(restamped)
            | f"Windows/{name}" >> beam.WindowInto(windows)
        )
    return outputs


def write(outputs: dict, cfg: SlideJobConfig) -> None:
    """Each table's rows, once per slide (``WriteKeyedTables``); each slide marked done once all
    of its rows are in place; the stream's runs row after each window."""
    schemas = tables(cfg)
    by_table = {schemas[n].name: rows for n, rows in outputs.items() if n in schemas}
    errors = (outputs["errors"], outputs["read_errors"]) | "EveryDeadLetter" >> beam.Flatten()
    by_table[schemas["errors"].name] = errors
    written = by_table | "WriteResults" >> WriteKeyedTables(
        cfg.destination, cfg.run, schemas.values()
    )
    _ = written | "MarkDone" >> MarkDone(inbox_folder(cfg.destination))
    if cfg.info is not None:
        _ = {
            "summaries": outputs["summaries"],
            DEAD_LETTER: errors,
            IGNORED: outputs[IGNORED],
        } | "RecordStream" >> RecordStream(cfg.info, cfg.destination)


def run(argv: list[str] | None = None) -> PipelineResult:
    """Parse and check the flags (``ConfigError`` before anything starts), then run the stream
    until it is cancelled or drained."""
    options = pipeline_options(list(sys.argv[1:] if argv is None else argv), STREAM)
    options.view_as(StandardOptions).streaming = True
    if not options.view_as(StandardOptions).runner:
        options.view_as(StandardOptions).runner = "DirectRunner"  # streaming: the direct runner
    cfg, stream = stream_config(options)
    check_slide_inputs(cfg, options)
    pipeline = beam.Pipeline(options=options)
    write(build(pipeline, cfg, stream), cfg)
    logging.getLogger(__name__).info(
        "stream %s reading %s; writing to %s",
        cfg.run.run_id,
        ", ".join(stream.subscriptions),
        cfg.destination.describe(),
    )
    result = pipeline.run()
    if options.view_as(StandardOptions).runner in ("DirectRunner", LOCAL_RUNNER):
        result.wait_until_finish()
    return result


SUMMARY = (
    "Process whole-slide images as they land (Cloud Storage and DICOM store notifications on "
    "Pub/Sub): the slide pipeline's models, each slide's rows once."
)


def main() -> None:
    cli(run, "pipelines.slide_stream", SUMMARY, STREAM)


if __name__ == "__main__":
    main()
