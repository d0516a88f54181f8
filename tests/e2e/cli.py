"""Run a pipeline's CLI in a subprocess, as a user would, and read its dead letters."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.processes import run_python


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    return run_python("-m", module, *args, "--progress_interval_s", "2", timeout=900)


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
