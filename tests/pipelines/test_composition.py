"""Composed models are checked before launch (gates, cycles, heads, hints), and each hinted stage
sits in its own environment of the pipeline proto with its hints, every other stage on the
default (``to_runner_api()``, offline), as it does in a DataflowRunner dry run."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import slide_inference
from pipelines.composition import parse_hints
from pipelines.options import slide_job_config
from transforms.core.errors import ConfigError
from transforms.slides.gates import gate_order

pytestmark = pytest.mark.pipeline

BASE = [
    "--slides", "/no/where/slides.csv", "--output", "/no/where/out",
    "--model", "qc=/no/where/qc.pt2", "--class_names", "qc=light,dark",
    "--model", "detail=/no/where/detail.pt2", "--model", "enc=/no/where/enc.pt2",
    "--model_output", "enc=embedding", "--model_mpp", "qc=8",
]  # fmt: skip
L4 = "accelerator=type:nvidia-l4;count:1;install-nvidia-driver;min_ram=32GB"


def config(*extra: str):
    return slide_job_config(PipelineOptions([*BASE, *extra]))


def test_a_gate_rule_reads_classes_by_name_or_index_and_combines_and_or():
    cfg = config("--gate", "detail=qc:dark>=0.5 and qc:light<0.3 or qc:1>0.9")
    rule = cfg.composition.gates["detail"]
    assert rule.gate == "qc" and rule.cover == "centre"
    assert rule.passes([0.2, 0.8]) and not rule.passes([0.4, 0.6])  # 2nd: light >= 0.3
    assert rule.passes([0.05, 0.95])  # by the `or` branch
    gated = {m.name: m.geometry for m in cfg.models}
    assert gated["detail"] != gated["enc"]  # same cut, yet its own stream: it is read apart


@pytest.mark.parametrize(
    "flags, said",
    [
        (("--gate", "detail=qc:dark>=0.5", "--gate", "qc=detail:0>=0.5"), "cycle"),
        (("--gate", "detail=qc:pink>=0.5"), "no class 'pink'"),
        (("--gate", "detail=qc:dark=>0.5"), "cannot read"),
        (("--gate", "detail=enc:0>=0.5"), "a gate must give class values"),
        (("--gate", "nope=qc:dark>=0.5"), "--gate names nope"),
        (("--gate", "detail=qc:dark>=0.5 and enc:0>0"), "a gate must give class values"),
        (("--slide_model", "h=/no/where/h.pt2"), "needs --slide_model_input h=ENCODER"),
        (
            ("--slide_model", "h=/no/where/h.pt2", "--slide_model_input", "h=detail"),
            "not an embedding",
        ),
        (("--slide_model", "h=/no/where/h.bin", "--slide_model_input", "h=enc"), ".pt2 or .onnx"),
        (("--slide_model_input", "h=enc"), "no --slide_model defines"),
        (("--model_hints", "nobody=min_ram=1GB"), "--model_hints names nobody"),
        (("--model_hints", "detail=gpus=2"), "not a Beam resource hint"),
        (("--model_hints", "detail=min_ram=lots"), "min_ram='lots'"),
    ],
)
def test_bad_compositions_fail_before_launch_naming_the_flag(flags, said):
    with pytest.raises(ConfigError, match=said.replace("(", r"\(").replace("+", r"\+")):
        config(*flags)


def test_a_chain_of_gates_orders_every_gate_before_what_it_gates():
    cfg = config(
        "--gate", "detail=qc:dark>=0.5", "--gate", "enc=detail:1>=0.5"
    )  # fmt: skip
    order = gate_order([m.name for m in cfg.models], cfg.composition.gates)
    assert order.index("qc") < order.index("detail") < order.index("enc")


def test_dataflow_accelerator_values_keep_their_semicolons():
    assert parse_hints(L4, "--model_hints detail") == {
        "accelerator": "type:nvidia-l4;count:1;install-nvidia-driver",
        "min_ram": "32GB",
    }


def _hints_by_stage(*extra: str) -> dict[str, dict[str, str]]:
    cfg = config(*extra)
    pipeline = beam.Pipeline(options=PipelineOptions([*BASE, *extra]))
    slide_inference.write(slide_inference.build(pipeline, cfg), cfg)
    components = pipeline.to_runner_api().components
    out = {}
    for transform in components.transforms.values():
        env = components.environments.get(transform.environment_id)
        if env is not None:
            out[transform.unique_name] = {k: v.decode() for k, v in env.resource_hints.items()}
    return out


def test_each_hinted_stage_runs_in_its_own_environment_and_the_rest_on_the_default():
    hints = _hints_by_stage(
        "--gate", "detail=qc:dark>=0.5",
        "--slide_model", "head=/no/where/head.pt2", "--slide_model_input", "head=enc",
        "--model_hints", f"detail={L4}", "--model_hints", "head=min_ram=64GB",
    )  # fmt: skip
    gpu = {
        "beam:resources:accelerator:v1": "type:nvidia-l4;count:1;install-nvidia-driver",
        "beam:resources:min_ram_bytes:v1": "32000000000",
    }
    detail = {n: h for n, h in hints.items() if n.startswith("RunModel/detail/")}
    assert detail and all(h == gpu for h in detail.values())
    head = {n: h for n, h in hints.items() if n.startswith("SlideModel/head/")}
    assert head and all(
        h == {"beam:resources:min_ram_bytes:v1": "64000000000"} for h in head.values()
    )
    rest = {n: h for n, h in hints.items() if not n.startswith(("RunModel/detail", "SlideModel/"))}
    for name in (
        "ReadPatches/ReadRegions",
        "RunModel/qc/Infer",
        "RunModel/enc/Infer",
        "Gate/detail/ApplyGate",
        "ReadGatedPatches/detail/ReadRegions",
    ):
        assert name in rest and rest[name] == {}, name
    assert all(h == {} for h in rest.values())
    # the decode and the hinted model do not fuse: a Reshuffle stands between them
    assert "ToHintedWorkers/detail" in hints
