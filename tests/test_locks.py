"""One locked environment: the locks in requirements/ answer pyproject.toml, agree on what
pickles a job, are what both images install, and are what this venv holds."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO
from transforms.core.environment import drift, lock_pins, lock_record

LOCKS = REPO / "requirements"


def pins(lock: str) -> dict[str, str]:
    return lock_pins((LOCKS / lock).read_text())


def test_the_locks_agree_with_pyproject_and_with_each_other():
    done = subprocess.run(
        [sys.executable, "scripts/locks.py", "check"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "locks agree with pyproject.toml" in done.stdout


def test_the_check_names_a_dependency_changed_since_the_lock(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import locks
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(locks, "inputs_digest", lambda: "0" * 64)
    found = locks.problems("dev.lock")
    assert found == ["dev.lock: pyproject.toml's dependencies changed since it was locked"]


def test_the_worker_lock_has_the_gpu_builds_and_the_same_beam_as_its_image():
    worker = pins("worker-gpu.lock")
    assert "onnxruntime-gpu" in worker and "onnxruntime" not in worker
    assert "+" not in worker["torch"]  # PyPI's build: CUDA on linux/x86_64
    assert any(name.startswith("nvidia-") for name in worker)
    dockerfile = (REPO / "containers" / "worker" / "Dockerfile").read_text()
    assert f"ARG BEAM_VERSION={worker['apache-beam']}\n" in dockerfile
    for lock in ("dev.lock", "launcher.lock"):
        cpu = pins(lock)
        assert cpu["torch"].split("+")[0] == worker["torch"], lock
        assert not any(name.startswith("nvidia-") for name in cpu), lock


def _pip_installs(dockerfile: str) -> list[list[str]]:
    text = re.sub(r"\\\n\s*", " ", dockerfile)
    return [
        shlex.split(command.strip())
        for line in text.splitlines()
        if line.startswith("RUN ")
        for command in line[4:].split("&&")
        if re.match(r"\s*(python -m )?pip install", command)
    ]


@pytest.mark.parametrize(
    "image, lock", [("worker", "worker-gpu.lock"), ("launcher", "launcher.lock")]
)
def test_each_image_installs_from_its_lock_and_never_from_bare_names(image, lock):
    dockerfile = (REPO / "containers" / image / "Dockerfile").read_text()
    installs = _pip_installs(dockerfile)
    assert len(installs) == 2, installs
    for words in installs:
        assert "--no-deps" in words, words  # nothing resolved at build time
        targets = [w for w in words[2:] if not w.startswith("-")]
        if "-r" in words:
            assert "--require-hashes" in words, words
            assert words[words.index("-r") + 1].endswith(f"/{lock}"), words
        else:
            assert targets == ["/wheels/*.whl"], words  # the project itself, built from here
    assert f"requirements/{lock}" in dockerfile
    assert "write_lock_record as w; w('" in dockerfile


def test_this_environment_is_exactly_its_lock():
    """scripts/setup.sh installs dev.lock (the worker image, worker-gpu.lock): every pinned
    package is installed at its pin, and the lock recorded is the one in the repo."""
    record = lock_record()
    assert record is not None, "not installed from a lock: run scripts/setup.sh"
    assert record["pins"] == pins(record["lock"]), f"{record['lock']} changed: run setup.sh"
    assert drift(record) == []
