"""A run's tables in a results folder become visible all together, in one final step.

Every table of a run is written under ``<folder>/_pending/<run_id>/<table>/`` (``_`` folders are
skipped by ``pandas.read_parquet(folder)``, pyarrow datasets, Spark and DuckDB, and by
``--skip_existing``), so a run killed while writing leaves nothing anyone reads as results. Once
every table is written, the commit:

1. writes ``_pending/<run_id>/_COMMIT``, naming every file and where it goes;
2. moves each file into ``<folder>/<table>/`` (a rename on a local disk);
3. removes ``_pending/<run_id>``.

A run killed between 1 and 3 is rolled forward by the next launch into that folder
(``recover``), before that launch reads anything (``--skip_existing`` included); a run killed
before 1 left only invisible files. So a rerun never doubles a row. BigQuery destinations are
idempotent by key instead (``bigquery.py``).

``PATHBEAM_KILL_AT`` (``before_commit``, ``mid_commit``, ``after_commit``) SIGKILLs the process
at that point: the tests stage a crash at each commit boundary with it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Iterable, Sequence
from typing import Any

from transforms.io.schemas import safe_name

PENDING = "_pending"
MARKER = "_COMMIT"
KILL_ENV = "PATHBEAM_KILL_AT"
log = logging.getLogger(__name__)


def pending_dir(folder: str, run_id: str) -> str:
    """Where a run's tables are written until its commit."""
    return f"{folder.rstrip('/')}/{PENDING}/{safe_name(run_id)}"


def _kill_at(point: str) -> None:
    if os.environ.get(KILL_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def commit(folder: str, run_id: str, files: Iterable[str]) -> list[str]:
    """Move a run's written ``files`` (under its pending folder) into ``folder``'s tables, all
    or (after a crash, by ``recover``) eventually all; the files' final paths."""

    from transforms.core.remote_io import filesystem

    pending = pending_dir(folder, run_id)
    fs, root = filesystem(pending)
    base = root.rstrip("/")
    target = base.rsplit("/", 2)[0]  # the results folder, as fs names it
    moves, relatives = [], []
    for path in sorted(set(files)):
        local = filesystem(path)[1]
        if not local.startswith(base + "/"):
            raise ValueError(f"{path} is not under the run's pending folder {pending}")
        relatives.append(local[len(base) + 1 :])
        moves.append((local, f"{target}/{relatives[-1]}"))
    _kill_at("before_commit")
    fs.pipe_file(f"{base}/{MARKER}", json.dumps(moves).encode())
    _finish(fs, base, moves)
    return [f"{folder.rstrip('/')}/{relative}" for relative in relatives]


def _finish(fs: Any, base: str, moves: Sequence[Sequence[str]]) -> None:
    """Do the moves a marker names (each once: a moved file is not there any more), then remove
    the pending folder."""
    for i, (src, dst) in enumerate(moves):
        if fs.exists(src):
            fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
            _move(fs, src, dst)
        if i == 0:
            _kill_at("mid_commit")
    fs.rm(base, recursive=True)
    try:
        if not fs.ls(base.rsplit("/", 1)[0]):
            fs.rmdir(base.rsplit("/", 1)[0])  # the last pending run: no empty _pending left
    except OSError:
        pass
    _kill_at("after_commit")


def _move(fs: Any, src: str, dst: str) -> None:
    """A rename on a local disk; a server-side copy, then a delete, on an object store (gcsfs's
    ``mv`` first tries GCS's moveTo, which the emulator answers 501 after retries: 30 s a file)."""
    if "file" in fs.protocol:
        fs.mv(src, dst)
    else:
        fs.copy(src, dst)
        fs.rm_file(src)


def recover(folder: str) -> list[str]:
    """Finish the commits that crashed runs began in ``folder`` (those with a ``_COMMIT``
    marker); the run ids rolled forward. Runs killed before their marker stay invisible."""

    from transforms.core.remote_io import filesystem

    root = f"{folder.rstrip('/')}/{PENDING}"
    fs, path = filesystem(root)
    done = []
    for marker in sorted(fs.glob(f"{path.rstrip('/')}/*/{MARKER}")):
        base = marker.rsplit("/", 1)[0]
        moves = json.loads(fs.cat_file(marker))
        log.warning("finishing the commit of run %s, which stopped midway", base.rsplit("/")[-1])
        _finish(fs, base, moves)
        done.append(base.rsplit("/", 1)[-1])
    return done


def discard(folder: str, run_id: str) -> None:
    """Remove what a failed run wrote (it never became visible)."""

    from transforms.core.remote_io import filesystem

    pending = pending_dir(folder, run_id)
    fs, path = filesystem(pending)
    if fs.exists(path):
        fs.rm(path, recursive=True)
