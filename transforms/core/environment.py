"""The installed environment: which lock installed it, what it resolved to, and whether the
launcher and the workers of one job can read each other's pickles.

Every install (``scripts/setup.sh``, both container images) installs from one lock in
``requirements/`` and then writes ``LOCK_RECORD`` beside the interpreter (``sys.prefix``): the
lock's name, its sha256 and its pins. A run records ``environment()`` in its runs row, and
``drift()`` says where the installed packages left their lock (a hand-upgraded package).

The launcher pickles the job graph and the workers unpickle it: they must run the same Beam
(whose cloudpickle is its own) and dill. ``check_same_pickling`` compares the launcher's
versions (captured when the graph is built) with a worker's, in every worker's first
``setup()``, and fails with one line naming the mismatch rather than an unpickling error.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from importlib import metadata
from pathlib import Path

from transforms.core.errors import PipelineError

LOCK_RECORD = "pathbeam-lock.json"
"""Written by the installers into ``sys.prefix``: ``{"lock", "sha256", "pins"}``."""

KEY_PACKAGES = (
    "apache-beam",
    "torch",
    "transformers",
    "onnxruntime",
    "onnxruntime-gpu",
    "tiffslide",
    "wsidicom",
    "numpy",
    "pyarrow",
)
"""Whose versions a runs row names (the rest are in the lock its sha256 names)."""

PICKLING_PACKAGES = ("apache-beam", "dill")
"""What a launcher and its workers must share to read each other's pickles: Beam (2.77 carries
its own copy of cloudpickle, its default pickler, in ``apache_beam.internal.cloudpickle``), and
dill where it is installed (``--pickle_library dill``; a Beam extra)."""

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", re.MULTILINE)
"""A lock's ``name==version`` line (pip-compile's format): the package and its version."""


class EnvironmentMismatch(PipelineError):
    """A worker whose Beam or dill differs from the launcher's."""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(text: str) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line of a lock (pip-compile's format)."""
    return {canonical(name): version for name, version in PIN.findall(text)}


def installed(names: tuple[str, ...] | None = None) -> dict[str, str]:
    """``name -> version`` of the installed distributions (all, or those of ``names`` that are
    installed)."""
    found: dict[str, str] = {}
    if names is not None:
        for name in names:
            try:
                found[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                pass
        return found
    for dist in metadata.distributions():
        # the first on sys.path is the one imported (as metadata.version says); later ones are
        # copies vendored by other packages (setuptools puts its _vendor folder on sys.path,
        # with an older importlib-metadata and zipp)
        found.setdefault(canonical(dist.metadata["Name"]), dist.version)
    return found


def lock_record(prefix: str | None = None) -> dict | None:
    """What the installer wrote into ``prefix`` (default ``sys.prefix``), or ``None``."""
    path = Path(prefix or sys.prefix) / LOCK_RECORD
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_lock_record(lock: str, prefix: str | None = None) -> Path:
    """Record that ``lock`` installed this environment (the installers call this last)."""
    text = Path(lock).read_text()
    record = {
        "lock": os.path.basename(lock),
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "pins": lock_pins(text),
    }
    path = Path(prefix or sys.prefix) / LOCK_RECORD
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path


def drift(record: dict | None = None, present: dict[str, str] | None = None) -> list[str]:
    """Where the installed packages differ from the lock that installed them, one
    ``name: lock X, installed Y`` each; ``["no lock record"]`` without one. Packages the lock
    does not name (the project itself, in editable mode) are not drift."""
    record = lock_record() if record is None else record
    if not record:
        return ["no lock record"]
    present = installed() if present is None else present
    found = []
    for name, pinned in sorted(record["pins"].items()):
        have = present.get(name)
        if have != pinned:
            found.append(f"{name}: lock {pinned}, installed {have or 'nothing'}")
    return found


def digest(present: dict[str, str]) -> str:
    """sha256 of every installed distribution's name and version: equal digests, equal
    environments."""
    text = "\n".join(f"{n}=={v}" for n, v in sorted(present.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def environment() -> dict[str, str]:
    """What a runs row records of this process's environment: the lock (name, sha256), the
    digest of everything installed, the drift from the lock, and the key packages' versions."""
    record = lock_record()
    present = installed()
    found = drift(record, present)
    described = {
        "lock": record["lock"] if record else "none (not installed from a lock)",
        "lock_sha256": record["sha256"] if record else "",
        "digest": digest(present),
        "drift": "; ".join(found[:5]) + (f"; {len(found) - 5} more" if len(found) > 5 else ""),
        "python": sys.version.split()[0],
    }
    for name in KEY_PACKAGES:
        if name in present:
            described[name] = present[name]
    return described


def pickling_versions() -> dict[str, str]:
    """This process's Beam and dill (captured by the launcher into the graph)."""
    return installed(PICKLING_PACKAGES)


def mismatches(expected: dict[str, str], present: dict[str, str], where: str) -> list[str]:
    """``name X here, Y <where>`` for Beam if it differs, and dill if both have it and differ."""
    return [
        f"{name} {present.get(name, 'missing')} here, {want} {where}"
        for name, want in sorted(expected.items())
        if present.get(name) != want and (name == "apache-beam" or name in present)
    ]


def check_same_pickling(launcher: dict[str, str]) -> None:
    """Raise ``EnvironmentMismatch`` (one line) if this worker's Beam or dill differ from the
    launcher's."""
    found = mismatches(launcher, pickling_versions(), "at launch")
    if found:
        raise EnvironmentMismatch(
            "this worker cannot safely run the launcher's job graph: "
            + "; ".join(found)
            + ". Build the worker image and the launcher from the same lock (requirements/)"
        )


WORKER_LOCK_ENV = "PATHBEAM_WORKER_LOCK"
"""Where the worker image's lock is, for the launch check (the launcher image sets it)."""
WORKER_LOCK = "requirements/worker-gpu.lock"


def worker_lock() -> Path | None:
    """The worker image's lock: ``PATHBEAM_WORKER_LOCK``, else the checkout's ``WORKER_LOCK``."""
    named = os.environ.get(WORKER_LOCK_ENV)
    if named:
        return Path(named)
    here = Path(__file__).resolve().parents[2] / WORKER_LOCK
    return here if here.is_file() else None


def launch_mismatches(lock: Path) -> list[str]:
    """Where this launcher's Beam and dill differ from the worker lock's pins."""
    pins = lock_pins(lock.read_text())
    expected = {name: pins[name] for name in PICKLING_PACKAGES if name in pins}
    return mismatches(expected, pickling_versions(), "in the worker image's lock")
