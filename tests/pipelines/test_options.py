"""Bad configuration fails before the pipeline starts, naming the flag."""

from __future__ import annotations

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.options import slide_job_config
from transforms.core.errors import ConfigError


def config(*args: str):
    return slide_job_config(PipelineOptions(list(args)))


BASE = ("--slides", "s.csv", "--model", "tumor=m.pt2")


def test_a_good_command_line_becomes_a_config():
    cfg = config(
        *BASE,
        "--model",
        "grade=g.pt2",
        "--model_version",
        "tumor=2026-11-01",
        "--model_mean",
        "grade=0.5,0.5,0.5",
        "--batch_size",
        "7",
        "--run_id",
        "r1",
    )
    assert [m.name for m in cfg.models] == ["tumor", "grade"]
    assert cfg.models[0].version == "2026-11-01" and cfg.models[1].version == "unversioned"
    assert cfg.models[1].mean == (0.5, 0.5, 0.5)
    assert cfg.batching.min_batch_size == cfg.batching.max_batch_size == 7
    assert cfg.patching.patch_mpp == 0.5 and cfg.run.run_id == "r1"


@pytest.mark.parametrize(
    "args, flag",
    [
        (("--model", "tumor=m.pt2"), "--slides"),
        (("--slides", "s.csv"), "--model"),
        (("--slides", "s.csv", "--model", "tumor"), "--model"),
        ((*BASE, "--model", "tumor=n.pt2"), "--model"),
        ((*BASE, "--model_version", "grade=1"), "--model_version"),
        ((*BASE, "--model_mean", "tumor=a,b,c"), "--model_mean"),
        ((*BASE, "--model_class", "tumor=nocolon"), "--model_class"),
        (("--slides", "s.csv", "--model", "tumor=m.pth"), "--model"),
        ((*BASE, "--model_output", "tumor=mask"), "--model_output"),
        ((*BASE, "--embedding_key", "tumor=cls"), "--embedding_key"),
        ((*BASE, "--class_names", "tumor=a,a"), "--class_names"),
        ((*BASE, "--model_output", "tumor=embedding", "--class_names", "tumor=a"), "--class_names"),
        (("--slides", "s.csv", "--model", "../x=m.pt2"), "--model"),
        ((*BASE, "--batch_size", "0"), "--batch_size"),
        ((*BASE, "--patch_level", "1", "--patch_mpp", "0.5"), "--patch_mpp"),
        ((*BASE, "--run_id", "a b"), "--run_id"),
        ((*BASE, "--model_activation", "tumor=relu"), "--model_activation"),
    ],
)
def test_bad_flags_raise_config_errors_naming_the_flag(args, flag):
    with pytest.raises(ConfigError, match=flag):
        config(*args)


@pytest.mark.parametrize("flag", ["--batch_size", "--min_batch_size"])
def test_the_text_pipeline_does_not_know_the_slide_batch_flags(flag):
    from pipelines.flags import TEXT
    from pipelines.launch import pipeline_options
    from pipelines.options import text_job_config

    args = ["--documents", "d.jsonl", "--model", "ner=folder", "--task", "ner=token-classification"]
    with pytest.raises(ConfigError, match=f"unknown flag {flag}; did you mean --max_batch_size"):
        pipeline_options([*args, flag, "8"], TEXT)
    assert text_job_config(pipeline_options(args, TEXT)).batching.max_batch_size == 64


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--run_id", "abc\n"),
        ("--model", "tu\nmor=m.pt2"),
        ("--output", "bq://my-project.results\n"),
        ("--slides", "bq://my-project.data.slides\n"),
    ],
)
def test_names_are_matched_whole_so_a_trailing_newline_is_refused(flag, value):
    """A pattern ending in ``$`` matches before a trailing newline: ``--run_id $'abc\\n'`` gave
    file names with a newline. Every name is matched whole."""
    args = dict(zip(BASE[::2], BASE[1::2], strict=True))
    args[flag] = value
    with pytest.raises(ConfigError, match=flag.lstrip("-") if flag != "--model" else "model"):
        config(*[x for pair in args.items() for x in pair])
