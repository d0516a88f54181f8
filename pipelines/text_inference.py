"""Documents -> entities, labels or embeddings per model, plus dead letters.

    python -m pipelines.text_inference --documents papers.jsonl \
        --model ner=models/ner/ --task ner=token-classification --output results/

ReadDocuments -> RunModel/<name> per model (Tokenize -> SortAndBatch -> Infer -> MergeWindows)
-> Write*.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult

from pipelines.launch import cli, launch
from pipelines.options import TextJobConfig, text_job_config
from pipelines.report import print_text_report
from transforms.errors import DEAD_LETTER
from transforms.manifests import ReadManifest
from transforms.progress import text_progress_line
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

    def wire(pipeline: beam.Pipeline) -> None:
        write(build(pipeline, cfg), cfg)

    result, elapsed = launch(options, wire, text_progress_line, len(cfg.models))
    print_text_report(result, cfg.output, cfg.run_id, elapsed, len(cfg.models))
    return result


def main() -> None:
    cli(run)


if __name__ == "__main__":
    main()
