"""The end-of-run summary a person reads: inputs and how they ended, dead letters by stage,
throughput and where the outputs are. Its ``Outcome`` decides the exit code."""

from __future__ import annotations

import os

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult

from transforms.core.outcome import DEAD_LETTERS, Outcome
from transforms.core.progress import NAMESPACE
from transforms.io.destinations import Destination

SHOWN = (
    "slides_opened",
    "slides_planned",
    "slides_failed",
    "slides_without_tissue",
    "patches_planned",
    "patches_background",
    "patches_read",
    "patches_inferred",
    "patches_failed",
    "work_units_read",
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


def outcome(c: dict[str, int]) -> Outcome:
    return Outcome(c.get("inputs", 0), c.get("inputs_with_results", 0), c.get("inputs_skipped", 0))


def _print_outcome(c: dict[str, int], what: str) -> Outcome:
    result = outcome(c)
    print(
        f"  {what}: {result.inputs} in, {result.with_results} with results, "
        f"{result.failed} failed, {result.skipped} skipped as done already"
    )
    by_stage = {k[len(DEAD_LETTERS) :]: v for k, v in c.items() if k.startswith(DEAD_LETTERS)}
    listed = ", ".join(f"{stage} {n}" for stage, n in sorted(by_stage.items()))
    print(f"  dead letters: {sum(by_stage.values())}" + (f" ({listed})" if listed else ""))
    return result


def print_report(
    result: PipelineResult,
    dest: Destination,
    run_id: str,
    elapsed_s: float,
    tables: list[str],
    pictures: dict[str, str],
    report_dir: str | None = None,
) -> Outcome:
    """Print slides and how they ended, dead letters by stage, patches/s, the tables written and
    the picture folders (what -> folder)."""
    c = counters(result)
    inferred = c.get("patches_inferred", 0)
    print(f"\nrun {run_id}: {result.state} in {elapsed_s:.1f}s")
    done = _print_outcome(c, "slides")
    if c.get("slides_without_tissue"):
        print(
            f"  slides without tissue: {c['slides_without_tissue']} (each has a summary row with "
            "patch_count = 0, its tissue_area_mm2 and the tissue_method used; see --tissue_method)"
        )
    if c.get("slide_models_low_coverage"):
        print(
            f"  LOW COVERAGE: {c['slide_models_low_coverage']} slide x model(s) whose patches "
            "cover less of the tissue than --min_coverage (slide_summaries.coverage; whole "
            "patches leave tissue at the grid's edges unanalysed)"
        )
    print(f"  patch inferences: {inferred} ({inferred / max(elapsed_s, 1e-9):.1f}/s overall)")
    print("  counters: " + ", ".join(f"{k}={c.get(k, 0)}" for k in SHOWN))
    print(f"  {_where(dest, ', '.join(tables), run_id)}")
    for what, folder in pictures.items():
        print(f"  {what}: {folder}/")
    print_report_location(report_dir)
    return done


def print_report_location(report_dir: str | None) -> None:
    """Where the run's HTML report is: the first thing to open."""
    if report_dir:
        page = f"{report_dir}/index.html"
        shown = page if "://" in page else f"file://{os.path.abspath(page)}"
        print(f"  report: {shown}  (open it in a browser)")


def _where(dest: Destination, tables: str, run_id: str) -> str:
    if dest.bigquery is not None:
        return f"tables {tables} in {dest.describe()} (rows of this run: run_id = {run_id!r})"
    return f"outputs: {tables} under {dest.folder}/ (files starting {run_id})"


def print_text_report(
    result: PipelineResult,
    dest: Destination,
    run_id: str,
    elapsed_s: float,
    n_models: int,
    report_dir: str | None = None,
) -> Outcome:
    """Print documents and how they ended, dead letters, padding and the output locations."""
    c = counters(result)
    done, real, padded = (
        c.get("documents_done", 0),
        c.get("real_tokens", 0),
        c.get("padded_tokens", 0),
    )
    fraction = padded / (real + padded) if real + padded else 0.0
    print(f"\nrun {run_id}: {result.state} in {elapsed_s:.1f}s")
    outcome_ = _print_outcome(c, "documents")
    print(
        f"  results: {done} from {n_models} model(s) ({done / max(elapsed_s, 1e-9):.1f}/s "
        f"overall), {c.get('windows', 0)} windows"
    )
    print(f"  tokens: {real} real, {padded} padding ({fraction:.1%} padding)")
    print(f"  {_where(dest, 'text_*, errors and runs', run_id)}")
    print_report_location(report_dir)
    return outcome_
