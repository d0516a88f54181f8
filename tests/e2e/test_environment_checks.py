"""A job whose launcher and workers cannot read each other's pickles fails in one line naming
the mismatch: at launch against the worker image's lock (before anything is submitted), and in
a worker's first setup() against the launcher's versions. Each run records its environment."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.e2e.cli import run_module
from tests.processes import run_python
from transforms.core import environment

pytestmark = [pytest.mark.pipeline]


def test_a_dataflow_launch_off_the_worker_lock_fails_before_submitting(
    tmp_path, cmu1, tiny_models, monkeypatch
):
    here = environment.pickling_versions()
    lock = tmp_path / "worker-gpu.lock"
    lock.write_text("".join(f"{n}=={v}\n" for n, v in {**here, "apache-beam": "2.76.0"}.items()))
    slides = tmp_path / "slides.csv"
    slides.write_text(f"slide_id,uri\ncmu1,{cmu1}\n")
    monkeypatch.setenv(environment.WORKER_LOCK_ENV, str(lock))
    done = run_module(
        "pipelines.slide_inference",
        *("--slides", str(slides), "--model", f"two={tiny_models['two']}"),
        *("--output", str(tmp_path / "out"), "--runner", "DataflowRunner"),
        *("--project", "p-123", "--region", "us-central1"),
        *("--temp_location", "gs://b/tmp"),
    )
    assert done.returncode == 2, done.stderr
    [line] = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert f"apache-beam {here['apache-beam']} here, 2.76.0 in the worker image's lock" in line
    assert str(lock) in line
    assert not (tmp_path / "out" / "runs").exists()  # nothing started


def test_a_worker_off_the_launchers_versions_fails_the_job_naming_it(
    tmp_path, cmu1, tiny_models, monkeypatch
):
    """The launcher's versions are captured into the graph when it is built; here they are
    made to say 2.76.0, and the worker (this process, on the local runner) has another."""
    from pipelines.slide_inference import run
    from transforms.models import runner

    launcher = {**environment.pickling_versions(), "apache-beam": "2.76.0"}
    monkeypatch.setattr(runner, "pickling_versions", lambda: launcher)
    slides = tmp_path / "slides.csv"
    slides.write_text(f"slide_id,uri\ncmu1,{cmu1}\n")
    with pytest.raises(Exception) as failure:
        run(
            ["--slides", str(slides), "--model", f"two={tiny_models['two']}", "--patch_px", "64"]
            + ["--output", str(tmp_path / "out"), "--no_heatmaps"]
        )
    here = environment.pickling_versions()["apache-beam"]
    assert f"apache-beam {here} here, 2.76.0 at launch" in str(failure.value)
    assert "EnvironmentMismatch" in str(failure.value) or isinstance(
        failure.value, environment.EnvironmentMismatch
    )


def test_every_run_records_its_environment(tmp_path, cmu1, tiny_models):
    slides = tmp_path / "slides.csv"
    slides.write_text(f"slide_id,uri\ncmu1,{cmu1}\n")
    out = tmp_path / "out"
    done = run_module(
        "pipelines.slide_inference",
        *("--slides", str(slides), "--model", f"two={tiny_models['two']}", "--patch_px", "64"),
        *("--output", str(out), "--no_heatmaps", "--run_id", "env1"),
    )
    assert done.returncode == 0, done.stderr
    [row] = pd.read_parquet(out / "runs").to_dict("records")
    recorded = {p["key"]: p["value"] for p in row["environment"]}
    # what the run's own process saw; compared with facts that do not depend on what this
    # test process has imported (its sys.path is the suite's)
    lock = environment.lock_record()
    assert lock is not None
    assert (recorded["lock"], recorded["lock_sha256"]) == (lock["lock"], lock["sha256"])
    assert recorded["drift"] == ""  # the run's environment is exactly its lock
    for name in ("apache-beam", "torch", "numpy", "pyarrow", "tiffslide", "wsidicom"):
        assert recorded[name] == lock["pins"][name], name
    assert len(recorded["digest"]) == 64
    shown = run_python("-m", "pipelines.runs", "--output", str(out), "--run_id", "env1")
    assert f"lock {recorded['lock']}" in shown.stdout, shown.stdout
    assert f"apache-beam {recorded['apache-beam']}" in shown.stdout
    report = next((out / "report").rglob("index.html")).read_text()
    assert f"digest {recorded['digest'][:12]}" in report
