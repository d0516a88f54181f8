"""Run Python in a subprocess from the repository, as a user's shell would (one helper)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def run_python(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python ARGS`` (the venv's) in the repository root; output captured as text."""
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )
