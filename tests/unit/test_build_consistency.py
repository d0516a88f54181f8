"""Beam, Python and torch versions agree across pyproject.toml, the image and cloudbuild."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import REPO


def pinned(name: str) -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if re.match(rf"{re.escape(name)}(\[|=)", d))
    return spec.split("==")[1]


def test_beam_version_is_the_same_everywhere():
    beam = pinned("apache-beam")
    dockerfile = (REPO / "containers" / "worker" / "Dockerfile").read_text()
    cloudbuild = (REPO / "cloudbuild.yaml").read_text()
    assert re.search(rf"^ARG BEAM_VERSION={re.escape(beam)}$", dockerfile, re.M)
    assert re.search(rf"^\s+_BEAM_VERSION: {re.escape(beam)}$", cloudbuild, re.M)
    assert "apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}" in dockerfile


def test_python_and_torch_versions_match():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    minor = re.search(r">=3\.(\d+),<3\.(\d+)", project["requires-python"])
    assert minor and int(minor.group(2)) == int(minor.group(1)) + 1
    python = f"3.{minor.group(1)}"
    dockerfile = (REPO / "containers" / "worker" / "Dockerfile").read_text()
    assert re.search(rf"^ARG PYTHON_VERSION={re.escape(python)}$", dockerfile, re.M)
    assert f'_PYTHON_VERSION: "{python}"' in (REPO / "cloudbuild.yaml").read_text()
    assert re.search(rf"^ARG TORCH_VERSION={re.escape(pinned('torch'))}$", dockerfile, re.M)
