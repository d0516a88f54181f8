"""Every run leaves a record and a picture: the runs row (succeeded, with dead letters, failed),
the HTML report checked in a real headless Chromium, and QuPath GeoJSON checked with shapely."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.browser import chromium_path
from tests.processes import run_python

pytestmark = pytest.mark.pipeline

HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def slide_run(shared_data, tiny_models, tmp_path_factory):
    """One slide run: CMU-1 under a hostile slide_id, the DICOM slide, a missing file and an
    unreadable slide (two dead-letter types), with class names."""
    from pipelines.slide_inference import run

    tmp = tmp_path_factory.mktemp("report_run")
    d = shared_data
    rows = {
        HOSTILE: d / "aperio_cmu1_small_region" / "CMU-1-Small-Region.svs",
        "boxes_dicom": d / "dicom_openslide_boxes",
        "missing": tmp / "nope.svs",
        "unreadable": d / "negative_unreadable_svs" / "unreadable.svs",
    }
    manifest = tmp / "slides.csv"
    manifest.write_text(
        "slide_id,uri,mpp\n" + "".join(f'"{s}",{u},0.25\n' for s, u in rows.items())
    )
    out = tmp / "out"
    run(
        ["--slides", str(manifest), "--model", f"two={tiny_models['two']}", "--patch_px", "64"]
        + ["--class_names", "two=stroma,tumour", "--output", str(out), "--run_id", "report-1"]
        + ["--qupath_min_prob", "0.0", "--precision", "two=bf16"]
    )
    return out, rows


def test_the_runs_row_of_a_run_with_dead_letters(slide_run, tiny_models):
    from transforms.io.destinations import destination
    from transforms.io.runs import read_records

    out, rows = slide_run
    [row] = read_records(destination(str(out), None, None, False), "report-1")
    assert row["status"] == "succeeded" and row["pipeline"] == "slides"
    assert (row["inputs"], row["inputs_with_results"], row["inputs_failed"]) == (4, 2, 2)
    dead = {(d["stage"], d["error_type"]): d["count"] for d in row["dead_letters"]}
    assert dead == {("PlanPatches", "FileNotFoundError"): 1, ("PlanPatches", "SlideError"): 1}
    [model] = row["models"]
    assert model["precision"] == "bf16"  # what it ran in
    weights = Path(tiny_models["two"]).read_bytes()
    assert model["sha256"] == hashlib.sha256(weights).hexdigest()  # what sha256sum prints
    outputs = {o["table_name"]: o["row_count"] for o in row["outputs"]}
    assert outputs["patch_predictions"] == len(pd.read_parquet(out / "patch_predictions"))
    assert outputs["errors"] == 2 and outputs["slide_summaries"] == 2
    assert row["units"] == "patches" and row["units_done"] == outputs["patch_predictions"]
    assert row["units_per_s"] > 0 and row["wall_s"] > 0
    assert row["git_commit"] and row["package_version"]
    flags = {f["key"]: f["value"] for f in row["flags"]}
    assert flags["run_id"] == "report-1" and flags["class_names"] == "two=stroma,tumour"
    # bf16 was checked against fp32 on the first real patches, and the figures recorded
    [guard] = row["precision_guard"]
    assert row["precision"] == "two=bf16" and guard["model"] == "two" and guard["passed"]
    assert guard["precision"] == "bf16" and guard["checked"] >= 32
    assert guard["label_agreement"] >= 0.99 and 0 < guard["max_prob_diff"] <= 0.02


def test_a_failed_run_is_recorded_with_its_error(shared_data, tmp_path):
    """A model that cannot load fails the job: its row says failed, with the error."""
    from pipelines.slide_inference import run
    from transforms.io.destinations import destination
    from transforms.io.runs import read_records

    corrupt = tmp_path / "corrupt.pt2"
    corrupt.write_bytes(b"PK\x03\x04 not a torch.export archive" * 10)
    manifest = tmp_path / "slides.csv"
    cmu1 = shared_data / "aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"
    manifest.write_text(f"slide_id,uri\ncmu1,{cmu1}\n")
    with pytest.raises(Exception, match="could not be loaded"):
        run(
            ["--slides", str(manifest), "--model", f"bad={corrupt}", "--patch_px", "64"]
            + ["--output", str(tmp_path / "out"), "--run_id", "failing-1"]
        )
    [row] = read_records(destination(str(tmp_path / "out"), None, None, False), "failing-1")
    assert row["status"] == "failed"
    assert "could not be loaded" in row["error"] and "bad" in row["error"]
    assert row["finished_at"] is not None


def test_the_runs_command_lists_and_shows_runs(slide_run):
    from pipelines.runs import main

    out, _ = slide_run
    listing = run_python("-m", "pipelines.runs", "--output", str(out)).stdout
    assert "report-1" in listing and "succeeded" in listing
    assert main(["--output", str(out), "--run_id", "no-such-run"]) == 1
    # A local run has no worker image: both surfaces say so, neither prints None or a dash.
    shown = run_python("-m", "pipelines.runs", "--output", str(out), "--run_id", "report-1")
    assert "no worker image given" in shown.stdout and "image None" not in shown.stdout
    page = (out / "report" / "report-1" / "index.html").read_text()
    assert "no worker image given" in page and "image –" not in page


def test_qupath_geojson_is_valid_and_matches_the_patch_rows(slide_run):
    from shapely.geometry import shape

    out, _ = slide_run
    predictions = pd.read_parquet(out / "patch_predictions")
    summaries = pd.read_parquet(out / "slide_summaries").set_index("slide_id")
    files = sorted((out / "qupath" / "report-1").glob("*.geojson"))
    assert len(files) == predictions.slide_id.nunique() >= 1  # per slide with patches, model
    for file in files:
        collection = json.loads(file.read_text())
        slide_id = HOSTILE if file.name.startswith("_img") else "boxes_dicom"
        rows = predictions[predictions.slide_id == slide_id]
        width, height = summaries.loc[slide_id, ["width_px", "height_px"]]
        assert len(collection["features"]) == len(rows) > 0  # min prob 0: every patch
        boxes = set()
        for f in collection["features"]:
            polygon = shape(f["geometry"])
            assert polygon.is_valid and polygon.exterior.is_closed
            x0, y0, x1, y1 = polygon.bounds
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            assert f["properties"]["objectType"] == "detection"
            measured = f["properties"]["measurements"]
            top = max(measured, key=measured.get)
            assert f["properties"]["classification"]["name"] == top in ("stroma", "tumour")
            boxes.add((int(x0), int(y0), int(x1 - x0), int(y1 - y0)))
        valid = zip(rows.x_px, rows.y_px, rows.valid_width_px, rows.valid_height_px, strict=True)
        assert boxes == set(valid)  # each patch's part inside the slide


def in_chromium(page: Path, tmp_path: Path) -> dict:
    """Load ``page`` in headless Chromium inside a checking page; what the check found."""
    checker = tmp_path / "check.html"
    checker.write_text(
        f"""<!doctype html><html><body><iframe id=r src="{page.as_uri()}"
