"""Both pipelines translate for Dataflow offline (DataflowRunner --dry_run=True, no network).

The job graph holds the named stages, the workers run the given container image, and no stage of
ours is an unnamed lambda. Graph construction and launch import neither torch nor transformers:
checked in a subprocess, since this test process may already have imported them elsewhere.
"""

from __future__ import annotations

import json

import pytest

from tests.processes import run_python

pytestmark = [pytest.mark.pipeline, pytest.mark.usefixtures("local_gcp")]
"""Launch reads each gs:// model's recipe (none here: the emulator answers 404); with no network,
the real endpoint would not answer at all."""

IMAGE = "us-central1-docker.pkg.dev/test-project/pathbeam/worker:test"
DATAFLOW = [
    "--runner=DataflowRunner",
    "--dry_run=True",
    "--project=test-project",
    "--region=us-central1",
    "--temp_location=gs://test-bucket/tmp",
    f"--sdk_container_image={IMAGE}",
    "--sdk_location=container",
    "--dataflow_service_options=worker_accelerator=type:nvidia-tesla-t4;count:1;"
    "install-nvidia-driver",
    "--experiments=no_use_multiple_sdk_containers",
]
PIPELINES = {
    "slides": (
        "pipelines.slide_inference",
        [
            "--slides",
            "gs://b/slides.csv",
            "--patches",
            "gs://b/patches.csv",
            "--model",
            "tumor=gs://b/tumor.pt2",
            "--model",
            "grade=gs://b/grade.pt2",
            "--group_by",
            "case_id",
            "--output",
            "gs://b/out",
        ],
    ),
    "text": (
        "pipelines.text_inference",
        [
            "--documents",
            "gs://b/papers.jsonl",
            "--model",
            "ner=gs://b/ner",
            "--task",
            "ner=token-classification",
            "--model",
            "emb=gs://b/emb",
            "--task",
            "emb=embedding",
            "--output",
            "gs://b/out",
        ],
    ),
}
PROBE = """
import json, sys
import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
from apache_beam.portability.api import beam_runner_api_pb2
import importlib
module = importlib.import_module(sys.argv[1])
options = PipelineOptions(sys.argv[2:])
from pipelines.gpu import apply_gpu_preset
apply_gpu_preset(options)
config = {"pipelines.slide_inference": "slide_job_config",
          "pipelines.text_inference": "text_job_config"}[sys.argv[1]]
cfg = getattr(importlib.import_module("pipelines.options"), config)(options)
pipeline = beam.Pipeline(options=options)
module.write(module.build(pipeline, cfg), cfg)
result = pipeline.run()
components = result.job.proto_pipeline.components
images = [beam_runner_api_pb2.DockerPayload.FromString(e.payload).container_image
          for e in components.environments.values() if e.urn == "beam:env:docker:v1"]
gcp = options.view_as(GoogleCloudOptions)
print(json.dumps({
    "names": sorted(t.unique_name for t in components.transforms.values()),
    "images": images,
    "service_options": gcp.dataflow_service_options,
    "experiments": options.get_all_options()["experiments"],
    "machine_type": options.get_all_options()["machine_type"],
    "require_gpu": options.get_all_options()["require_gpu"],
    "heavy": [m for m in ("torch", "transformers") if m in sys.modules],
    "hints": {t.unique_name: {k: v.decode() for k, v in
              components.environments[t.environment_id].resource_hints.items()}
              for t in components.transforms.values() if t.environment_id},
}))
"""


def translate(kind: str, dataflow: list[str] = DATAFLOW, extra: tuple[str, ...] = ()) -> dict:
    module, args = PIPELINES[kind]
    proc = run_python("-c", PROBE, module, *dataflow, *args, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "kind, stages",
    [
        (
            "slides",
            [
                "ReadSlideManifest",
                "ReadPatchManifest",
                "PlanPatches",
                "ReadPatches",
                "RunModel/tumor",
                "RunModel/grade",
                "SummarizeSlides",
                "SummarizeCases",
                "WriteResults/patch_predictions",
                "WriteResults/slide_summaries",
                "WriteResults/case_summaries",
                "WriteResults/errors",
            ],
        ),
        (
            "text",
            [
                "ReadDocuments",
                "RunModel/ner",
                "RunModel/emb",
                "RunModel/ner/SortAndBatch",
                "WriteResults/text_entities",
                "WriteResults/text_embeddings",
                "WriteResults/errors",
            ],
        ),
    ],
)
def test_dataflow_job_graph_offline(kind, stages):
    job = translate(kind)
    assert set(stages) <= set(job["names"]), sorted(set(stages) - set(job["names"]))
    assert job["images"] and set(job["images"]) == {IMAGE}
    assert any("worker_accelerator=type:nvidia-tesla-t4" in o for o in job["service_options"])
    assert "no_use_multiple_sdk_containers" in job["experiments"]
    # The only lambdas are inside Beam's own Create and WriteToFiles, never one of our stages.
    lambdas = [n for n in job["names"] if "<lambda" in n]
    assert all(("<lambda at core.py" in n or "<lambda at fileio.py" in n) for n in lambdas)
    assert job["heavy"] == []


