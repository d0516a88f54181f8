"""The slide pipeline through its CLI, on the real slides in ../shared/data, with two models."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.e2e.cli import read_errors, run_module
from tests.processes import run_python

pytestmark = pytest.mark.e2e


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_module("pipelines.slide_inference", *args)


def test_mixed_vendor_manifest_with_bad_slides(tmp_path, shared_data, tiny_models):
    d = shared_data
    manifest = tmp_path / "slides.csv"
    manifest.write_text(
        "slide_id,uri,mpp,site\n"
        f"cmu1,{d}/aperio_cmu1_small_region/CMU-1-Small-Region.svs,,skin\n"
        f"ndpi,{d}/ndpi_tritc/test3-TRITC-2-560.ndpi,,kidney\n"
        f"boxes,{d}/generic_tiff_boxes/boxes.tiff,0.25,skin\n"  # its file says 352 um/px
        f"unreadable,{d}/negative_unreadable_svs/unreadable.svs,,x\n"
        f"unopenable,{d}/negative_unopenable_tiff/unopenable.tiff,,x\n"
        f"dicom,{d}/dicom_wsi2dcm_jpeg/wsi2dcm_jpeg.dcm,,x\n"
        f"missing,{tmp_path}/no_such_slide.svs,,x\n"
    )
    out = tmp_path / "out"
    proc = run_cli(
        "--slides",
        str(manifest),
        "--model",
        f"two={tiny_models['two']}",
        "--model",
        f"three={tiny_models['three']}",
        "--model_version",
        "three=v3",
        "--patch_px",
        "64",
        "--patch_mpp",
        "0.5",
        "--group_by",
        "site",
        "--output",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "slides: 7 in, 3 with results, 4 failed, 0 skipped as done already" in proc.stdout

    summaries = pd.read_parquet(out / "slide_summaries")
    assert sorted(zip(summaries.slide_id, summaries.model_name, strict=True)) == [
        (s, m) for s in ("boxes", "cmu1", "ndpi") for m in ("three", "two")
    ]
    assert set(summaries[summaries.model_name == "three"].model_version) == {"v3"}
    by_slide = summaries[summaries.model_name == "two"].set_index("slide_id")
    assert by_slide.loc["cmu1"].patch_count > 100 and by_slide.loc["boxes"].patch_count >= 1
    assert by_slide.loc["cmu1"].tissue_area_mm2 > 0.1

    errors = read_errors(out)
    slide_errors = {e["key"]: (e["stage"], e["error_type"]) for e in errors}
    assert slide_errors == {
        "unreadable": ("PlanPatches", "SlideError"),
        "unopenable": ("PlanPatches", "SlideError"),
        "dicom": ("PlanPatches", "ResolutionError"),  # read; 16.8 um/px is coarser than 0.5
        "missing": ("PlanPatches", "FileNotFoundError"),
    }
    assert "coarser than the patches' 0.5 mpp (--patch_mpp" in next(
        e["message"] for e in errors if e["key"] == "dicom"
    )
    # Slides in = slides with results + slides with a dead letter.
    assert 7 == summaries.slide_id.nunique() + len(errors)

    predictions = pd.read_parquet(out / "patch_predictions")
    for model, n_classes in (("two", 2), ("three", 3)):
        rows = predictions[predictions.model_name == model]
        planned = summaries[summaries.model_name == model].patches_planned.sum()
        assert len(rows) == planned == summaries[summaries.model_name == model].patch_count.sum()
        assert {len(p) for p in rows.probs} == {n_classes}
        assert not rows.duplicated(["slide_id", "x_px", "y_px"]).any()

    for row in summaries.itertuples():
        png = Path(row.heatmap_uri)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", row.heatmap_uri
        assert png.name == f"{row.slide_id}.{row.model_name}.png"

    cases = pd.read_parquet(out / "case_summaries")
    skin = cases[(cases.group_value == "skin") & (cases.model_name == "two")].iloc[0]
    assert list(skin.slide_ids) == ["boxes", "cmu1"]
    assert skin.patch_count == by_slide.loc[["boxes", "cmu1"]].patch_count.sum()


def test_patch_manifest_bad_rows_each_become_one_dead_letter(
    tmp_path, cmu1, shared_data, tiny_models
):
    slides = tmp_path / "slides.jsonl"
    unreadable = shared_data / "negative_unreadable_svs" / "unreadable.svs"
    slides.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"slide_id": "cmu1", "uri": str(cmu1)},
                {"slide_id": "cmu1", "uri": "elsewhere.svs"},
                {"slide_id": "bad", "uri": str(unreadable)},
            ]
        )
        + "\n"
    )
    patches = tmp_path / "patches.csv"
    patches.write_text(
        "slide_id,x_px,y_px,size_px,level\n"
        "cmu1,0,0,256,0\ncmu1,982,1355,256,0\ncmu1,1000,1000,128,0\n"  # 3 good
        "cmu1,2100,0,256,0\n"  # out of bounds (width 2220)
        "cmu1,ten,0,256,0\n"  # not a number
        "cmu1,,0,256,0\n"  # missing value
        "ghost,0,0,256,0\n"  # slide not in the manifest
        "cmu1,0,0,256,3\n"  # level that does not exist
        "bad,0,0,8,0\nbad,8,0,8,0\n"  # patches of a slide whose tiles cannot be decoded
    )
    out = tmp_path / "out"
    proc = run_cli(
        "--slides",
        str(slides),
        "--patches",
        str(patches),
        "--patch_px",
        "64",
        "--model",
        f"two={tiny_models['two']}",
        "--model",
        f"three={tiny_models['three']}",
        "--output",
        str(out),
        "--no_heatmaps",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    predictions = pd.read_parquet(out / "patch_predictions")
    errors = read_errors(out)
    patch_errors = [e for e in errors if "@" in e["key"] or e["key"].startswith("patches.csv")]
    for model in ("two", "three"):
        rows = predictions[predictions.model_name == model]
        assert sorted(zip(rows.x_px, rows.y_px, rows.size_px, strict=True)) == [
            (0, 0, 256),
            (982, 1355, 256),
            (1000, 1000, 128),
        ]
        assert set(rows.mpp.round(4)) == {round(0.499 * 4, 4), round(0.499 * 2, 4)}
        assert 10 == len(rows) + len(patch_errors)  # patches in = predictions + dead letters
    reasons = {(e["stage"], e["key"]): e["error_type"] for e in errors}
    assert reasons == {
        ("ReadManifest", "cmu1"): "ManifestError",  # duplicate slide_id
        ("ReadManifest", "patches.csv:row 5"): "ManifestError",  # x_px = ten
        ("ReadManifest", "patches.csv:row 6"): "ManifestError",  # x_px missing
        ("PlanPatches", "cmu1@2100,0"): "OutOfBoundsError",
        ("PlanPatches", "ghost@0,0"): "Rejected",
        ("PlanPatches", "cmu1@0,0"): "SlideError",  # level 3
        ("PlanPatches", "bad"): "SlideError",
        ("PlanPatches", "bad@0,0"): "Rejected",
        ("PlanPatches", "bad@8,0"): "Rejected",
    }


def test_bad_flag_fails_before_the_pipeline_starts(tmp_path, cmu1):
    out = tmp_path / "out"
    proc = run_cli("--slides", str(cmu1), "--model", "tumor", "--output", str(out))
    assert proc.returncode == 2
    assert "--model expects NAME=VALUE" in proc.stderr
    assert not out.exists()


def test_building_the_graph_imports_neither_torch_nor_transformers(tmp_path):
    code = (
        "import sys, apache_beam as beam\n"
        "from apache_beam.options.pipeline_options import PipelineOptions\n"
        "from pipelines.options import slide_job_config\n"
        "from pipelines.slide_inference import build, write\n"
        "cfg = slide_job_config(PipelineOptions(['--slides', 's.csv', '--model',"
        " 'a=a.pt2', '--patches', 'p.csv', '--group_by', 'case']))\n"
        "p = beam.Pipeline()\n"
        "write(build(p, cfg), cfg)\n"
        "labels = {t.full_label for t in p.transforms_stack[0].parts}\n"
        "assert 'PlanPatches' in labels and 'RunModel/a' in labels, labels\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    proc = run_python("-c", code, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_a_model_that_rejects_the_patch_size_fails_the_job_not_each_patch(
    tmp_path, cmu1, tiny_models
):
    manifest = tmp_path / "slides.csv"
    manifest.write_text(f"slide_id,uri\ncmu1,{cmu1}\n")
    out = tmp_path / "out"
    proc = run_cli(
        "--slides",
        str(manifest),
        "--model",
        f"two={tiny_models['two']}",
        "--patch_px",
        "128",
        "--output",
        str(out),
    )
    assert proc.returncode != 0
    assert "fails on a 128x128 patch" in proc.stderr and "--patch_px 128" in proc.stderr


def test_hostile_slide_id_cannot_write_outside_the_output_folder(tmp_path, cmu1, tiny_models):
    manifest = tmp_path / "m" / "slides.csv"
    manifest.parent.mkdir()
    manifest.write_text(f"slide_id,uri\n../../escaped,{cmu1}\n")
    out = tmp_path / "m" / "out"
    proc = run_cli(
        "--slides",
        str(manifest),
        "--model",
        f"two={tiny_models['two']}",
        "--patch_px",
        "64",
        "--output",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p != manifest]
    assert files and all(out in p.parents for p in files)  # nothing escaped the output folder
    written = [p for p in files if p.suffix == ".png" and p.parent.parent == out / "heatmaps"]
    assert len(written) == 1 and not written[0].name.startswith(".")
    pages = [p for p in files if p.suffix == ".html" and p.parent.parent == out / "viewer"]
    assert len(pages) == 1 and not pages[0].name.startswith(".")
    summary = pd.read_parquet(out / "slide_summaries").iloc[0]
    assert summary.slide_id == "../../escaped"  # the id itself is kept, only the file name is safe
    assert summary.heatmap_uri == str(written[0])


def test_skip_existing_with_a_patch_manifest_skips_done_slides_patches_silently(
    tmp_path, shared_data, tiny_models
):
    """A rerun adding a slide: the done slide's manifest patches are skipped, not dead letters."""
    from pipelines.report import counters
    from pipelines.slide_inference import run

    cmu1 = shared_data / "aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"
    ndpi = shared_data / "ndpi_tritc" / "test3-TRITC-2-560.ndpi"
    patches = tmp_path / "patches.csv"
    patches.write_text(
        "slide_id,x_px,y_px,size_px\ncmu1,0,0,256\ncmu1,982,1355,256\nndpi,100,100,128\n"
    )
    out = tmp_path / "out"

    def once(slides: dict[str, Path], run_id: str) -> dict[str, int]:
        manifest = tmp_path / f"{run_id}.csv"
        manifest.write_text("slide_id,uri\n" + "".join(f"{k},{v}\n" for k, v in slides.items()))
        result = run(
            ["--slides", str(manifest), "--patches", str(patches), "--patch_px", "64"]
            + ["--model", f"two={tiny_models['two']}", "--output", str(out), "--no_heatmaps"]
            + ["--skip_existing", "--run_id", run_id]
        )
        return counters(result)

    first = once({"cmu1": cmu1}, "first")
    assert first["patches_planned"] == 2
    again = once({"cmu1": cmu1, "ndpi": ndpi}, "again")
    assert again["skipped_existing"] == 1 and again["patches_skipped_existing"] == 2
    assert again["slides_planned"] == 1 and again["patches_planned"] == 1
    predictions = pd.read_parquet(out / "patch_predictions")
    by_run = predictions.groupby("run_id").slide_id.agg(lambda s: sorted(set(s))).to_dict()
    assert by_run == {"first": ["cmu1"], "again": ["ndpi"]}
    # The first run's ndpi patch had no slide row: its one dead letter; the rerun has none.
    errors = read_errors(out)
    assert [(e["key"], e["error_type"]) for e in errors] == [("ndpi@100,100", "Rejected")]


