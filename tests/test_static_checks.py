"""The code passes its own static checks: ruff (lint and format) everywhere, mypy on the
packages (``[tool.mypy]`` in pyproject.toml)."""

from __future__ import annotations

import subprocess

import pytest

from tests.processes import run_python

pytestmark = pytest.mark.slow  # mypy takes minutes on a cold cache


def _run(*args: str) -> subprocess.CompletedProcess:
    return run_python("-m", *args, timeout=900)


def test_ruff_finds_nothing_and_the_code_is_formatted():
    lint = _run("ruff", "check", ".")
    assert lint.returncode == 0, lint.stdout[-3000:]
    formatted = _run("ruff", "format", "--check", ".")
    assert formatted.returncode == 0, formatted.stdout[-3000:]


def test_mypy_finds_no_type_errors_in_our_packages():
    result = _run("mypy")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Success: no issues found" in result.stdout
