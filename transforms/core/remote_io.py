"""Object-store I/O that cannot hang a worker or fill its memory: every request is bounded in
total time and in the size of its response, and transient failures (a stalled or reset
connection, a deadline passed) are retried with backoff before an input becomes a dead letter.

gcsfs already retries HTTP 429/5xx and dropped connections itself; what it cannot see is a
server that accepts a request and never answers, answers a byte at a time, or never stops. Every
``gs://`` request (one range of at most a few MiB) must finish, headers to last byte, within
``PATHBEAM_IO_TIMEOUT_S`` (default 60 s), and its body is capped by what it asked for
(``capped_http.CappedResponse``). DICOMweb responses (``requests``, whose timeout bounds each
socket read) are read by ``read_body`` within ``PATHBEAM_IO_DEADLINE_S`` and a cap. The
operations built on those reads (opening and surveying a slide, reading a work unit, copying a
model) are retried here.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import fsspec

from transforms.core import progress
from transforms.core.errors import RemoteIOError, ResponseTooLarge

log = logging.getLogger(__name__)
T = TypeVar("T")

TIMEOUT_ENV = "PATHBEAM_IO_TIMEOUT_S"
ATTEMPTS = 3
BACKOFF_S = (0.5, 2.0)


DEADLINE_ENV = "PATHBEAM_IO_DEADLINE_S"
"""Total seconds one response may take, headers to last byte (default 300)."""


def io_timeout_s() -> float:
    return float(os.environ.get(TIMEOUT_ENV, "60"))


def io_deadline_s() -> float:
    return float(os.environ.get(DEADLINE_ENV, "300"))


class DeadlineExceeded(TimeoutError):
    """A response that was still arriving when its total deadline passed (a trickling server:
    each socket read returns in time, so the per-read timeout never trips). Transient: the
    operation is retried, then the input is a dead letter naming the limit."""


def read_body(raw: Any, what: str, cap_bytes: int, deadline_s: float | None = None) -> bytes:
    """The whole body of a streamed urllib3 response ``raw``, within ``deadline_s`` (default
    ``PATHBEAM_IO_DEADLINE_S``) and at most ``cap_bytes`` (what was asked for could not be
    larger: a fast endless body grew a process by 1.6 GB in 150 s).

    Raises ``DeadlineExceeded`` past the deadline, ``RemoteIOError`` past the cap (not retried:
    the server would send as much again)."""
    deadline = io_deadline_s() if deadline_s is None else deadline_s
    started = time.monotonic()
    parts: list[bytes] = []
    size = 0
    while True:
        # at most one socket read: a trickle returns byte by byte; gzip bodies decoded (and capped)
        chunk = raw.read1(1 << 16, decode_content=True)
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > cap_bytes:
            raise ResponseTooLarge(what, cap_bytes)
        elapsed = time.monotonic() - started
        if elapsed > deadline:
            raise DeadlineExceeded(
                f"{what}: not received in full within {DEADLINE_ENV}={deadline:g}s "
                f"({size:,} bytes in {elapsed:.0f}s)"
            )
        parts.append(chunk)


def bound_session(
    session: Any,
    cap_of: Callable[[str], int],
    on_body: Callable[[bytes], None] | None = None,
) -> Any:
    """``session`` (a ``requests.Session``) with every request bounded: ``PATHBEAM_IO_TIMEOUT_S``
    per socket read unless the caller sets a timeout, the whole body read within
    ``PATHBEAM_IO_DEADLINE_S`` and at most ``cap_of(url)`` bytes (``read_body``). ``on_body``
    sees each body read."""
    send = session.request
    timeout = io_timeout_s()

    def request(method: str, url: str, **kwargs: Any) -> Any:
        kwargs["timeout"] = kwargs.get("timeout") or timeout
        kwargs["stream"] = True  # the body is read here, under a deadline and a size cap
        response = send(method, url, **kwargs)
        try:
            body = read_body(response.raw, f"{method} {_short_url(url)}", cap_of(url))
        except BaseException:
            response.close()  # a connection left mid-body cannot be reused
            raise
        response.raw.release_conn()  # read to the end: back to the pool, for the next request
        # requests has no public way to hand a response the body read for it: ``_content`` (with
        # ``_content_consumed``) is where ``.content``, ``.json()`` and ``iter_content`` read it
        # from (the DICOMweb and BigQuery tests read through here, so a change in requests
        # fails them).
        response._content = body
        response._content_consumed = True
        if on_body is not None:
            on_body(body)
        return response

    session.request = request
    return session


def _short_url(url: str) -> str:
    from transforms.core.errors import redact, shorten

    return redact(shorten(url.split("?", 1)[0], 300))


def remote_options(uri: str) -> dict[str, Any]:
    """fsspec options that bound every request to ``uri``'s object store in time and size."""
    if uri.startswith(("gs://", "gcs://")):
        import aiohttp

        from transforms.core.capped_http import CappedResponse

        # a total per request (each is one range of at most a few MiB); a socket-read timeout
        # would be an aiohttp ClientError, which gcsfs retries six times with backoff itself
        return {
            "requests_timeout": aiohttp.ClientTimeout(total=io_timeout_s()),
            "session_kwargs": {"response_class": CappedResponse},
        }
    return {}


