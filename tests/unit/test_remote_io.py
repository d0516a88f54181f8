"""Retries of transient object-store failures, and the error when every attempt fails."""

from __future__ import annotations

import pytest

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
