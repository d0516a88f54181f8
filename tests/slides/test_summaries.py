"""Summary math: slide statistics and patch-weighted case summaries."""

from __future__ import annotations

import numpy as np
import pytest

from transforms.models.spec import ModelSpec
from transforms.slides.summaries import SlideStats, SlideStatsFn, case_summary


def test_slide_stats_match_numpy_and_merge_in_any_split():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], size=50)
    fn = SlideStatsFn([ModelSpec("m", "m.pt2")])
    accs = [fn.create_accumulator() for _ in range(3)]
    for i, p in enumerate(probs):
        row = {"model_name": "m", "x_px": i, "y_px": 0, "size_px": 4, "probs": p.tolist()}
        fn.add_input(accs[i % 3], row)
    stats = fn.extract_output(fn.merge_accumulators(accs)).class_stats()
    np.testing.assert_allclose(stats["class_mean_prob"], probs.mean(0))
    np.testing.assert_allclose(stats["class_max_prob"], probs.max(0))
    np.testing.assert_allclose(
        stats["class_fraction"], np.bincount(probs.argmax(1), minlength=3) / 50
    )


def test_empty_stats_have_no_class_values():
    assert SlideStats().class_stats() == {
        "class_mean_prob": [],
        "class_fraction": [],
        "class_max_prob": [],
    }


def row(slide_id, n, mean, frac, mx, area):
    return {
        "slide_id": slide_id,
        "model_name": "m",
        "model_version": "v",
        "patch_count": n,
        "class_mean_prob": mean,
        "class_fraction": frac,
        "class_max_prob": mx,
        "tissue_area_mm2": area,
        "run_id": "r",
    }


def test_case_summary_weights_by_patch_count_and_skips_empty_slides():
    rows = [
        row("b", 30, [0.2, 0.8], [0.1, 0.9], [0.5, 0.99], 2.0),
        row("a", 10, [0.6, 0.4], [0.7, 0.3], [0.9, 0.6], 1.5),
        row("c", 0, [], [], [], None),
    ]
    out = case_summary("case_id", "P1", rows)
    assert out["slide_ids"] == ["a", "b", "c"] and out["slide_count"] == 3
    assert out["patch_count"] == 40
    assert out["class_mean_prob"] == pytest.approx(
        [(0.2 * 30 + 0.6 * 10) / 40, (0.8 * 30 + 0.4 * 10) / 40]
    )
    assert out["class_fraction"] == pytest.approx(
        [(0.1 * 30 + 0.7 * 10) / 40, (0.9 * 30 + 0.3 * 10) / 40]
    )
    assert out["class_max_prob"] == pytest.approx([0.9, 0.99])
    assert out["tissue_area_mm2"] == pytest.approx(3.5)


def test_heatmap_raster_stays_bounded_and_keeps_the_mean(monkeypatch):
    import transforms.slides.summaries as agg

    monkeypatch.setattr(agg, "MAX_HEATMAP_SIDE", 8)
    parts = [SlideStats(), SlideStats()]
    rng = np.random.default_rng(1)
    probs = rng.dirichlet([1, 1], size=(40, 40))
    for y in range(40):
        for x in range(40):
            parts[(x + y) % 2].add((x * 16, y * 16, 16), probs[y, x].tolist())
    stats = parts[0].merge(parts[1])
    cell_probs, painted = stats.heatmap_raster()
    assert painted.shape <= (8, 8) and stats.cell_px == 16 * 8  # 40x40 -> 5x5 after 3 halvings
    assert painted[:5, :5].all() and stats.n == 1600
    # Every cell is the mean of the patches inside it.
    for cy, cx in zip(*np.nonzero(painted), strict=True):
        inside = probs[cy * 8 : (cy + 1) * 8, cx * 8 : (cx + 1) * 8].reshape(-1, 2)
        np.testing.assert_allclose(cell_probs[cy, cx], inside.mean(0), rtol=1e-5)


def test_a_patch_is_painted_in_the_cell_holding_its_centre():
    stats = SlideStats()
    stats.add((0, 0, 448), [1.0, 0.0])
    stats.add((400, 0, 448), [0.0, 1.0])  # corner in cell 0, centre (624) in cell 1
    stats.add((1000, 900, 448), [0.5, 0.5])  # centre (1224, 1124): cell (2, 2)
    cell_probs, painted = stats.heatmap_raster()
    assert sorted(zip(*np.nonzero(painted), strict=True)) == [(0, 0), (0, 1), (2, 2)]
    assert cell_probs[0, 0].tolist() == [1.0, 0.0] and cell_probs[0, 1].tolist() == [0.0, 1.0]


def test_heatmap_png_paints_probabilities_over_the_thumbnail():
    import io

    from PIL import Image

    from transforms.slides.heatmaps import colour_scale, render_heatmap

    thumb = np.full((100, 200, 3), 240, np.uint8)
    probs = np.zeros((2, 4, 2), np.float32)
    probs[0, 0] = (0.0, 1.0)  # a sure "class 1" cell at the top left
    probs[1, 3] = (1.0, 0.0)
    painted = np.zeros((2, 4), bool)
    painted[0, 0] = painted[1, 3] = True
    png = render_heatmap(thumb, 4.0, 200, probs, painted, "t")  # cells are 50 thumbnail px
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert image.shape[1] == 320 and image.shape[0] > 100  # legend below, min width 320
    red, blue = colour_scale(np.array(1.0)), colour_scale(np.array(0.0))
    np.testing.assert_allclose(image[25, 25], (240 + red) / 2, atol=2)
    np.testing.assert_allclose(image[75, 175], (240 + blue) / 2, atol=2)
    assert (image[25, 100] == 240).all()  # unpainted cells leave the thumbnail as it was


def test_a_class_map_takes_its_recipes_colours():
    from transforms.slides.heatmaps import PALETTE, overlay_rgba, palette_of

    probs = np.zeros((2, 3, 3), np.float32)
    probs[0, :, 0] = probs[1, :, 2] = 1.0  # top row class 0, bottom row class 2
    painted = np.ones((2, 3), bool)
    colours = ("#ff0000", "#00ff00", "#0000ff")
    rgba = overlay_rgba(probs, painted, class_map=True, palette=palette_of(colours))
    assert rgba[0, 0, :3].tolist() == [255, 0, 0] and rgba[1, 2, :3].tolist() == [0, 0, 255]
    assert palette_of(()) is PALETTE  # no recipe colours: the pictures' palette
    with pytest.raises(Exception, match="3 names for 2 colours"):
        ModelSpec(
            "m",
            "m.pt2",
            output_kind="segmentation",
            class_names=("a", "b", "c"),
            class_colours=("#ff0000", "#00ff00"),
        )