def filesystem(uri: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``uri`` with every limit of ``remote_options``, and its path:
    the one way into an object store, so no read goes unbounded."""
    return fsspec.core.url_to_fs(uri, **remote_options(uri))


def open_uri(uri: str, mode: str = "rb", **kwargs: Any) -> Any:
    """``fsspec.open`` of ``uri`` with every limit of ``remote_options``."""
    return fsspec.open(uri, mode, **remote_options(uri), **kwargs)


def write_whole(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` so that a reader sees the old file or the new one, never half:
    on a local disk a temporary file renamed into place; on an object store one upload, which
    is atomic there (and gcsfs's ``mv`` would first try GCS's moveTo, which the emulator answers
    501 after ~30 s of retries)."""
    fs, path = filesystem(uri)
    if "file" not in fs.protocol:
        with fs.open(path, "wb") as f:
            f.write(data)
        return
    fs.makedirs(os.path.dirname(path), exist_ok=True)
    with fs.open(path + ".tmp", "wb") as f:
        f.write(data)
    fs.mv(path + ".tmp", path)


REMOTE_BLOCK_BYTES = 256 << 10
REMOTE_CACHED_BLOCKS = 64
"""Remote slides are read in 256 KiB range requests kept in a 64-block LRU cache (16 MiB per open
slide): a row of neighbouring tiles (TIFF tiles, DICOM frames) is usually contiguous in the
file, so one request serves several, and the IFDs at the file's end stay cached while tiles are
read from its start.
Measured (bench/bench_gcs_reads.py, 8192 px slide): a 2048 px work unit takes 20 requests and
4.9 MB, against 242 requests and 3.1 MB with gcsfs's default cache. On GCS a request costs
tens of ms and a MB ~10 ms, so fewer, larger requests win; a one-block read-ahead cache
thrashed between the IFDs and the tiles."""


def open_remote_file(uri: str) -> Any:
    """An fsspec file of ``uri`` read by range, through a block cache sized for tiles."""
    fs, path = filesystem(uri)
    return fs.open(
        path,
        "rb",
        block_size=REMOTE_BLOCK_BYTES,
        cache_type="blockcache",
        cache_options={"maxblocks": REMOTE_CACHED_BLOCKS},
    )


def read_parquet(f: Any, columns: list[str] | None = None) -> Any:
    """A whole Parquet file from an open Python file object, as a ``pyarrow.Table``.

    Decoded on this thread (``use_threads=False``): with pyarrow 25, a process that had decoded
    a Parquet file from a file object or a buffer on pyarrow's threads aborted at exit about one
    time in two ("terminate called without an active exception", status 134; ``python -m
    pipelines.runs`` did); on this thread, never in 30 runs. For the small files this reads (run
    rows, result keys)."""
    import pyarrow.parquet as pq

    return pq.read_table(f, columns=columns, use_threads=False)


def is_transient(exc: BaseException) -> bool:
    """A timeout or a broken connection anywhere in the exception's chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TimeoutError | ConnectionError):
            return True
        module, name = type(seen).__module__, type(seen).__name__
        if module.startswith(("aiohttp", "requests", "urllib3")) and (
            "Timeout" in name or "ConnectionError" in name or "ProtocolError" in name
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def retry_transient(what: str, fn: Callable[[], T]) -> T:
    """``fn()``, retried up to ``ATTEMPTS`` times while it fails transiently.

    Raises ``RemoteIOError`` (naming ``what``, the cause and the timeout) when every attempt
    failed transiently, and any other exception as it is.
    """
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == ATTEMPTS:
                cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                raise RemoteIOError(
                    f"{what}: {cause} on all {ATTEMPTS} attempts "
                    f"(each request times out after {TIMEOUT_ENV}={io_timeout_s():g}s)"
                ) from exc
            progress.count("io_retries")
            delay = BACKOFF_S[min(attempt - 1, len(BACKOFF_S) - 1)]
            log.warning(
                "%s: %s (attempt %d of %d); retrying in %.1fs",
                what,
                type(exc).__name__,
                attempt,
                ATTEMPTS,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")
