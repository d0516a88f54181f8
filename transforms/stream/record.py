"""A stream's latency and its one ``runs`` row, updated after every window.

- ``landed_row``: a landed slide as a slide manifest row; its publish time rides along as the
  ``published_s`` metadata column, so each slide summary carries it.
- ``with_latency``: a slide summary row with ``latency_s``: from the notification's publish time
  to the moment its rows are written.
- ``RecordStream``: per window, the slides summarized, patches, dead letters by stage and
  type, ignored messages and the latency p50/p95; the running totals are kept in state (one
  key) and the stream's ``runs`` row rewritten with them (``status`` ``running``).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.coders import PickleCoder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.transforms.window import GlobalWindows

from transforms.core.errors import DEAD_LETTER
from transforms.io.runs import RunInfo, record, write_record
from transforms.stream.notifications import Landed

WINDOW_S = 60.0
"""The default window of a stream's writes (``--window_s``)."""
PUBLISHED = "published_s"
"""The metadata column that carries a slide's notification publish time."""


def landed_row(landed: Landed) -> dict[str, Any]:
    """A landed slide as a raw slide manifest row (``_row``: its notification key)."""
    return {**landed.manifest_row(), PUBLISHED: f"{landed.published_s:.3f}", "_row": landed.key}


def with_latency(summary: dict) -> dict:
    """A slide summary row with ``latency_s`` (None for a slide without a publish time)."""
    published = next((m["value"] for m in summary["metadata"] if m["key"] == PUBLISHED), None)
    latency = time.time() - float(published) if published else None
    return {**summary, "latency_s": latency}


def _add_dead(counts: dict, key: tuple[str, str], n: int, example: Any) -> None:
    """Count ``n`` dead letters of ``(stage, error type)``, keeping the first as its example."""
    if isinstance(example, dict):
        example = f"{example['key']}: {example['message']}"[:500]
    seen, first = counts.get(key, (0, example))
    counts[key] = (seen + n, first)


class _WindowCounts(beam.CombineFn):
    """``(kind, value)`` events -> ``{slides, patches, dead_letters, ignored, latencies}``."""

    def create_accumulator(self) -> dict:
        return {"slides": set(), "patches": 0, DEAD_LETTER: {}, "ignored": 0, "latencies": {}}

    def add_input(self, acc: dict, event: tuple[str, Any]) -> dict:
        kind, value = event
        if kind == "summary":
            acc["slides"].add(value["slide_id"])
            acc["patches"] += int(value["patch_count"])
            if value.get("latency_s") is not None:
                acc["latencies"][value["slide_id"]] = value["latency_s"]
        elif kind == DEAD_LETTER:
            _add_dead(acc[DEAD_LETTER], (value["stage"], value["error_type"]), 1, value)
        else:
            acc["ignored"] += 1
        return acc

    def merge_accumulators(self, accs: Iterable[dict]) -> dict:
        out = self.create_accumulator()
        for acc in accs:
            out["slides"] |= acc["slides"]
            out["latencies"].update(acc["latencies"])
            out["patches"] += acc["patches"]
            out["ignored"] += acc["ignored"]
            for key, (n, example) in acc[DEAD_LETTER].items():
                _add_dead(out[DEAD_LETTER], key, n, example)
        return out

    def extract_output(self, acc: dict) -> dict:
        return acc


class _Totals(beam.DoFn):
    TOTALS = ReadModifyWriteStateSpec("totals", PickleCoder())

    def __init__(self, info: RunInfo, dest: Any) -> None:
        self._info = info
        self._dest = dest

    def process(
        self, element: tuple[None, dict], totals: Any = beam.DoFn.StateParam(TOTALS)
    ) -> Iterator[dict]:
        _, window = element
        done = totals.read() or {"slides": 0, "patches": 0, DEAD_LETTER: {}, "ignored": 0}
        dead = dict(done[DEAD_LETTER])
        for key, (n, example) in window[DEAD_LETTER].items():
            _add_dead(dead, key, n, example)
        done = {
            "slides": done["slides"] + len(window["slides"]),
            "patches": done["patches"] + window["patches"],
            DEAD_LETTER: dead,
            "ignored": done["ignored"] + window["ignored"],
        }
        totals.write(done)
        latencies = list(window["latencies"].values())
        row = record(
            self._info,
            "running",
            finished_at=dt.datetime.now(dt.UTC),
            counts={
                "inputs": done["slides"],
                "inputs_with_results": done["slides"],
                "units_done": done["patches"],
                "dead_letters": [
                    (stage, kind, n, example)
                    for (stage, kind), (n, example) in sorted(dead.items())
                ],
            },
        )
        row["inputs_ignored"] = done["ignored"]
        row["latency_p50_s"] = float(np.percentile(latencies, 50)) if latencies else None
        row["latency_p95_s"] = float(np.percentile(latencies, 95)) if latencies else None
        write_record(self._dest, row)
        yield row


def _tagged(kind: str) -> Any:
    return lambda value: (kind, value)


class RecordStream(beam.PTransform):
    """(summaries with latency, dead letters, ignored messages), windowed -> the stream's runs
    row, rewritten after each window with the running totals and that window's latency p50/p95.
    """

    def __init__(self, info: RunInfo, dest: Any) -> None:
        super().__init__()
        self._info = info
        self._dest = dest

    def expand(self, parts: dict[str, beam.PCollection]) -> beam.PCollection:
        events = [
            parts["summaries"] | "SummaryEvents" >> beam.Map(_tagged("summary")),
            parts[DEAD_LETTER] | "DeadLetterEvents" >> beam.Map(_tagged(DEAD_LETTER)),
            parts["ignored"] | "IgnoredEvents" >> beam.Map(_tagged("ignored")),
        ] | "AllEvents" >> beam.Flatten()
        return (
            events
            | "PerWindow" >> beam.CombineGlobally(_WindowCounts()).without_defaults()
            | "Running" >> beam.WindowInto(GlobalWindows())
            | "OneKey" >> beam.Map(lambda counts: (None, counts))
            | "Totals" >> beam.ParDo(_Totals(self._info, self._dest))
        )
