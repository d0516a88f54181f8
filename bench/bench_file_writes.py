"""Parquet writes: our fileio route (``io.file_writes.write_parquet``) against Beam's
``WriteToParquet``, which the project used before, on the same rows in one process.

    python -m bench.bench_file_writes [--rows 200000] [--repeats 3]

Rows have the ``patch_predictions`` schema (two-class probabilities). Each repeat writes with both
routes, alternating which goes first, on the local FnApiRunner; wall times and the ratio of
medians are printed as JSON, with the written row counts checked.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import tempfile
import time
from pathlib import Path

import apache_beam as beam
import pandas as pd
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from transforms.io.file_writes import write_parquet
from transforms.io.schemas import arrow_schema
from transforms.models.kinds import KINDS


def rows(n: int) -> list[dict]:
    day = dt.date(2026, 12, 1)
    return [
        {
            "slide_id": f"slide-{i // 5000}",
            "model_name": "tumor",
            "model_version": "v1",
            "x_px": (i % 100) * 224,
            "y_px": (i // 100) * 224,
            "size_px": 224,
            "level": 0,
            "mpp": 0.5,
            "probs": [0.25, 0.75],
            "label": 1,
            "run_id": "bench",
            "run_date": day,
        }
        for i in range(n)
    ]


def timed(route: str, data: list[dict], folder: Path) -> float:
    schema = arrow_schema(KINDS["classification"].table)
    started = time.monotonic()
    with beam.Pipeline(runner=FnApiRunner()) as p:
        pcoll = p | beam.Create(data, reshuffle=False)
        if route == "fileio":
            _ = pcoll | write_parquet(str(folder), "bench", schema)
        else:
            _ = pcoll | beam.io.WriteToParquet(
                str(folder / "bench"), schema=schema, file_name_suffix=".parquet"
            )
    elapsed = time.monotonic() - started
    assert len(pd.read_parquet(folder)) == len(data)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = rows(args.rows)
    times: dict[str, list[float]] = {"fileio": [], "WriteToParquet": []}
    for repeat in range(args.repeats):
        order = ["fileio", "WriteToParquet"][:: 1 if repeat % 2 == 0 else -1]
        for route in order:
            with tempfile.TemporaryDirectory() as tmp:
                times[route].append(timed(route, data, Path(tmp) / "t"))
    medians = {route: statistics.median(t) for route, t in times.items()}
    print(
        json.dumps(
            {
                "rows": args.rows,
                "seconds": times,
                "median_s": medians,
                "fileio_over_WriteToParquet": medians["fileio"] / medians["WriteToParquet"],
            }
        )
    )


if __name__ == "__main__":
    main()
