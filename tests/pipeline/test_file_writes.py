"""A run that dies mid-write leaves no file that breaks reading the results folder."""

from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import pandas as pd
import pyarrow as pa
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from transforms.io.file_writes import write_json_lines, write_parquet

pytestmark = pytest.mark.pipeline

SCHEMA = pa.schema([("slide_id", pa.string()), ("n", pa.int64())])


def _die_mid_write(write: beam.PTransform) -> Path:
    """What a run killed mid-write leaves: the sink's staging folder with a torn shard in it."""
    staging = Path(write._sink.initialize_write())
    (staging / "torn-shard").write_bytes(b"PAR1 half a row group")
    return staging


def test_a_dead_runs_staging_files_are_skipped_by_folder_readers(tmp_path):
    table = tmp_path / "patch_predictions"
    rows = [{"slide_id": f"s{i}", "n": i} for i in range(3)]
    with beam.Pipeline(runner=FnApiRunner()) as p:
        _ = p | beam.Create(rows) | write_parquet(str(table / "run1"), SCHEMA)
        _ = (
            p
            | "Errors" >> beam.Create([json.dumps({"key": "bad"})])
            | write_json_lines(str(tmp_path / "errors" / "run1"))
        )
    staging = _die_mid_write(write_parquet(str(table / "run2"), SCHEMA))
    _die_mid_write(write_json_lines(str(tmp_path / "errors" / "run2")))

    assert staging.parent == table and staging.name.startswith("_beam-temp-run2")
    assert sorted(pd.read_parquet(table).n) == [0, 1, 2]  # the torn shard is not read
    finished = [p.name for p in (tmp_path / "errors").glob("*.jsonl")]
    assert finished == ["run1-00000-of-00001.jsonl"]
    # Beam's own staging folder (no leading "_") is what broke such reads.
    beam_staging = Path(beam.io.WriteToParquet(str(table / "run3"))._sink.initialize_write())
    (beam_staging / "torn-shard").write_bytes(b"PAR1 half a row group")
    with pytest.raises(pa.ArrowInvalid):
        pd.read_parquet(table)
