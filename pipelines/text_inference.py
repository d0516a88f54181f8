"""Documents -> entities, labels or embeddings per model, plus dead letters.

    python -m pipelines.text_inference --documents papers.jsonl \
        --model ner=models/ner/ --task ner=token-classification --output results/

ReadDocuments -> RunModel/<name> per model (Tokenize -> SortAndBatch -> Infer -> MergeWindows)
-> Write*.
"""

from __future__ import annotations

import sys

import apache_beam as beam
from apache_beam.runners.runner import PipelineResult

from pipelines.flags import TEXT
from pipelines.launch import cli, launch, pipeline_options
from pipelines.options import TextJobConfig, text_job_config
from pipelines.preflight import check_text_inputs
from pipelines.report import print_text_report
from transforms.core.errors import DEAD_LETTER
from transforms.core.guard import GUARD
from transforms.core.outcome import OUTCOME, JudgeRun, Outcome
from transforms.core.progress import text_progress_line
from transforms.io.destinations import WriteTables, report_dir
from transforms.io.incremental import SKIPPED, SkipExisting
from transforms.io.manifests import ReadManifest
from transforms.io.record_run import RecordRun
from transforms.io.run_report import text_document_row, text_labels
from transforms.io.schemas import ERRORS
from transforms.text.documents import DOCUMENT_ROWS
from transforms.text.inference import RunTextModel
from transforms.text.tasks import task


def build(pipeline: beam.Pipeline, cfg: TextJobConfig) -> dict[str, beam.PCollection]:
    """Wire the text pipeline; return one row PCollection per table, and the errors."""
    docs = pipeline | "ReadDocuments" >> ReadManifest(cfg.documents, DOCUMENT_ROWS, cfg.columns)
    errors = [docs[DEAD_LETTER]]
    rows = docs["rows"]
    judged = {"inputs": rows, "rejected": docs[DEAD_LETTER]}
    if cfg.skip_existing:
        done = tuple((task(m.task).table, m.name, m.version) for m in cfg.models)
        kept = rows | "SkipExisting" >> SkipExisting(cfg.destination, "doc_id", done)
        rows, judged["skipped_ids"] = kept["rows"], kept[SKIPPED]
    by_table: dict[str, list[beam.PCollection]] = {}
    guard = []
    for spec in cfg.models:
        out = rows | f"RunModel/{spec.name}" >> RunTextModel(
            spec, cfg.windows, cfg.batching, cfg.run.run_id, cfg.guard
        )
        by_table.setdefault(task(spec.task).table.name, []).append(out["rows"])
        errors.append(out[DEAD_LETTER])
        guard.append(out[GUARD])
    outputs = {
        name: rows | f"All/{name}" >> beam.Flatten() for name, rows in sorted(by_table.items())
    }
    outputs[ERRORS.name] = errors | "AllErrors" >> beam.Flatten()
    results = [rows for name, rows in outputs.items() if name != ERRORS.name]
    judged["results"] = results | "AllResults" >> beam.Flatten()
    judged["errors"] = outputs[ERRORS.name]
    outputs[OUTCOME] = judged | "JudgeRun" >> JudgeRun("doc_id", cfg.max_failed_fraction)
    outputs[GUARD] = guard | "AllGuard" >> beam.Flatten(pipeline=pipeline)
    return outputs


def write(outputs: dict[str, beam.PCollection], cfg: TextJobConfig) -> None:
    """Write every output table to ``cfg.destination``, then record the run (its ``runs`` row
    and its report) once the writes are done."""
    tables = {name: rows for name, rows in outputs.items() if name not in (OUTCOME, GUARD)}
    schemas = [task(m.task).table for m in cfg.models] + [ERRORS]
    written = tables | "WriteResults" >> WriteTables(cfg.destination, cfg.run, schemas)
    if cfg.info is None:  # a config built by hand (tests): nothing to record
        return
    results = [rows for name, rows in tables.items() if name != ERRORS.name]
    every = results | "AllResultRows" >> beam.Flatten(pipeline=outputs[OUTCOME].pipeline)
    labels = (
        every
        | "Labels" >> beam.FlatMap(text_labels)
        | "CountLabels" >> beam.combiners.Count.PerElement()
    )
    _ = {
        OUTCOME: outputs[OUTCOME],
        "tables": tables,
        "written": written,
        "errors": outputs[ERRORS.name],
        "units": every,
        "sections": {
            "documents": every | "DocumentRows" >> beam.Map(text_document_row),
            "labels": labels,
        },
        GUARD: outputs[GUARD],
    } | "RecordRun" >> RecordRun(cfg.info, cfg.destination, report_dir(cfg.destination, cfg.run))


def run(argv: list[str] | None = None) -> PipelineResult:
    """Parse flags, validate them (``ConfigError`` before anything starts), run, report."""
    options = pipeline_options(list(sys.argv[1:] if argv is None else argv), TEXT)
    cfg = text_job_config(options)
    check_text_inputs(cfg, options)

    def wire(pipeline: beam.Pipeline) -> None:
        write(build(pipeline, cfg), cfg)

    def report(result: PipelineResult, elapsed: float) -> Outcome:
        return print_text_report(
            result,
            cfg.destination,
            cfg.run.run_id,
            elapsed,
            len(cfg.models),
            report_dir(cfg.destination, cfg.run),
        )

    return launch(
        options, cfg.destination, cfg.info, wire, text_progress_line, len(cfg.models), report
    )


SUMMARY = (
    "Run Hugging Face models over documents: entities, labels or embeddings, and dead letters."
)


def main() -> None:
    cli(run, "pipelines.text_inference", SUMMARY, TEXT)


if __name__ == "__main__":
    main()