style="width:1400px;height:3000px"></iframe><pre id=out>pending</pre><script>
const frame = document.getElementById('r');
frame.addEventListener('load', () => {{
  const doc = frame.contentDocument;
  const imgs = [...doc.images];
  const report = {{
    text: doc.body.innerText,
    images: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
    injected: doc.querySelectorAll('img[src="x"], [onerror], script').length,
  }};
  document.getElementById('out').textContent = 'RESULT' + JSON.stringify(report);
}});
</script></body></html>"""
    )
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium_path(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1400,1800",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    dom = subprocess.run(
        [
            chromium_path(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--allow-file-access-from-files",
            "--virtual-time-budget=10000",
            "--dump-dom",
            checker.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "RESULT" in dom, dom[-2000:]
    import html

    result = json.loads(html.unescape(dom.split("RESULT", 1)[1].split("</pre>", 1)[0]))
    result["screenshot"] = shot
    return result


def test_the_report_in_a_real_browser(slide_run, tmp_path):
    out, rows = slide_run
    page = out / "report" / "report-1" / "index.html"
    seen = in_chromium(page, tmp_path)
    for slide_id in rows:
        assert slide_id in seen["text"]  # the hostile id shows as text...
    assert seen["injected"] == 0  # ...and nothing of it became an element or a script
    for error_type in ("FileNotFoundError", "SlideError"):
        assert error_type in seen["text"]
    assert "report-1" in seen["text"] and "succeeded" in seen["text"]
    assert "accuracy guard" in seen["text"] and "kept bf16" in seen["text"]
    assert seen["images"] >= 3 and seen["broken"] == []  # 2 thumbnails and a heatmap load
    assert seen["screenshot"].stat().st_size > 10_000
    # The folder can be copied: images are referenced by relative paths.
    sources = re.findall(r'<img[^>]* src="([^"]+)"', page.read_text())
    assert sources and all(src.startswith("../../") for src in sources), sources


def test_of_two_claims_in_the_same_instant_exactly_one_wins(tmp_path, monkeypatch):
    """fsspec's local ``pipe_file(mode="create")`` checks, then writes: two launches in the same
    instant both passed the check and both ran (seen in the suite). Both launches here see no
    claim yet (``exists`` says False, as in that window); the second must still be refused."""
    import fsspec

    from transforms.core.errors import ConfigError
    from transforms.io.destinations import destination
    from transforms.io.runs import claim_run_id

    dest = destination(str(tmp_path / "out"), needs_artifacts=False)
    monkeypatch.setattr(type(fsspec.filesystem("file")), "exists", lambda self, path: False)
    claim_run_id(dest, "same")
    with pytest.raises(ConfigError, match="--run_id same is in use"):
        claim_run_id(dest, "same")


def test_the_viewer_page_of_a_hostile_slide_id_shows_it_as_text(slide_run):
    """The viewer keeps the report's properties: the id escaped in the HTML, inert in the
    page's JSON (``<`` escaped), its file named safely, every path relative."""
    out, _ = slide_run
    summaries = pd.read_parquet(out / "slide_summaries").set_index("slide_id")
    page = Path(summaries.loc[HOSTILE, "viewer_uri"])
    assert page.parent == out / "viewer" / "report-1" and "<" not in page.name
    text = page.read_text()
    assert HOSTILE not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    config = text.split("id=config>", 1)[1].split("</script>", 1)[0]
    assert "<" not in config and json.loads(config)["tiles"].endswith("_files/")
    assert not re.search(r'(src|href)="(/|[a-z]+:)', text)  # relative paths only
    report = (out / "report" / "report-1" / "index.html").read_text()
    assert f'href="../../viewer/report-1/{page.name}"' in report