def test_two_concurrent_runs_with_one_run_id_cannot_both_write(tmp_path, cmu1, tiny_models):
    """Both used to exit 0 and report 6/6 while the folder kept one run's rows and record. Now
    the run id is claimed atomically before anything is written: exactly one run writes, the
    other exits 2 naming the id; a finished run's id is refused after it too."""
    import sys

    from tests.conftest import REPO

    manifest = tmp_path / "slides.csv"
    manifest.write_text(f"slide_id,uri\na,{cmu1}\nb,{cmu1}\n")
    out = tmp_path / "out"
    args = [sys.executable, "-m", "pipelines.slide_inference", "--slides", str(manifest)]
    args += ["--model", f"two={tiny_models['two']}", "--patch_px", "64", "--output", str(out)]
    args += ["--run_id", "same", "--no_heatmaps", "--progress_interval_s", "5"]
    procs = [
        subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    done = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in done)
    assert codes == [0, 2], done
    refused = next(err for code, err in done if code == 2)
    assert "--run_id same is" in refused
    rows = pd.read_parquet(out / "patch_predictions")
    assert not rows.duplicated(["slide_id", "x_px", "y_px"]).any()
    assert set(rows.run_id) == {"same"} and len(list((out / "runs").glob("*.parquet"))) == 1
    again = run_cli(*args[3:])
    assert again.returncode == 2 and "already recorded" in again.stderr


