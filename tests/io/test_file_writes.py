"""Results are written through Beam's public fileio; a run that dies mid-write leaves nothing
that breaks reading the results folder, and a finished run leaves no staging folder at all."""

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


def _die_mid_write(staging: str) -> Path:
    """What a run killed mid-write leaves: its staging folder with a torn shard in it."""
    folder = Path(staging)
    folder.mkdir(parents=True)
    (folder / "torn-shard").write_bytes(b"PAR1 half a row group")
    return folder


def test_a_dead_runs_staging_files_are_skipped_by_folder_readers(tmp_path):
    table, errors = tmp_path / "patch_predictions", tmp_path / "errors"
    rows = [{"slide_id": f"s{i}", "n": i} for i in range(2500)]
    with beam.Pipeline(runner=FnApiRunner()) as p:
        _ = p | beam.Create(rows) | write_parquet(str(table), "run1", SCHEMA)
        _ = (
            p
            | "Errors" >> beam.Create([json.dumps({"key": "bad"})])
            | "WriteErrors" >> write_json_lines(str(errors), "run1")
        )
    assert not list(tmp_path.rglob("_beam-temp-*"))  # a finished run removes its staging
    written = sorted(p.name for p in table.iterdir())
    assert written and all(n.startswith("run1-") and n.endswith(".parquet") for n in written)

    staging = _die_mid_write(write_parquet(str(table), "run2", SCHEMA).staging)
    _die_mid_write(write_json_lines(str(errors), "run2").staging)
    assert staging.parent == table and staging.name.startswith("_beam-temp-run2")
    assert sorted(pd.read_parquet(table).n) == list(range(2500))  # the torn shard is not read
    assert [p.name for p in errors.glob("*.jsonl")] == ["run1-00000-of-00001.jsonl"]
    # A staging folder without the leading "_" is what broke such reads.
    (table / "beam-temp-x").mkdir()
    (table / "beam-temp-x" / "torn-shard").write_bytes(b"PAR1 half a row group")
    with pytest.raises(pa.ArrowInvalid):
        pd.read_parquet(table)


def test_a_table_without_rows_is_one_empty_file_with_its_schema(tmp_path):
    with beam.Pipeline(runner=FnApiRunner()) as p:
        _ = p | beam.Create([]) | write_parquet(str(tmp_path / "t"), "run1", SCHEMA)
    frame = pd.read_parquet(tmp_path / "t")
    assert len(frame) == 0 and list(frame.columns) == ["slide_id", "n"]
    assert [p.name for p in (tmp_path / "t").iterdir()] == ["run1-00000-of-00001.parquet"]
