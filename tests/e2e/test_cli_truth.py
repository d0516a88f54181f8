"""The command line tells the truth: help, typos, checks against the data, exit codes, and
messages that lead to the fix. One test per mistake users were seen to make."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO
from tests.e2e.cli import read_errors, run_module

pytestmark = pytest.mark.e2e

SLIDES, TEXT = "pipelines.slide_inference", "pipelines.text_inference"
STREAM = "pipelines.slide_stream"


def pipeline_options_names(module: str) -> set[str]:
    from pipelines import flags

    groups = {SLIDES: flags.SLIDES, TEXT: flags.TEXT, STREAM: flags.STREAM}[module]
    return set(flags.flag_names(flags.COMMON + groups))


@pytest.mark.parametrize("module", [SLIDES, TEXT, STREAM])
def test_help_lists_every_flag_the_pipeline_reads_with_defaults(module):
    proc = run_module(module, "--help")
    assert proc.returncode == 0, proc.stderr
    shown = set(re.findall(r"^  --(\w+)", proc.stdout, re.M))
    assert pipeline_options_names(module) <= shown
    source = (REPO / "pipelines" / "options.py").read_text()
    read = set(re.findall(r"\b(?:opts|common)\.(\w+)", source))
    own = {SLIDES: {"slides", "patches"}, TEXT: {"documents"}, STREAM: {"subscription"}}[module]
    assert own <= read and read & pipeline_options_names(module) <= shown
    assert "Default: 224." in proc.stdout or module == TEXT
    assert "--help_beam" in proc.stdout
    beam = run_module(module, "--help_beam")
    assert beam.returncode == 0 and "--runner" in beam.stdout and "--temp_location" in beam.stdout


@pytest.mark.parametrize(
    "flags, said",
    [
        ((), "--subscription is required"),
        (("--subscription", "scans"), "--subscription scans: PubSub subscription must be"),
        (("--output", "bq://my-project.results"), "--temp_location gs://BUCKET/PREFIX is required"),
        (("--quiet_s", "120", "--max_wait_s", "60"), "--max_wait_s (60) must be at least"),
    ],
)
def test_the_stream_refuses_a_bad_configuration_before_it_starts(tmp_path, flags, said):
    base = ["--model", "a=a.pt2", "--output", str(tmp_path / "out")]
    if not any(f == "--subscription" for f in flags) and flags:
        base += ["--subscription", "projects/my-lab/subscriptions/scans"]
    proc = run_module(STREAM, *base, *flags)
    assert proc.returncode == 2, proc.stderr
    assert said in proc.stderr


@pytest.mark.parametrize("typo, closest", [("--outptu", "--output"), ("--patch-px", "--patch_px")])
def test_an_unknown_flag_stops_the_run_naming_the_closest(tmp_path, typo, closest):
    out = tmp_path / "out"
    proc = run_module(
        SLIDES, "--slides", "s.csv", "--model", "a=a.pt2", "--output", str(out), typo, "1"
    )
    assert proc.returncode == 2
    assert f"unknown flag {typo}; did you mean {closest}?" in proc.stderr
    assert not out.exists()


def test_a_bad_flag_value_is_one_line_and_exit_2(tmp_path):
    proc = run_module(SLIDES, "--slides", "s.csv", "--model", "a=a.pt2", "--patch_px", "abc")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: argument --patch_px: invalid int value: 'abc'"
    ]


def test_bad_manifests_and_columns_fail_before_anything_starts(tmp_path, cmu1, tiny_models):
    model = f"two={tiny_models['two']}"
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(f"slide_id,path\ncmu1,{cmu1}\n")
    good = tmp_path / "good.csv"
    good.write_text(f"slide_id,uri\ncmu1,{cmu1}\n")
    out = tmp_path / "out"
    cases = [
        (["--slides", str(tmp_path / "nope.csv")], "--slides", "no such file"),
        (["--slides", str(renamed)], "--slides", "no 'uri' column"),
        (["--slides", str(good), "--group_by", "patient"], "--group_by patient", "no such column"),
    ]
    for args, flag, says in cases:
        proc = run_module(SLIDES, *args, "--model", model, "--output", str(out))
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: {flag}") and says in line, line
    assert not out.exists()


def test_text_columns_are_checked_against_the_file(tmp_path, minilm):
    docs = tmp_path / "papers.jsonl"
    docs.write_text('{"pmid": "1", "text": "BRCA1 mutations cause breast cancer."}\n')
    base = ["--documents", str(docs), "--model", f"emb={minilm}", "--task", "emb=embedding"]
    no_id = run_module(TEXT, *base, "--output", str(tmp_path / "a"))
    assert no_id.returncode == 2 and "error: --doc_id_column doc_id:" in no_id.stderr
    assert "(its columns: pmid, text)" in no_id.stderr
    typo = run_module(
        TEXT, *base, "--doc_id_column", "pmid", "--text_column", "abstrct", "--output", "x"
    )
    assert typo.returncode == 2 and "error: --text_column abstrct:" in typo.stderr


def test_summary_counts_every_dead_letter_by_stage_and_the_inputs(
    tmp_path, shared_data, tiny_models
):
    cmu1 = shared_data / "aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"
    manifest = tmp_path / "slides.csv"
    manifest.write_text(
        "slide_id,uri\n"
        f"cmu1,{cmu1}\n"
        f"missing,{tmp_path}/no_such_slide.svs\n"  # PlanPatches
        "nouri,\n"  # ReadManifest: empty uri
        f"cmu1,{cmu1}\n"  # ReadManifest: duplicate
    )
    out = tmp_path / "out"
    proc = run_slides(manifest, f"two={tiny_models['two']}", out, "--no_heatmaps")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "slides: 4 in, 1 with results, 3 failed, 0 skipped as done already" in proc.stdout
    assert "dead letters: 3 (PlanPatches 1, ReadManifest 2)" in proc.stdout
    assert "heatmaps:" not in proc.stdout  # --no_heatmaps
    assert len(read_errors(out)) == 3


def test_a_run_where_no_input_produced_a_result_fails(tmp_path, tiny_models):
    manifest = tmp_path / "slides.csv"
    manifest.write_text(f"slide_id,uri\na,{tmp_path}/a.svs\nb,{tmp_path}/b.svs\n")
    proc = run_module(
        SLIDES,
        "--patch_px",
        "64",
        "--slides",
        str(manifest),
        "--model",
        f"two={tiny_models['two']}",
        "--output",
        str(tmp_path / "out"),
    )
    assert proc.returncode == 1
    assert "error: no input produced a result: all 2 failed" in proc.stderr
    assert "slides: 2 in, 0 with results, 2 failed" in proc.stdout


def test_max_failed_fraction_fails_the_job_itself(tmp_path, cmu1, tiny_models):
    manifest = tmp_path / "slides.csv"
    manifest.write_text(f"slide_id,uri\ncmu1,{cmu1}\nghost,{tmp_path}/ghost.svs\n")
    args = ["--slides", str(manifest), "--model", f"two={tiny_models['two']}", "--patch_px", "64"]
    args += ["--no_heatmaps"]
    over = run_module(
        SLIDES, *args, "--output", str(tmp_path / "a"), "--max_failed_fraction", "0.4"
    )
    assert over.returncode == 1, over.stderr[-2000:]
    line = over.stderr.strip().splitlines()[-1]
    assert "1 of 2 inputs (50.0%) produced no result, over the allowed fraction 0.4" in line
    assert "Traceback" not in over.stderr
    under = run_module(
        SLIDES, *args, "--output", str(tmp_path / "b"), "--max_failed_fraction", "0.5"
    )
    assert under.returncode == 0, under.stderr[-2000:]


def test_a_model_that_cannot_load_is_one_line_and_leaves_no_staging(tmp_path, cmu1):
    corrupt = tmp_path / "corrupt.pt2"
    corrupt.write_bytes(b"PK\x03\x04 a zip header, not a torch.export archive" * 10)
    out = tmp_path / "out"
    proc = run_module(
        SLIDES,
        "--slides",
        _manifest(tmp_path, cmu1),
        "--model",
        f"bad={corrupt}",
        "--patch_px",
        "64",
        "--output",
        str(out),
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert (
        len(errors) == 1
        and f"model 'bad' (version unversioned) could not be loaded from {corrupt}" in errors[0]
    )
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) < 20, proc.stderr
    assert not out.exists() or not list(out.rglob("_beam-temp-*"))
    missing = run_module(
        SLIDES,
        "--slides",
        _manifest(tmp_path, cmu1),
        "--model",
        f"gone={tmp_path}/gone.pt2",
        "--output",
        str(out),
    )
    assert missing.returncode == 2 and "error: --model gone=" in missing.stderr
    assert "no such file" in missing.stderr


def test_a_model_class_that_cannot_be_imported_says_how_modules_are_found(
    tmp_path, cmu1, tiny_models
):
    proc = run_module(
        SLIDES,
        "--slides",
        _manifest(tmp_path, cmu1),
        "--model",
        f"two={tiny_models['two_state_dict']}",
        "--model_class",
        "two=mynet:Net",
        "--output",
        str(tmp_path / "out"),
    )
    assert proc.returncode == 2
    assert "module 'mynet' cannot be imported; put its folder on PYTHONPATH" in proc.stderr
    assert "Traceback" not in proc.stderr


def run_slides(manifest: Path | str, model: str, out: Path, *extra: str):
    """The slide CLI over ``manifest`` with the tiny model at 64 px patches."""
    return run_module(
        SLIDES,
        "--slides",
        str(manifest),
        "--model",
        model,
        "--patch_px",
        "64",
        "--output",
        str(out),
        *extra,
    )


def _manifest(tmp_path: Path, slide: Path) -> str:
    path = tmp_path / "one.csv"
    path.write_text(f"slide_id,uri\nslide,{slide}\n")
    return str(path)


def test_tissue_method_is_chosen_per_slide_and_a_slide_without_tissue_says_why(
    tmp_path, shared_data, tiny_models
):
    ndpi = shared_data / "ndpi_tritc" / "test3-TRITC-2-560.ndpi"
    manifest = tmp_path / "slides.csv"
    manifest.write_text(
        "slide_id,uri,tissue_method\n"
        f"auto,{ndpi},\n"  # fluorescence, found by its dark background
        f"forced,{ndpi},brightfield\n"  # the row's method wins: no tissue
    )
    out = tmp_path / "out"
    proc = run_slides(
        manifest, f"two={tiny_models['two']}", out, "--patch_mpp", "2", "--no_heatmaps"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pd.read_parquet(out / "slide_summaries").set_index("slide_id")
    assert rows.loc["auto"].tissue_method == "fluorescence" and rows.loc["auto"].patch_count > 0
    assert rows.loc["forced"].tissue_method == "brightfield"
    forced, auto = rows.loc["forced"], rows.loc["auto"]
    assert forced.patch_count == 0 and forced.tissue_area_mm2 < auto.tissue_area_mm2 / 4
    assert "slides without tissue: 1" in proc.stdout


def test_messages_lead_to_the_fix_for_a_72_dpi_mpp_and_dicom(tmp_path, shared_data, tiny_models):
    manifest = tmp_path / "slides.csv"
    manifest.write_text(
        "slide_id,uri\n"
        f"boxes,{shared_data}/generic_tiff_boxes/boxes.tiff\n"  # its file says 352.8 um/px
        f"dicom,{shared_data}/dicom_wsi2dcm_jpeg/wsi2dcm_jpeg.dcm\n"
    )
    out = tmp_path / "out"
    proc = run_slides(manifest, f"two={tiny_models['two']}", out)
    assert proc.returncode == 1  # no input produced a result
    messages = {e["key"]: e["message"] for e in read_errors(out)}
    assert "352.778 µm/px, which no slide scanner writes" in messages["boxes"]
    assert "`mpp` column of the slide manifest" in messages["boxes"]
    # DICOM is read (wsidicom); this one's 16.8 um/px is too coarse for 0.5, and says so
    assert "16.78 mpp is coarser than the patches' 0.5 mpp (--patch_mpp" in messages["dicom"]
    assert "`mpp` column of the slide manifest" in messages["dicom"]


def test_two_runs_into_one_folder_keep_both_runs_heatmaps(tmp_path, cmu1, tiny_models):
    out = tmp_path / "out"
    args = ["--slides", _manifest(tmp_path, cmu1), "--model", f"two={tiny_models['two']}"]
    args += ["--patch_px", "64", "--output", str(out)]
    for run_id in ("first", "second"):
        proc = run_module(SLIDES, *args, "--run_id", run_id)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"heatmaps: {out}/heatmaps/{run_id}/" in proc.stdout
    assert sorted(p.parent.name for p in (out / "heatmaps").rglob("*.png")) == ["first", "second"]
    uris = pd.read_parquet(out / "slide_summaries").heatmap_uri
    assert len(set(uris)) == 2
