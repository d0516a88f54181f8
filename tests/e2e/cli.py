"""Run a pipeline's CLI in a subprocess, as a user would, and read its dead letters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args, "--progress_interval_s", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ},
    )


def read_errors(out: Path) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted((out / "errors").glob("*.jsonl"))
        for line in path.read_text().splitlines()
        if line
    ]


def tiny_text_model_flags(models: dict[str, str]) -> list[str]:
    """The tiny NER (``ner``) and classifier (``topic``) models, in 128-token windows."""
    return [
        "--model",
        f"ner={models['ner']}",
        "--task",
        "ner=token-classification",
        "--model",
        f"topic={models['cls']}",
        "--task",
        "topic=text-classification",
        "--window_tokens",
        "128",
        "--stride_tokens",
        "32",
    ]
