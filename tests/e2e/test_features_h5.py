"""``--features_h5``: per slide x encoder, a TRIDENT/CLAM-style HDF5 file, read back exactly as
TRIDENT's ``trident/IO.py`` reads it (``read_coords``: ``dict(f['coords'].attrs)`` and
``f['coords'][:]``; the features: ``f['features'][:]``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.e2e.cli import run_module
from tests.e2e.test_whole_tissue import H, W, edge_slide  # noqa: F401 - a fixture

pytestmark = pytest.mark.e2e


def read_like_trident(path: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as f:
        attrs = dict(f["coords"].attrs)
        coords = f["coords"][:]
        features = f["features"][:]
        assert f["features"].attrs["name"] == "enc"
    return attrs, coords, features


def test_features_h5_equal_the_embedding_rows_and_their_boxes(edge_slide, tmp_path):  # noqa: F811
    import torch

    from tests.models_for_tests import TinyEncoder, export_pt2

    torch.manual_seed(0)
    encoder = export_pt2(TinyEncoder().eval(), str(tmp_path / "enc.pt2"))
    out = tmp_path / "out"
    done = run_module(
        "pipelines.slide_inference",
        *("--slides", edge_slide["slides"], "--model", f"enc={encoder}"),
        *("--model_output", "enc=embedding", "--patch_px", "64", "--patch_mpp", "1.0"),
        *("--overlap_px", "16", "--min_tissue", "0.01", "--output", str(out)),
        *("--features_h5", "--no_heatmaps", "--artifacts", str(tmp_path / "art")),
    )
    assert done.returncode == 0, done.stderr
    [path] = (tmp_path / "art" / "features_h5").rglob("edge.enc.h5")
    attrs, coords, features = read_like_trident(path)
    rows = pd.read_parquet(out / "patch_embeddings").sort_values(["y_px", "x_px"])
    assert features.dtype == np.float32 and features.shape == (len(rows), 16)
    assert coords.dtype == np.int64 and coords.shape == (len(rows), 2)
    np.testing.assert_array_equal(coords, rows[["x_px", "y_px"]].to_numpy())
    np.testing.assert_array_equal(features, np.stack(rows.embedding.to_numpy()))
    assert attrs["patch_size"] == 64 and attrs["patch_size_level0"] == 128
    assert attrs["level0_magnification"] == 20 and attrs["target_magnification"] == 10
    assert attrs["overlap"] == 16 and attrs["name"] == "edge"
    assert (attrs["level0_width"], attrs["level0_height"]) == (W, H)
    # TRIDENT's own rule: patch_size_level0 = patch_size * src_mag // target_mag
    assert (
        attrs["patch_size"] * attrs["level0_magnification"] // attrs["target_magnification"]
        == (attrs["patch_size_level0"])
    )
