"""The end-of-run summary a person reads: counters, throughput and where the outputs are."""

from __future__ import annotations

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult

from transforms.core.progress import NAMESPACE
from transforms.io.destinations import Destination

SHOWN = (
    "slides_opened",
    "slides_planned",
    "slides_failed",
    "patches_planned",
    "patches_background",
    "patches_read",
    "patches_inferred",
    "patches_failed",
    "bytes_read",
    "skipped_existing",
)


def print_submitted(result: PipelineResult, template_location: str | None) -> None:
    """For a job that was submitted or staged, not run here: where to follow it."""
    if template_location:
        print(f"\ntemplate staged at {template_location}")
        return
    job_id = getattr(result, "job_id", lambda: None)()
    print(f"\njob submitted: {job_id or 'see the Dataflow console'} ({result.state})")


def counters(result: PipelineResult) -> dict[str, int]:
    """This project's Beam counters of a finished run, by name."""
    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    out: dict[str, int] = {}
    for counter in query["counters"]:
        name = counter.key.metric.name
        out[name] = out.get(name, 0) + int(counter.committed or counter.attempted or 0)
    return out


def print_report(result: PipelineResult, dest: Destination, run_id: str, elapsed_s: float) -> None:
    """Print slides done and failed, patches, patches/s and the output locations."""
    c = counters(result)
    inferred = c.get("patches_inferred", 0)
    print(f"\nrun {run_id}: {result.state} in {elapsed_s:.1f}s")
    print(f"  slides: {c.get('slides_planned', 0)} planned, {c.get('slides_failed', 0)} failed")
    print(f"  patch inferences: {inferred} ({inferred / max(elapsed_s, 1e-9):.1f}/s overall)")
    print("  counters: " + ", ".join(f"{k}={c.get(k, 0)}" for k in SHOWN))
    print(f"  {_where(dest, 'patch_predictions, slide_summaries, errors', run_id)}")
    if dest.artifacts:
        print(f"  heatmaps: {dest.artifacts}/heatmaps/")


def _where(dest: Destination, tables: str, run_id: str) -> str:
    if dest.bigquery is not None:
        return f"tables {tables} in {dest.describe()} (rows of this run: run_id = {run_id!r})"
    return f"outputs: {tables} under {dest.folder}/ (files starting {run_id})"


def print_text_report(
    result: PipelineResult, dest: Destination, run_id: str, elapsed_s: float, n_models: int
) -> None:
    """Print documents done, windows, padding fraction and the output locations."""
    c = counters(result)
    done, real, padded = (
        c.get("documents_done", 0),
        c.get("real_tokens", 0),
        c.get("padded_tokens", 0),
    )
    fraction = padded / (real + padded) if real + padded else 0.0
    per_model = c.get("documents_tokenized", 0) // max(n_models, 1)
    print(f"\nrun {run_id}: {result.state} in {elapsed_s:.1f}s")
    print(
        f"  documents: {per_model} tokenized per model, {done} results from {n_models} "
        f"model(s) ({done / max(elapsed_s, 1e-9):.1f}/s overall), {c.get('windows', 0)} windows"
    )
    print(f"  tokens: {real} real, {padded} padding ({fraction:.1%} padding)")
    print(f"  {_where(dest, 'text_* and errors', run_id)}")
