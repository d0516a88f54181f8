"""A ``--template_location`` run stages a classic template offline when staging goes to the GCS
emulator: the template file holds the environment (image, GPU option, experiments) and the
staged pipeline.pb holds the graph. The Flex Template metadata names only real options."""

from __future__ import annotations

import json
import re

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_runner_api_pb2

import pipelines.gpu  # noqa: F401 - registers --gpu
import pipelines.options  # noqa: F401 - registers the pipelines' flags
from tests.conftest import REPO
from tests.processes import run_python

IMAGE = "us-central1-docker.pkg.dev/local-project/pathbeam/worker:test"


@pytest.mark.gcp
@pytest.mark.pipeline
def test_template_location_stages_the_job_in_gcs(local_gcp):
    client = local_gcp.storage()
    bucket = client.lookup_bucket("templates-bucket") or client.create_bucket("templates-bucket")
    proc = run_python(
        *[
            "-m",
            "pipelines.slide_inference",
            "--runner=DataflowRunner",
            f"--project={local_gcp.project}",
            "--region=us-central1",
            "--temp_location=gs://templates-bucket/tmp",
            "--staging_location=gs://templates-bucket/staging",
            "--template_location=gs://templates-bucket/templates/slides.json",
            f"--sdk_container_image={IMAGE}",
            "--sdk_location=container",
            "--gpu=t4",
            "--slides=gs://templates-bucket/slides.csv",
            "--model=tumor=gs://templates-bucket/models/tumor.pt2",
            f"--output=bq://{local_gcp.project}.nightly",
            "--artifacts=gs://templates-bucket/artifacts",
            "--skip_existing",
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "template staged at gs://templates-bucket/templates/slides.json" in proc.stdout

    template = bucket.blob("templates/slides.json").download_as_text()
    assert IMAGE in template
    assert "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver" in template
    assert "no_use_multiple_sdk_containers" in template
    assert json.loads(template)["environment"]

    staged = [b for b in bucket.list_blobs(prefix="staging/") if b.name.endswith("pipeline.pb")]
    assert len(staged) == 1
    graph = beam_runner_api_pb2.Pipeline.FromString(staged[0].download_as_bytes())
    names = {t.unique_name for t in graph.components.transforms.values()}
    for stage in ("ReadSlideManifest", "SkipExisting", "PlanPatches", "ReadPatches"):
        assert stage in names, stage
    assert "WriteResults/slide_summaries/ToBigQuery/ReplaceFromStaging" in names


def known_options() -> set[str]:
    return set(PipelineOptions([]).get_all_options())


@pytest.mark.parametrize("kind", ["slides", "text", "stream"])
def test_flex_template_metadata_names_real_options_with_working_regexes(kind):
    metadata = json.loads((REPO / "containers" / "launcher" / f"{kind}_metadata.json").read_text())
    assert metadata["name"] and metadata["description"]
    options = known_options()
    for param in metadata["parameters"]:
        assert param["name"] in options, param["name"]
        assert param["label"] and param["helpText"]
        for regex in param.get("regexes", []):
            re.compile(regex)
    by_name = {p["name"]: p for p in metadata["parameters"]}
    required = {n for n, p in by_name.items() if not p["isOptional"]}
    assert {"model", "output"} <= required

    def ok(name: str, value: str) -> bool:
        return all(re.match(r, value) for r in by_name[name].get("regexes", []))

    assert ok("output", "bq://my-project.results") and ok("output", "gs://bucket/results")
    assert not ok("output", "bq://my-project.results; DROP TABLE x")
    assert not ok("output", "/local/folder")
    assert ok("model", "tumor=gs://bucket/models/tumor.pt2")
    assert not ok("model", "tumor=/tmp/x.pt2")
    assert ok("skip_existing", "true") and not ok("skip_existing", "yes please")
    assert ok("gpu", "l4") and not ok("gpu", "h100")


LOCAL_ONLY = {"progress_interval_s", "bigquery_endpoint", "verbose"}


@pytest.mark.parametrize("kind", ["slides", "text", "stream"])
def test_flex_template_metadata_describes_every_user_facing_flag(kind):
    from pipelines.flags import COMMON, SLIDES, STREAM, TEXT, flag_names

    groups = {"slides": SLIDES, "text": TEXT, "stream": STREAM}[kind]
    flags = set(flag_names(COMMON + groups)) - LOCAL_ONLY
    if kind == "text":  # a shared flag the text pipeline does not read
        flags -= {"artifacts"}
    metadata = json.loads((REPO / "containers" / "launcher" / f"{kind}_metadata.json").read_text())
    assert flags - {p["name"] for p in metadata["parameters"]} == set()
