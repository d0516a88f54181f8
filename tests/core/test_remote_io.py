"""Retries of transient object-store failures, and the error when every attempt fails."""

from __future__ import annotations

import pytest

from tests.processes import run_python
from transforms.core import progress, remote_io
from transforms.core.errors import RemoteIOError


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(remote_io, "BACKOFF_S", (0.0,))
    progress.reset()


def failing(times: int, error: Exception):
    calls = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "bytes"

    return fn, calls


def test_transient_failures_are_retried_and_counted():
    fn, calls = failing(2, TimeoutError("read stalled"))
    assert remote_io.retry_transient("reading s1", fn) == "bytes"
    assert len(calls) == 3 and progress.snapshot()["io_retries"] == 2


def test_a_timeout_on_every_attempt_names_the_operation_the_cause_and_the_timeout(monkeypatch):
    monkeypatch.setenv(remote_io.TIMEOUT_ENV, "7")
    wrapped = OSError("socket read failed")
    wrapped.__cause__ = ConnectionResetError("reset by peer")
    fn, calls = failing(99, wrapped)
    with pytest.raises(RemoteIOError) as failure:
        remote_io.retry_transient("copying gs://b/m.pt2", fn)
    assert len(calls) == remote_io.ATTEMPTS
    assert str(failure.value) == (
        "copying gs://b/m.pt2: OSError: socket read failed on all 3 attempts "
        "(each request times out after PATHBEAM_IO_TIMEOUT_S=7s)"
    )
    assert failure.value.__cause__ is wrapped


def test_other_failures_are_raised_at_once():
    fn, calls = failing(99, FileNotFoundError("gs://b/missing.svs"))
    with pytest.raises(FileNotFoundError):
        remote_io.retry_transient("planning s1", fn)
    assert len(calls) == 1 and "io_retries" not in progress.snapshot()


@pytest.mark.slow  # ten subprocesses
def test_parquet_read_from_a_python_file_exits_cleanly(tmp_path):
    """pyarrow's default pre-buffering read a Python file object on its I/O threads, and the
    process then aborted at exit about every other time (status 134, "terminate called without
    an active exception": `python -m pipelines.runs` did). ``read_parquet`` must exit cleanly,
    every time, and return the rows."""

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "runs.parquet"
    # many column chunks (as a runs row has): pre-buffering reads them on pyarrow's threads
    columns = {f"c{i}": [f"value {j}" * 20 for j in range(200)] for i in range(40)}
    pq.write_table(pa.table(columns), path)
    code = (
        "import fsspec\n"
        "from transforms.core.remote_io import read_parquet\n"
        f"with fsspec.open({str(path)!r}, 'rb') as f:\n"
        "    table = read_parquet(f)\n"
        "print(table.num_rows, table.num_columns, table.column('c39')[199])\n"
    )
    for _ in range(10):
        done = run_python("-c", code)
        assert done.returncode == 0, done.stderr[-500:]
        assert done.stdout.strip() == "200 40 " + "value 199" * 20


def test_a_response_may_hold_what_its_range_asks_for_and_no_more():
    from transforms.core.capped_http import MAX_UNRANGED_BYTES, RANGE_SLACK_BYTES, response_cap

    assert response_cap("bytes=0-262143") == 262144 + RANGE_SLACK_BYTES
    assert response_cap("bytes=100-199") == 100 + RANGE_SLACK_BYTES
    assert response_cap("bytes=-4096") == 4096 + RANGE_SLACK_BYTES  # the last 4096 bytes
    assert response_cap("bytes=5-") == MAX_UNRANGED_BYTES  # to the end: unknown
    assert response_cap(None) == MAX_UNRANGED_BYTES
    assert response_cap("bytes=0-9, 20-29") == MAX_UNRANGED_BYTES  # several ranges: not asked


def test_gcs_options_bound_each_request_in_total_time_and_size(monkeypatch):
    from transforms.core.capped_http import CappedResponse

    monkeypatch.setenv(remote_io.TIMEOUT_ENV, "7")
    options = remote_io.remote_options("gs://bucket/slide.svs")
    assert options["requests_timeout"].total == 7
    assert options["session_kwargs"]["response_class"] is CappedResponse
    assert remote_io.remote_options("/local/slide.svs") == {}
