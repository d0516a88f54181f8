"""Local copies of remote model files and folders, made once per worker process.

A local path is used as it is; a ``gs://`` (any fsspec) URI is copied into a per-process cache
by range reads of ``COPY_CHUNK_BYTES``, each bounded in time and size, with transient failures
retried (``core.remote_io``): a multi-GB weights file is many short requests, never one that
must finish within a deadline.
"""

from __future__ import annotations

import hashlib
import os
import tempfile


def _cache_target(uri: str, cache_dir: str | None, suffix: str = "") -> str | None:
    """``None`` for a local path; else where the per-process copy of ``uri`` goes."""
    if "://" not in uri or uri.startswith("file://"):
        return None
    cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), "pathbeam-models")
    os.makedirs(cache_dir, exist_ok=True)
    return os.path.join(cache_dir, hashlib.sha256(uri.encode()).hexdigest()[:16] + suffix)


COPY_CHUNK_BYTES = 8 << 20


def _copy_file(fs: object, path: str, target: str) -> None:
    """Copy ``fs``'s file ``path`` to the local ``target`` by range reads."""
    with fs.open(path, "rb") as src, open(target, "wb") as dst:  # type: ignore[attr-defined]
        while chunk := src.read(COPY_CHUNK_BYTES):
            dst.write(chunk)


def local_copy(uri: str, cache_dir: str | None = None) -> str:
    """A local path for a model file: itself if local, else a copy made once per process."""
    path = _cache_target(uri, cache_dir, f"-{os.path.basename(uri)}")
    if path is None:
        return uri.removeprefix("file://")
    if not os.path.exists(path):
        from transforms.core.remote_io import filesystem, retry_transient

        fs, remote = filesystem(uri)
        partial = f"{path}.{os.getpid()}.partial"
        retry_transient(f"copying {uri}", lambda: _copy_file(fs, remote, partial))
        os.replace(partial, path)
    return path


def local_folder(uri: str, cache_dir: str | None = None) -> str:
    """A local path for a model folder: itself if local, else a copy made once per process."""
    target = _cache_target(uri, cache_dir)
    if target is None:
        return uri.removeprefix("file://")
    if not os.path.exists(os.path.join(target, ".complete")):
        from transforms.core.remote_io import filesystem, retry_transient

        fs, path = filesystem(uri)
        base = path.rstrip("/")
        partial = f"{target}.{os.getpid()}.partial"

        def copy() -> None:
            for remote in fs.find(base):
                local = os.path.join(partial, *remote[len(base) + 1 :].split("/"))
                os.makedirs(os.path.dirname(local), exist_ok=True)
                _copy_file(fs, remote, local)

        retry_transient(f"copying {uri}", copy)
        open(os.path.join(partial, ".complete"), "w").close()
        try:
            os.replace(partial, target)
        except OSError:  # another process finished first
            pass
    return target


def local_copy_with(uri: str, suffixes: tuple[str, ...], cache_dir: str | None = None) -> str:
    """``local_copy`` of a file and of its companions ``uri + suffix`` that exist (an ONNX
    graph's external weights, ``model.onnx.data``), side by side under their own names."""
    folder = _cache_target(uri, cache_dir)
    if folder is None:
        return uri.removeprefix("file://")

    from transforms.core.remote_io import filesystem

    fs, path = filesystem(uri)
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(path)
    for companion in (uri, *(uri + s for s in suffixes if fs.exists(path + s))):
        copied = local_copy(companion, folder)
        target = os.path.join(folder, os.path.basename(companion))
        if not os.path.exists(target):
            os.replace(copied, target)
    return os.path.join(folder, name)
