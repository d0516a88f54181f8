"""The locks in ``requirements/``: what ``scripts/lock.sh`` does to them after pip-compile, and
the checks CI runs on them offline.

    python scripts/locks.py check          # every lock agrees with pyproject.toml and each other
    python scripts/locks.py verify LOCK    # the installed environment is exactly LOCK
    python scripts/locks.py record LOCK    # say that LOCK installed this environment
    python scripts/locks.py diff OLD NEW   # what a refresh changed, a line a package
    python scripts/locks.py drop LOCK NAME # remove NAME's pin (the worker's onnxruntime)
    python scripts/locks.py stamp LOCK     # write the pyproject digest into LOCK's header
    python scripts/locks.py pins LOCK      # LOCK's pins, as a constraints file
    python scripts/locks.py subtract A B   # A's pinned, hashed packages that B lacks

pip-compile has no offline check that a lock still answers its inputs, so ``stamp`` writes the
sha256 of pyproject.toml's dependency lists into each lock, and ``check`` fails when they
changed since (run ``scripts/lock.sh``), or when a pin no longer satisfies a requirement.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transforms.core.environment import (  # noqa: E402 - after the path
    PICKLING_PACKAGES,
    PIN,
    canonical,
    drift,
    installed,
    lock_pins,
    write_lock_record,
)

LOCKS = {
    # lock -> (pyproject extras it holds, what installs it)
    "dev.lock": (("dev",), "scripts/setup.sh: laptops, CI (torch's CPU build)"),
    "launcher.lock": ((), "containers/launcher/Dockerfile (torch's CPU build)"),
    "worker-gpu.lock": ((), "containers/worker/Dockerfile (CUDA torch, onnxruntime-gpu)"),
}
WORKER_ONLY = {"onnxruntime": "onnxruntime-gpu"}
"""Requirements the worker lock answers with another package."""
_STAMP = re.compile(r"^# pyproject-dependencies-sha256: ([0-9a-f]{64})$", re.MULTILINE)


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def inputs_digest() -> str:
    """sha256 of pyproject.toml's dependency lists: what a lock answers."""
    project = pyproject()
    wanted = {"dependencies": project["dependencies"], "extras": project["optional-dependencies"]}
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()


def requirements(extras: tuple[str, ...]) -> list[str]:
    project = pyproject()
    return list(project["dependencies"]) + [
        r for extra in extras for r in project["optional-dependencies"][extra]
    ]


def problems(lock: str) -> list[str]:
    """What is wrong with ``requirements/<lock>`` against pyproject.toml."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    path = ROOT / "requirements" / lock
    text = path.read_text()
    found = []
    stamp = _STAMP.search(text)
    if not stamp or stamp.group(1) != inputs_digest():
        found.append(f"{lock}: pyproject.toml's dependencies changed since it was locked")
    pins = lock_pins(text)
    extras, _ = LOCKS[lock]
    for line in requirements(extras):
        req = Requirement(line)
        name = canonical(req.name)
        if lock == "worker-gpu.lock" and name in WORKER_ONLY:
            name = WORKER_ONLY[name]
            if name not in pins:
                found.append(f"{lock}: no pin for {name} (in place of {req.name})")
            continue
        if name not in pins:
            found.append(f"{lock}: no pin for {req.name}")
        elif not req.specifier.contains(Version(pins[name]), prereleases=True):
            found.append(f"{lock}: {name}=={pins[name]} does not satisfy {line}")
    if "--hash=sha256:" not in text:
        found.append(f"{lock}: no hashes")
    return found


def check() -> list[str]:
    """Every lock against pyproject.toml; Beam (and dill, where pinned) equal in all three (a
    job pickled by the launcher is unpickled by the workers)."""
    found = [p for lock in LOCKS for p in problems(lock)]
    pins = {lock: lock_pins((ROOT / "requirements" / lock).read_text()) for lock in LOCKS}
    for name in PICKLING_PACKAGES:
        versions = {lock: p[name] for lock, p in pins.items() if name in p}
        if len(set(versions.values())) > 1 or (name == "apache-beam" and len(versions) < 3):
            found.append(f"{name} differs between the locks: {versions}")
    return found


def diff(old: dict[str, str], new: dict[str, str]) -> list[str]:
    lines = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a != b:
            lines.append(f"  {name}: {a or '(new)'} -> {b or '(removed)'}")
    return lines


def blocks(text: str) -> list[tuple[str | None, str]]:
    """A pip-compile lock as ``(package or None, its lines)``: a pin with its hashes and
    annotations is one block; header and comment lines are blocks of ``None``."""
    out: list[tuple[str | None, str]] = []
    for line in text.splitlines(keepends=True):
        pin = PIN.match(line)
        if pin:
            out.append((canonical(pin.group(1)), line))
        elif line.startswith((" ", "\t")) and out and out[-1][0] is not None:
            out[-1] = (out[-1][0], out[-1][1] + line)
        else:
            out.append((None, line))
    return out


def drop(path: Path, name: str) -> None:
    """Remove ``name``'s pin, its hashes and its annotations from a pip-compile lock."""
    kept = [lines for package, lines in blocks(path.read_text()) if package != canonical(name)]
    path.write_text("".join(kept))


def subtract(lock: Path, other: Path, also: tuple[str, ...] = ()) -> str:
    """The pins of ``lock`` (with their hashes) whose package ``other`` does not pin, nor
    ``also`` names: what the worker image adds to run the tests."""
    skip = set(lock_pins(other.read_text())) | {canonical(n) for n in also}
    return "".join(
        lines for package, lines in blocks(lock.read_text()) if package and package not in skip
    )


def stamp(path: Path) -> None:
    text = _STAMP.sub("", path.read_text()).lstrip("\n")
    path.write_text(f"# pyproject-dependencies-sha256: {inputs_digest()}\n{text}")


def main(argv: list[str]) -> int:
    command, *args = argv or ["check"]
    if command == "check":
        found = check()
        print("\n".join(found) or f"locks agree with pyproject.toml: {', '.join(LOCKS)}")
        return 1 if found else 0
    if command == "verify":
        record = {"lock": args[0], "pins": lock_pins(Path(args[0]).read_text())}
        found = drift(record, installed())
        print("\n".join(found) or f"the environment is exactly {args[0]}")
        return 1 if found else 0
    if command == "record":
        print(f"recorded in {write_lock_record(args[0])}")
        return 0
    if command == "diff":
        old_dir, new_dir = Path(args[0]), Path(args[1])
        for lock in LOCKS:
            old = lock_pins((old_dir / lock).read_text()) if (old_dir / lock).exists() else {}
            new = lock_pins((new_dir / lock).read_text())
            if not old:
                print(f"{lock}: a new lock of {len(new)} packages")
                continue
            changed = diff(old, new)
            print(f"{lock}: {len(changed)} change(s)")
            if changed:
                print("\n".join(changed))
        return 0
    if command == "drop":
        drop(Path(args[0]), args[1])
        return 0
    if command == "subtract":
        print(subtract(Path(args[0]), Path(args[1]), ("torch", "onnxruntime")), end="")
        return 0
    if command == "stamp":
        stamp(Path(args[0]))
        return 0
    if command == "pins":
        print(
            "\n".join(f"{n}=={v}" for n, v in sorted(lock_pins(Path(args[0]).read_text()).items()))
        )
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