def test_a_composition_with_a_gpu_hinted_detail_model_translates_for_dataflow():
    """A gate, a GPU-hinted gated model and a slide head over an encoder: the dry run needs no
    credentials; only the hinted stage asks for the accelerator."""
    l4 = "type:nvidia-l4;count:1;install-nvidia-driver"
    plain = [f for f in DATAFLOW if not f.startswith(("--dataflow_service", "--experiments"))]
    job = translate(
        "slides",
        plain,
        (
            "--model", "enc=gs://b/enc.pt2", "--model_output", "enc=embedding",
            "--gate", "grade=tumor:1>=0.5",
            "--slide_model", "head=gs://b/head.onnx", "--slide_model_input", "head=enc",
            "--model_hints", f"grade=accelerator={l4};min_ram=32GB",
        ),
    )  # fmt: skip
    names = set(job["names"])
    for stage in (
        "Gate/grade/ApplyGate",
        "ReadGatedPatches/grade",
        "ToHintedWorkers/grade",
        "SlideModel/head/RunHead",
        "WriteResults/slide_predictions",
        "WriteResults/gate_verdicts",
        "WriteResults/patch_attention",
    ):
        assert stage in names, stage
    hinted = {n for n, h in job["hints"].items() if h}
    assert hinted and all(n.startswith("RunModel/grade") for n in hinted)
    assert all(job["hints"][n]["beam:resources:accelerator:v1"] == l4 for n in hinted)
    assert job["heavy"] == []


def test_gpu_preset_expands_into_the_job_options():
    plain = [f for f in DATAFLOW if not f.startswith(("--dataflow_service", "--experiments"))]
    job = translate("text", plain, ("--gpu", "l4"))
    assert job["service_options"] == [
        "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
    ]
    assert job["machine_type"] == "g2-standard-8" and job["require_gpu"] is True
    assert "no_use_multiple_sdk_containers" in job["experiments"]


def test_bigquery_output_translates_with_its_load_and_merge_stages():
    job = translate(
        "slides", DATAFLOW, ("--output", "bq://test-project.results", "--artifacts", "gs://b/a")
    )
    names = set(job["names"])
    for table in ("patch_predictions", "slide_summaries", "errors"):
        table = f"WriteResults/{table}"
        assert f"{table}/ToBigQuery/LoadStaging" in names
        assert f"{table}/ToBigQuery/ReplaceFromStaging" in names
    assert "SkipExisting/JoinExisting" not in names


RUN = """
import json, sys, importlib
result = importlib.import_module(sys.argv[1]).run(sys.argv[2:])
components = result.job.proto_pipeline.components
print(json.dumps(sorted(t.unique_name for t in components.transforms.values())))
"""


@pytest.mark.parametrize(
    "kind, tables",
    [
        ("slides", ("patch_predictions", "slide_summaries", "errors")),
        ("text", ("text_entities", "text_embeddings", "errors")),
    ],
)
def test_a_bigquery_dry_run_needs_no_credentials_and_touches_nothing(kind, tables):
    """The real entry point, with --skip_existing: nothing is prepared or read at launch (there
    are no credentials and no network here); the job prepares its dataset when it runs."""
    import os

    module, args = PIPELINES[kind]
    args = args[:-2]  # without its --output gs://b/out
    flags = [
        "--runner=DataflowRunner",
        "--dry_run",
        "--project=my-project",
        "--region=us-central1",
        "--temp_location=gs://my-bucket/tmp",
        "--output=bq://my-project.results",
        "--artifacts=gs://b/a",
        "--skip_existing",
    ]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("GOOGLE_APPLICATION_CREDENTIALS", "BIGQUERY_EMULATOR_HOST")
    }
    proc = run_python("-c", RUN, module, *args, *flags, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dry run: the job graph was translated for DataflowRunner" in proc.stdout
    names = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert {"WriteResults/PrepareDataset", "SkipExisting/ReadExisting"} <= names
    for table in tables:
        assert f"WriteResults/{table}/AfterPrepared" in names
        assert f"WriteResults/{table}/ToBigQuery/LoadStaging" in names
        assert f"WriteResults/{table}/ToBigQuery/ReplaceFromStaging" in names
