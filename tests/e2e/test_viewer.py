"""Each slide's zoomable viewer page in a real headless Chromium with the network cut off: it
loads from ``file://``, zooming in (through OpenSeadragon's API) loads deeper tiles, toggling a
class-mask overlay changes the pixels where tissue is and nowhere else, and the overlay lies on
the tissue to within one patch at the deepest level."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.browser import Browser
from tests.e2e.cli import run_module
from tests.e2e.test_whole_tissue import MPP, TISSUE, W, edge_slide  # noqa: F401 - a fixture

pytestmark = pytest.mark.e2e

WIDTH = 700
LOADED = "viewer.world.getItemAt(0) && viewer.world.getItemAt(0).getFullyLoaded()"


@pytest.fixture(scope="module")
def viewer_page(edge_slide, tmp_path_factory) -> tuple[Path, dict]:  # noqa: F811
    out = tmp_path_factory.mktemp("viewer_run")
    done = run_module(
        "pipelines.slide_inference",
        *("--slides", edge_slide["slides"], "--model", f"seg={edge_slide['model']}"),
        *("--model_output", "seg=segmentation", "--class_names", "seg=tissue,white"),
        *("--patch_px", "64", "--patch_mpp", str(MPP), "--min_tissue", "0.01"),
        *("--viewer_mpp", str(MPP), "--output", str(out)),
    )
    assert done.returncode == 0, done.stderr
    [summary] = pd.read_parquet(out / "slide_summaries").to_dict("records")
    return Path(summary["viewer_uri"]), summary


@pytest.fixture
def browser():
    b = Browser(WIDTH, 500)  # the slide at home zoom: 1000 level-0 px shown in about 440
    yield b
    b.close()


def _levels(requests: list[str]) -> set[int]:
    return {int(m.group(1)) for r in requests if (m := re.search(r"_files/(\d+)/", r))}


def _screen_box(b: Browser, x0: float, y0: float, x1: float, y1: float) -> tuple[int, ...]:
    """A level-0 box of the slide in screen pixels (the viewport's unit: the slide's width)."""
    corners = b.eval(
        "[[" + f"{x0}, {y0}], [{x1}, {y1}]].map(([x, y]) => {{ const p = viewer.viewport"
        f".viewportToViewerElementCoordinates(new OpenSeadragon.Point(x / {W}, y / {W}));"
        " return [p.x, p.y]; })"
    )
    (a, b_), (c, d) = corners
    return round(a), round(b_), round(c), round(d)


def test_the_viewer_loads_offline_zooms_and_its_overlay_lies_on_the_tissue(
    viewer_page, browser, tmp_path
):
    page, summary = viewer_page
    html = page.read_text()
    assert "http://" not in html.replace("http://schemas.microsoft.com/deepzoom/2008", "")
    assert "https://" not in html and (page.parent / "lib" / "openseadragon.min.js").is_file()
    browser.open(page)
    browser.wait_for(LOADED)
    assert browser.requests and all(r.startswith("file://") for r in browser.requests)
    browser.eval("void (viewer.navigator.element.style.display = 'none')")  # it shows both
    home_levels = _levels(browser.requests)
    deepest = int(np.ceil(np.log2(1000)))
    assert deepest not in home_levels
    before = browser.screenshot(tmp_path / "home.png")

    browser.eval("document.getElementById('layer0').click()")
    browser.wait_for("window.overlayItems[0] && window.overlayItems[0].getFullyLoaded()")
    time.sleep(0.5)
    after = browser.screenshot(tmp_path / "overlay.png")
    changed = np.abs(after.astype(int) - before.astype(int)).sum(axis=2) > 30
    x0, y0, x1, y1 = _screen_box(browser, TISSUE[1].start, TISSUE[0].start, 1000, 700)
    inside = np.zeros_like(changed)
    inside[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2] = True
    near = np.zeros_like(changed)
    near[max(0, y0 - 2) : y1 + 2, max(0, x0 - 2) : x1 + 2] = True
    assert changed[inside].mean() > 0.95  # the tissue is coloured...
    outside = changed & ~near & ~_controls(changed.shape)
    assert not outside.any(), (x0, y0, x1, y1, np.nonzero(outside))  # ...and nothing else is

    # zoom to the deepest level at the tissue's top-left corner: deeper tiles load, and the
    # overlay's edge is within one patch (64 level-0 px) of the tissue's
    browser.eval(
        "void viewer.viewport.zoomTo(viewer.viewport.getMaxZoom(), "
        f"viewer.world.getItemAt(0).imageToViewportCoordinates({TISSUE[1].start}, "
        f"{TISSUE[0].start}), true)"
    )
    browser.eval(
        "void viewer.viewport.panTo(viewer.world.getItemAt(0).imageToViewportCoordinates("
        f"{TISSUE[1].start}, {TISSUE[0].start}), true)"
    )
    time.sleep(1)  # the next frames ask for the deeper tiles
    browser.wait_for(LOADED + " && window.overlayItems[0].getFullyLoaded()")
    time.sleep(0.5)
    assert deepest in _levels(browser.requests)
    shown = browser.screenshot(tmp_path / "deep_overlay.png")
    browser.eval("document.getElementById('layer0').click()")  # off again
    time.sleep(0.5)
    plain = browser.screenshot(tmp_path / "deep_plain.png")
    coloured = np.abs(shown.astype(int) - plain.astype(int)).sum(axis=2) > 30
    coloured &= ~_controls(coloured.shape)
    ys, xs = np.nonzero(coloured)
    cx, cy, _, _ = _screen_box(browser, TISSUE[1].start, TISSUE[0].start, 1000, 700)
    one_patch = _screen_box(browser, 0, 0, 64, 64)[2] - _screen_box(browser, 0, 0, 64, 64)[0]
    assert len(xs) and abs(xs.min() - cx) <= one_patch and abs(ys.min() - cy) <= one_patch
    assert summary["viewer_uri"].endswith(".html")


def _controls(shape: tuple[int, ...]) -> np.ndarray:
    """The page's fixed chrome (side panel, buttons, scale bar): not the slide."""
    out = np.zeros(shape, bool)
    out[:, WIDTH - 282 :] = True  # the side panel (260 px, its padding and border)
    out[:40, :200] = True  # zoom buttons
    out[-50:, :220] = True  # scale bar
    return out