@pytest.mark.parametrize("point", ["before_commit", "mid_commit", "after_commit"])
def test_a_run_killed_at_a_commit_boundary_never_doubles_a_row(point, tmp_path, cmu1, tiny_models):
    """SIGKILL right after ``patch_predictions`` was committed and before ``slide_summaries``
    was used to leave every patch row twice after a ``--skip_existing`` rerun. Now a run's tables
    are committed together (``io/commits.py``): killed before the commit, nothing is visible;
    killed midway, the next launch finishes the commit first; either way the rerun leaves every
    (slide, x, y) once, read plainly with pandas."""
    manifest = tmp_path / "slides.csv"
    manifest.write_text(f"slide_id,uri\na,{cmu1}\nb,{cmu1}\n")
    out = tmp_path / "out"
    args = ["--slides", str(manifest), "--model", f"two={tiny_models['two']}", "--patch_px", "64"]
    args += ["--output", str(out), "--no_heatmaps"]
    killed = run_python(
        "-m",
        "pipelines.slide_inference",
        *args,
        "--run_id",
        "k1",
        env={**os.environ, "PATHBEAM_KILL_AT": point},
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    visible = out / "patch_predictions"
    if point == "before_commit":  # nothing of the killed run can be read as results
        assert not visible.exists() or pd.read_parquet(visible).empty
    rerun = run_cli(*args, "--run_id", "k2", "--skip_existing")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    rows = pd.read_parquet(visible)
    summaries = pd.read_parquet(out / "slide_summaries")
    assert not rows.duplicated(["slide_id", "x_px", "y_px"]).any()
    assert sorted(summaries.slide_id) == ["a", "b"] and len(rows) > 100
    assert set(rows.run_id) == ({"k2"} if point == "before_commit" else {"k1"})
    assert not list((out / "_pending").glob("k1/_COMMIT"))  # no commit left half done
