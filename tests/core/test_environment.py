"""The installed environment: lock pins, drift, the digest, and the launcher/worker check."""

from __future__ import annotations

import json

import pytest

from transforms.core import environment as env

LOCK = """# pyproject-dependencies-sha256: abc
apache-beam[gcp]==2.77.0 \\
    --hash=sha256:00
    # via pathbeam (pyproject.toml)
Torch==2.13.0+cpu \\
    --hash=sha256:11
zope.interface==7.0 ; python_version >= "3.11" \\
    --hash=sha256:22
# The following packages are considered to be unsafe in a requirements file:
setuptools==80.0.0 \\
    --hash=sha256:33
"""


def test_lock_pins_reads_pip_compile_output():
    assert env.lock_pins(LOCK) == {
        "apache-beam": "2.77.0",
        "torch": "2.13.0+cpu",
        "zope-interface": "7.0",
        "setuptools": "80.0.0",
    }


def test_drift_names_each_package_off_its_pin():
    record = {"pins": {"numpy": "2.4.6", "pyarrow": "25.0.1", "dill": "0.3.1"}}
    present = {"numpy": "2.4.6", "pyarrow": "26.0.0", "pathbeam": "0.1.0"}
    assert env.drift(record, present) == [
        "dill: lock 0.3.1, installed nothing",
        "pyarrow: lock 25.0.1, installed 26.0.0",
    ]
    assert env.drift({}, present) == ["no lock record"]


def test_the_digest_changes_with_any_version():
    a = {"numpy": "2.4.6", "pyarrow": "25.0.1"}
    assert env.digest(a) == env.digest(dict(reversed(a.items())))
    assert env.digest(a) != env.digest({**a, "pyarrow": "25.0.2"})


def test_environment_names_the_lock_and_the_key_packages(tmp_path, monkeypatch):
    lock = tmp_path / "dev.lock"
    lock.write_text(LOCK)
    env.write_lock_record(str(lock), str(tmp_path))
    monkeypatch.setattr(env.sys, "prefix", str(tmp_path))
    described = env.environment()
    assert described["lock"] == "dev.lock"
    assert len(described["lock_sha256"]) == 64
    assert described["apache-beam"] == env.installed(("apache-beam",))["apache-beam"]
    assert {"digest", "drift", "python", "numpy", "pyarrow", "torch"} <= set(described)
    assert "setuptools: lock 80.0.0" in described["drift"]  # this venv is not that lock
    assert json.loads((tmp_path / env.LOCK_RECORD).read_text())["pins"]["torch"] == "2.13.0+cpu"


def test_a_worker_with_another_beam_fails_in_one_line_naming_it():
    launcher = {**env.pickling_versions(), "apache-beam": "2.76.0"}
    with pytest.raises(env.EnvironmentMismatch) as failure:
        env.check_same_pickling(launcher)
    message = str(failure.value)
    here = env.pickling_versions()["apache-beam"]
    assert f"apache-beam {here} here, 2.76.0 at launch" in message
    assert "\n" not in message
    env.check_same_pickling(env.pickling_versions())  # the same: nothing to say


def test_a_launcher_off_the_worker_lock_is_named(tmp_path):
    lock = tmp_path / "worker-gpu.lock"
    here = env.pickling_versions()  # dill only where something installed it
    lock.write_text("".join(f"{n}=={v}\n" for n, v in {**here, "apache-beam": "2.76.0"}.items()))
    assert env.launch_mismatches(lock) == [
        f"apache-beam {here['apache-beam']} here, 2.76.0 in the worker image's lock"
    ]


def test_a_vendored_copy_later_on_sys_path_does_not_shadow_the_installed_one():
    """Importing setuptools puts its _vendor folder (an older importlib-metadata, zipp...) on
    sys.path; the suite then read 6 packages as drifted from the lock. The version that counts
    is the one imported: the first on sys.path, as ``metadata.version`` says."""
    from importlib import metadata

    import setuptools  # noqa: F401 - what appends setuptools/_vendor to sys.path

    present = env.installed()
    for name in ("zipp", "importlib-metadata", "packaging"):
        assert present[name] == metadata.version(name), name
