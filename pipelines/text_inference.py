"""Documents -> entities, labels or embeddings per model, plus dead letters.

    python -m pipelines.text_inference --documents papers.jsonl \
        --model ner=models/ner/ --task ner=token-classification --output results/

ReadDocuments -> RunModel/<name> per model (Tokenize -> SortAndBatch -> Infer -> MergeWindows)
-> Write*.
"""

from __future__ import annotations

import logging
import sys
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult

from pipelines.options import LOCAL_RUNNER, InferenceOptions, TextJobConfig, text_job_config
from pipelines.report import print_text_report
from transforms.errors import DEAD_LETTER, ConfigError
from transforms.manifests import ReadManifest
from transforms.progress import ProgressReporter
from transforms.sinks import TEXT_EMBEDDINGS, TEXT_ENTITIES, TEXT_LABELS, WriteErrors, WriteTable
from transforms.text import RunTextModel

TABLES = {
    "token-classification": TEXT_ENTITIES,
    "text-classification": TEXT_LABELS,
    "embedding": TEXT_EMBEDDINGS,
}


def build(pipeline: beam.Pipeline, cfg: TextJobConfig) -> dict[str, beam.PCollection]:
    """Wire the text pipeline; return one row PCollection per table, and the errors."""
    docs = pipeline | "ReadDocuments" >> ReadManifest(cfg.documents, "documents", cfg.columns)
    errors = [docs[DEAD_LETTER]]
    by_table: dict[str, list[beam.PCollection]] = {}
    for spec in cfg.models:
        out = docs["rows"] | f"RunModel/{spec.name}" >> RunTextModel(
            spec, cfg.windows, cfg.batching, cfg.run_id
        )
        by_table.setdefault(TABLES[spec.task].name, []).append(out["rows"])
        errors.append(out[DEAD_LETTER])
    outputs = {
        name: rows | f"All/{name}" >> beam.Flatten() for name, rows in sorted(by_table.items())
    }
    outputs["errors"] = errors | "AllErrors" >> beam.Flatten()
    return outputs


def write(outputs: dict[str, beam.PCollection], cfg: TextJobConfig) -> None:
    """Write every output table under ``cfg.output``."""
    for table in TABLES.values():
        if table.name in outputs:
            outputs[table.name] | f"Write/{table.name}" >> WriteTable(table, cfg.output, cfg.run_id)
    outputs["errors"] | "WriteErrors" >> WriteErrors(cfg.output, cfg.run_id)


def run(argv: list[str] | None = None) -> PipelineResult:
    """Parse flags, validate them (``ConfigError`` before anything starts), run, report."""
    options = PipelineOptions(argv)
    cfg = text_job_config(options)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = LOCAL_RUNNER
    started = time.monotonic()
    interval = options.view_as(InferenceOptions).progress_interval_s
    with ProgressReporter(interval, done_key="documents_done", n_models=len(cfg.models)):
        pipeline = beam.Pipeline(options=options)
        write(build(pipeline, cfg), cfg)
        result = pipeline.run()
        result.wait_until_finish()
    print_text_report(result, cfg.output, cfg.run_id, time.monotonic() - started, len(cfg.models))
    return result


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("apache_beam", "fsspec", "urllib3", "google", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        run(sys.argv[1:])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
