"""Composed models, end to end from the CLI: a gate at 8 µm/px decides where a detail model at
0.5 µm/px runs (checked patch by patch against the gate's own rows), and an attention-MIL head
turns a slide's patch embeddings into one prediction (checked against a direct call)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.e2e.cli import read_errors, run_module

pytestmark = pytest.mark.e2e

W, H, MPP = 2048, 1536, 0.5
TISSUE = (slice(256, 1280), slice(256, 1792))
DARK = (slice(256, 1280), slice(256, 717))
"""The synthetic slide: pink tissue, its left 30% dark."""


@pytest.fixture(scope="module")
def composed(tmp_path_factory, cmu1) -> dict[str, str]:
    import tifffile
    import torch

    from tests.models_for_tests import (
        ABMIL,
        DarkGate,
        TinyEncoder,
        export_head,
        export_head_onnx,
        export_pt2,
        tiny_net,
    )

    folder = tmp_path_factory.mktemp("composed")
    rgb = np.full((H, W, 3), 245, np.uint8)
    rgb[TISSUE] = (200, 140, 180)
    rgb[DARK] = (70, 30, 60)
    path = folder / "dark.tiff"
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(256, 256), photometric="rgb", compression="zlib")
    slides = folder / "slides.csv"
    slides.write_text(f"slide_id,uri,mpp,case\ndark,{path},{MPP},c1\ncmu,{cmu1},,c1\n")
    torch.manual_seed(0)
    head = ABMIL().eval()
    return {
        "slides": str(slides),
        "gate": export_pt2(DarkGate(threshold=0.6).eval(), str(folder / "gate.pt2"), 16),
        "detail": export_pt2(tiny_net(2, seed=1), str(folder / "detail.pt2")),
        "enc": export_pt2(TinyEncoder().eval(), str(folder / "enc.pt2")),
        "head": export_head(head, str(folder / "head.pt2")),
        "head_onnx": export_head_onnx(head, str(folder / "head.onnx")),
    }


def _passing_boxes(gate_rows: pd.DataFrame) -> dict[str, list[tuple[int, int, int]]]:
    out: dict[str, list] = {}
    for r in gate_rows.itertuples():
        if r.probs[1] >= 0.5:  # the rule: gate:dark>=0.5
            out.setdefault(r.slide_id, []).append((r.x_px, r.y_px, r.size_px))
    return out


def _centre_in(row, boxes) -> bool:
    cx, cy = row.x_px + row.size_px / 2, row.y_px + row.size_px / 2
    return any(x <= cx < x + s and y <= cy < y + s for x, y, s in boxes)


def test_the_detail_model_runs_exactly_where_the_gate_passes(composed, tmp_path):
    out = tmp_path / "out"
    done = run_module(
        "pipelines.slide_inference",
        *("--slides", composed["slides"], "--output", str(out)),
        *("--model", f"gate={composed['gate']}", "--model_mpp", "gate=8"),
        *("--model_patch_px", "gate=16", "--class_names", "gate=light,dark"),
        *("--model", f"detail={composed['detail']}", "--model", f"every={composed['detail']}"),
        *("--patch_px", "64", "--patch_mpp", "0.5", "--gate", "detail=gate:dark>=0.5"),
    )
    assert done.returncode == 0, done.stderr
    rows = pd.read_parquet(out / "patch_predictions")
    gate, detail, every = (rows[rows.model_name == m] for m in ("gate", "detail", "every"))
    assert (gate.mpp == 8).all() and (detail.mpp == 0.5).all()
    passing = _passing_boxes(gate)
    expected = {
        (r.slide_id, r.x_px, r.y_px)
        for r in every.itertuples()
        if _centre_in(r, passing.get(r.slide_id, []))
    }
    assert {(r.slide_id, r.x_px, r.y_px) for r in detail.itertuples()} == expected
    for slide_id in ("dark", "cmu"):
        kept = (detail.slide_id == slide_id).sum() / (every.slide_id == slide_id).sum()
        assert 0 < kept < 1, (slide_id, kept)
    kept_dark = (detail.slide_id == "dark").sum() / (every.slide_id == "dark").sum()
    assert 0.2 < kept_dark < 0.45  # about the 30% of the tissue that is dark
    assert read_errors(out) == []
    summaries = pd.read_parquet(out / "slide_summaries").set_index(["slide_id", "model_name"])
    for slide_id in ("dark", "cmu"):
        d, e = summaries.loc[(slide_id, "detail")], summaries.loc[(slide_id, "every")]
        assert d.patches_planned == e.patches_planned == e.patch_count
        assert d.patches_planned == d.patch_count + d.patches_gated_out  # no dead letters
        assert pd.isna(e.patches_gated_out)
    verdicts = pd.read_parquet(out / "gate_verdicts")
    assert len(verdicts) == len(gate) and (verdicts.model_name == "detail").all()
    by_box = {(r.slide_id, r.x_px, r.y_px): r.passed for r in verdicts.itertuples()}
    for r in gate.itertuples():
        assert by_box[(r.slide_id, r.x_px, r.y_px)] == (r.probs[1] >= 0.5)
    [geojson] = (out / "qupath").rglob("dark.detail.gate.geojson")
    features = json.loads(geojson.read_text())["features"]
    names = {f["properties"]["classification"]["name"] for f in features}
    assert names == {"Gate passed", "Gate held back"}
    [page] = (out / "viewer").rglob("dark.html")
    assert "gate gate -\\u003e detail" in page.read_text()  # the page's JSON: a layer
    [run] = pd.read_parquet(out / "runs").to_dict("records")
    edges = {(e["source"], e["target"]): e for e in run["composition"]}
    assert edges[("gate", "detail")]["passed"] == len(detail)
    assert edges[("gate", "detail")]["held_back"] == int(
        summaries.xs("detail", level="model_name").patches_gated_out.sum()
    )


def _direct(head_path: str, features: np.ndarray, coords: np.ndarray, size: int):
    import torch

    module = torch.export.load(head_path).module()
    with torch.inference_mode():
        logits, attention = module(
            torch.from_numpy(features.copy())[None],
            torch.from_numpy(coords.copy())[None],
            torch.tensor(size),
        )
    return logits[0].numpy(), attention[0].numpy()


def test_a_slide_head_equals_a_direct_call_whatever_the_patch_order(composed, tmp_path):
    out = tmp_path / "out"
    done = run_module(
        "pipelines.slide_inference",
        *("--slides", composed["slides"], "--output", str(out), "--group_by", "case"),
        *("--model", f"enc={composed['enc']}", "--model_output", "enc=embedding"),
        *("--patch_px", "64", "--patch_mpp", "1.0", "--max_patches_per_unit", "4"),
        *("--slide_model", f"abmil={composed['head']}", "--slide_model_input", "abmil=enc"),
        *("--slide_model", f"onnx={composed['head_onnx']}", "--slide_model_input", "onnx=enc"),
        *("--slide_class_names", "abmil=a,b,c"),
    )
    assert done.returncode == 0, done.stderr
    embeddings = pd.read_parquet(out / "patch_embeddings")
    predictions = pd.read_parquet(out / "slide_predictions").set_index(["slide_id", "head_name"])
    attention = pd.read_parquet(out / "patch_attention")
    rng = np.random.default_rng(0)
    for slide_id, rows in embeddings.groupby("slide_id"):
        rows = rows.sort_values(["y_px", "x_px"])
        features = np.stack(rows.embedding.to_numpy()).astype(np.float32)
        coords = rows[["x_px", "y_px"]].to_numpy(np.int64)
        size = int(rows.size_px.iloc[0])
        logits, weights = _direct(composed["head"], features, coords, size)
        shuffled = rng.permutation(len(rows))
        logits_shuffled, _ = _direct(composed["head"], features[shuffled], coords[shuffled], size)
        for head in ("abmil", "onnx"):
            row = predictions.loc[(slide_id, head)]
            assert row.patch_count == len(rows) and row.encoder_name == "enc"
            np.testing.assert_allclose(row.logits, logits, atol=1e-5)
            np.testing.assert_allclose(row.logits, logits_shuffled, atol=1e-5)
            np.testing.assert_allclose(row.probs, np.exp(logits) / np.exp(logits).sum(), atol=1e-5)
            its = attention[(attention.slide_id == slide_id) & (attention.head_name == head)]
            assert its.attention.sum() == pytest.approx(1.0, abs=1e-6)
            its = its.sort_values(["y_px", "x_px"])
            np.testing.assert_allclose(its.attention.to_numpy(), weights, atol=1e-5)
        assert predictions.loc[(slide_id, "abmil")].class_names.tolist() == ["a", "b", "c"]
        assert Path(predictions.loc[(slide_id, "abmil")].attention_uri).exists()
    cases = pd.read_parquet(out / "case_predictions").set_index("head_name")
    mean = np.mean([predictions.loc[(s, "abmil")].probs for s in ("dark", "cmu")], axis=0)
    np.testing.assert_allclose(cases.loc["abmil"].probs, mean, atol=1e-9)
    assert cases.loc["abmil"].slide_count == 2 and cases.loc["abmil"].group_value == "c1"


def test_a_slide_over_the_head_bound_is_a_dead_letter_naming_its_count(composed, tmp_path):
    out = tmp_path / "out"
    done = run_module(
        "pipelines.slide_inference",
        *("--slides", composed["slides"], "--output", str(out), "--no_heatmaps"),
        *("--model", f"enc={composed['enc']}", "--model_output", "enc=embedding"),
        *("--patch_px", "64", "--patch_mpp", "2.0", "--slide_max_patches", "30"),
        *("--slide_model", f"abmil={composed['head']}", "--slide_model_input", "abmil=enc"),
    )
    assert done.returncode == 0, done.stderr
    counts = pd.read_parquet(out / "patch_embeddings").groupby("slide_id").size()
    over = set(counts[counts > 30].index)
    assert over and over != set(counts.index)  # one slide over the bound, one under
    errors = [e for e in read_errors(out) if e["stage"] == "SlideModel/abmil"]
    assert {e["key"] for e in errors} == over
    assert all("--slide_max_patches 30" in e["message"] for e in errors)
    predicted = set(pd.read_parquet(out / "slide_predictions").slide_id)
    assert predicted == set(counts.index) - over


def test_a_chain_of_gates_runs_each_model_only_where_its_own_gate_passed(composed, tmp_path):
    """qc1 (dark under 0.6) gates qc2, which gates the detail model; the detail model runs
    where qc2 passed, and qc2 only ran where qc1 passed."""
    import torch

    from tests.models_for_tests import DarkGate, export_pt2

    very_dark = export_pt2(DarkGate(threshold=0.3).eval(), str(tmp_path / "qc2.pt2"), 16)
    torch.manual_seed(0)
    slides = tmp_path / "dark.csv"
    slides.write_text(Path(composed["slides"]).read_text().splitlines()[0] + "\n" + next(
        line for line in Path(composed["slides"]).read_text().splitlines()
        if line.startswith("dark,")
    ) + "\n")  # fmt: skip
    out = tmp_path / "out"
    done = run_module(
        "pipelines.slide_inference",
        *("--slides", str(slides), "--output", str(out), "--no_heatmaps"),
        *("--model", f"qc1={composed['gate']}", "--model", f"qc2={very_dark}"),
        *("--model_mpp", "qc1=8", "--model_mpp", "qc2=4"),
        *("--model_patch_px", "qc1=16", "--model_patch_px", "qc2=16"),
        *("--model", f"detail={composed['detail']}", "--patch_px", "64", "--patch_mpp", "0.5"),
        *("--gate", "detail=qc2:1>=0.5", "--gate", "qc2=qc1:1>=0.5", "--gate_cover", "any"),
    )
    assert done.returncode == 0, done.stderr
    rows = pd.read_parquet(out / "patch_predictions")
    qc1, qc2, detail = (rows[rows.model_name == m] for m in ("qc1", "qc2", "detail"))

    def overlapping(row, gate_rows) -> bool:  # the `any` rule, from the gate's rows
        passing = gate_rows[gate_rows.probs.map(lambda p: p[1] >= 0.5)]
        return bool(
            (
                (passing.x_px < row.x_px + row.size_px)
                & (row.x_px < passing.x_px + passing.size_px)
                & (passing.y_px < row.y_px + row.size_px)
                & (row.y_px < passing.y_px + passing.size_px)
            ).any()
        )

    assert len(qc2) and all(overlapping(r, qc1) for r in qc2.itertuples())
    assert len(detail) and all(overlapping(r, qc2) for r in detail.itertuples())
    summaries = pd.read_parquet(out / "slide_summaries").set_index("model_name")
    for model in ("qc2", "detail"):
        s = summaries.loc[model]
        assert s.patches_planned == s.patch_count + s.patches_gated_out > s.patch_count
    [run] = pd.read_parquet(out / "runs").to_dict("records")
    assert {(e["source"], e["target"]) for e in run["composition"]} == {
        ("qc1", "qc2"),
        ("qc2", "detail"),
    }
