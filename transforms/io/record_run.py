"""RecordRun: the job's last step. After every table is written, it counts what the run did,
writes the ``runs`` row (status ``succeeded``) and the HTML report.

It runs inside the job, on a worker, so a Dataflow or Flex Template run records itself even when
its launcher is long gone. It waits for the writes by taking their results as side inputs.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from transforms.core.guard import GUARD, per_model
from transforms.core.outcome import OUTCOME
from transforms.io.run_report import MAX_ROWS
from transforms.io.runs import RunInfo, record, weights_sha256, write_record

log = logging.getLogger(__name__)

EXAMPLES = 3
"""Example dead letters kept per stage and error type, for the record and the report."""


class DeadLetterCounts(beam.CombineFn):
    """Dead-letter rows -> ``{(stage, error_type): [count, [(key, message), ...]]}``."""

    def create_accumulator(self) -> dict:
        return {}

    def add_input(self, acc: dict, row: dict) -> dict:
        entry = acc.setdefault((row["stage"], row["error_type"]), [0, []])
        entry[0] += 1
        if len(entry[1]) < EXAMPLES:
            entry[1].append((row["key"], row["message"]))
        return acc

    def merge_accumulators(self, accs: Iterable[dict]) -> dict:
        out: dict = {}
        for acc in accs:
            for key, (n, examples) in acc.items():
                entry = out.setdefault(key, [0, []])
                entry[0] += n
                entry[1] = (entry[1] + examples)[:EXAMPLES]
        return out

    def extract_output(self, acc: dict) -> dict:
        return acc


def _device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def coverage_counts(summaries: list[dict]) -> dict[str, Any]:
    """The lowest tissue coverage of a slide run's summaries, and how many are flagged low;
    nothing for runs without coverage (text, patch manifests)."""
    values = [r["coverage"] for r in summaries if r.get("coverage") is not None]
    if not values:
        return {}
    return {
        "coverage_min": min(values),
        "low_coverage": sum(1 for r in summaries if r.get("low_coverage")),
    }


class _Record(beam.DoFn):
    def __init__(self, info: RunInfo, dest: Any, report_dir: str | None) -> None:
        self._info = info
        self._dest = dest
        self._report_dir = report_dir

    def process(
        self,
        _: Any,
        outcome: Any,
        written: list,
        outputs: dict[str, int],
        dead: dict,
        units_done: int,
        sections: dict[str, list],
        guard: list[dict],
        stage_counts: dict[str, tuple],
    ) -> Iterator[dict]:
        sha256 = {}
        for model in self._info.models:
            try:
                sha256[model.name] = weights_sha256(model.uri)
            except Exception as exc:  # noqa: BLE001 - the record still goes out
                log.warning("sha256 of %s: %s", model.uri, exc)
        counts = {
            "inputs": outcome.inputs,
            "inputs_with_results": outcome.with_results,
            "inputs_skipped": outcome.skipped,
            "inputs_failed": outcome.failed,
            "outputs": outputs,
            "dead_letters": [
                (stage, kind, n, f"{examples[0][0]}: {examples[0][1]}" if examples else "")
                for (stage, kind), (n, examples) in sorted(dead.items())
            ],
            "units_done": units_done,
            "precision_guard": per_model(guard),
            "stage_counts": stage_counts,
            **coverage_counts(sections.get("slides") or []),
        }
        report_uri = f"{self._report_dir}/index.html" if self._report_dir else None
        row = record(
            self._info,
            "succeeded",
            finished_at=dt.datetime.now(dt.UTC),
            counts=counts,
            device=_device(),
            sha256=sha256,
            report_uri=report_uri,
        )
        if self._report_dir:
            from transforms.io.run_report import write_report

            write_report(self._report_dir, row, dead, sections)
        write_record(self._dest, row)
        log.info("run %s recorded (report: %s)", self._info.run_id, report_uri or "none")
        yield row


def _none(_: Any) -> None:
    return None


def units_of(row: dict) -> int:
    """What one result row adds to ``units_done``: its tokens (text), else one patch."""
    return int(row["n_tokens"]) if "n_tokens" in row else 1


class RecordRun(beam.PTransform):
    """``{"outcome", "tables", "written", "errors", "units", "sections"}`` -> the run's row.

    ``outcome``: ``JudgeRun``'s; ``tables``: {table name: rows} (counted); ``written``: {name:
    write result} (waited for); ``errors``: every dead letter; ``units``: the result rows whose
    patches or tokens (``units_of``) make ``units_done``; ``sections``: {name: small rows} the
    report shows (slide summaries, ...); ``GUARD`` (optional): the accuracy guard's rows;
    ``stages`` (optional): ``(stage name, counts)`` pairs, summed per stage into the record's
    composition edges (``runs.composition_edges``).
    """

    def __init__(self, info: RunInfo, dest: Any, report_dir: str | None) -> None:
        super().__init__()
        self._fn = _Record(info, dest, report_dir)

    def expand(self, parts: dict[str, Any]) -> beam.PCollection:
        pipeline = parts[OUTCOME].pipeline
        written = [
            result | f"Done/{name}" >> beam.Map(_none)
            for name, result in parts["written"].items()
            if isinstance(result, beam.PCollection)
        ]
        all_written = written | "AllWritten" >> beam.Flatten(pipeline=pipeline)
        counted = [
            rows
            | f"Count/{name}" >> beam.combiners.Count.Globally()
            | f"Name/{name}" >> beam.Map(lambda n, name=name: (name, n))
            for name, rows in parts["tables"].items()
        ]
        outputs = counted | "AllCounts" >> beam.Flatten(pipeline=pipeline)
        dead = parts["errors"] | "DeadLetterCounts" >> beam.CombineGlobally(DeadLetterCounts())
        units = (
            parts["units"]
            | "UnitsOfRows" >> beam.Map(units_of)
            | "UnitsDone" >> beam.CombineGlobally(sum)
        )
        sections = [  # bounded: a run of millions of documents shows a sample of them
            rows
            | f"Collect/{name}" >> beam.combiners.Sample.FixedSizeGlobally(MAX_ROWS)
            | f"Section/{name}" >> beam.Map(lambda rows, name=name: (name, rows))
            for name, rows in parts["sections"].items()
        ]
        all_sections = sections | "AllSections" >> beam.Flatten(pipeline=pipeline)
        guard = parts[GUARD] if GUARD in parts else pipeline | "NoGuard" >> beam.Create([])
        stages = (
            parts["stages"] | "StageCounts" >> beam.CombinePerKey(_sum_tuples)
            if "stages" in parts
            else pipeline | "NoStages" >> beam.Create([])
        )
        return (
            pipeline
            | "Once" >> beam.Create([None])
            | "RecordRun"
            >> beam.ParDo(
                self._fn,
                beam.pvalue.AsSingleton(parts[OUTCOME]),
                beam.pvalue.AsList(all_written),
                beam.pvalue.AsDict(outputs),
                beam.pvalue.AsSingleton(dead),
                beam.pvalue.AsSingleton(units),
                beam.pvalue.AsDict(all_sections),
                beam.pvalue.AsList(guard),
                beam.pvalue.AsDict(stages),
            )
        )


def _sum_tuples(values: Iterable[tuple]) -> tuple:
    """Element-wise sums of equal-length tuples (a stage's counts over its slides)."""
    total: list[int] = []
    for value in values:
        total = [a + b for a, b in zip(total, value, strict=True)] if total else list(value)
    return tuple(total)