def test_a_classifier_s_page_has_a_heatmap_per_class_and_its_dead_letters(
    edge_slide,  # noqa: F811
    tmp_path,
    browser,
):
    import json

    import torch

    from tests.models_for_tests import NanOnDark, export_pt2

    torch.manual_seed(0)
    model = export_pt2(NanOnDark(2), str(tmp_path / "nan.pt2"))
    out = tmp_path / "out"
    done = run_module(
        "pipelines.slide_inference",
        *("--slides", edge_slide["slides"], "--model", f"cls={model}"),
        *("--class_names", "cls=normal,tumour", "--patch_px", "64", "--patch_mpp", str(MPP)),
        *("--min_tissue", "0.01", "--output", str(out)),
    )
    assert done.returncode == 0, done.stderr
    [summary] = pd.read_parquet(out / "slide_summaries").to_dict("records")
    from tests.e2e.cli import read_errors

    failed = pd.DataFrame(read_errors(out))
    failed = failed[failed.stage.str.startswith("RunModel")]
    assert len(failed) and summary["patch_count"]  # some patches fail, others do not
    # the heatmap as a pyramidal overlay aligned to level 0: one pixel per 64 px patch cell
    import tiffslide

    overlay = tiffslide.TiffSlide(summary["heatmap_uri"].removesuffix(".png") + ".ome.tif")
    assert overlay.dimensions == (int(np.ceil(W / 64)), int(np.ceil(700 / 64)))
    assert float(overlay.properties["tiffslide.mpp-x"]) == pytest.approx(64 * MPP)
    rgba = np.asarray(overlay.read_region((0, 0), 0, overlay.dimensions, as_array=True))
    painted = rgba[..., 3] > 0
    rows = pd.read_parquet(out / "patch_predictions")
    for r in rows.itertuples():  # every patch with a prediction paints its cell
        assert painted[r.y_px // 64, r.x_px // 64]
    overlay.close()
    page = Path(summary["viewer_uri"])
    config = json.loads(
        re.search(r"id=config>(.*?)</script>", page.read_text(), re.S).group(1)  # type: ignore[union-attr]
    )
    labels = [o["label"] for o in config["overlays"]]
    assert labels == ["cls: P(normal)", "cls: P(tumour)", f"dead letters: {len(failed)} patches"]
    browser.open(page)
    browser.wait_for(LOADED)
    browser.eval("void (viewer.navigator.element.style.display = 'none')")
    before = browser.screenshot()
    browser.eval("document.getElementById('layer2').click()")
    browser.wait_for("window.overlayItems[2] && window.overlayItems[2].getFullyLoaded()")
    time.sleep(0.5)
    after = browser.screenshot(tmp_path / "dead_letters.png")
    red = (np.abs(after.astype(int) - before.astype(int)).sum(axis=2) > 30) & ~_controls(
        after.shape[:2]
    )
    boxes = [json.loads(i) for i in failed.input]
    screen = [
        _screen_box(browser, b["x_px"], b["y_px"], b["x_px"] + 64, b["y_px"] + 64) for b in boxes
    ]
    expected = np.zeros_like(red)
    for x0, y0, x1, y1 in screen:
        expected[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] = True
    assert red.any() and not (red & ~expected).any()
