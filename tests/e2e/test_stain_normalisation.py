"""Stain normalisation end to end: the real lavlab-shell net over stain-jittered copies of
CMU-1-Small-Region (``bench/bench_stain_jitter.py`` makes them), with and without Macenko
normalisation. Normalisation must shrink the spread of the class areas, and the run must record
the reference it normalised towards."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench import bench_stain_jitter as jitter

pytestmark = [pytest.mark.e2e, pytest.mark.shared_data, pytest.mark.slow]


def test_macenko_shrinks_the_class_area_spread_of_stain_jittered_copies(shared_data, tmp_path):
    slides = jitter.make_copies(tmp_path, copies=3, jitter=0.15)
    manifest = tmp_path / "slides.csv"
    manifest.write_text("slide_id,uri\n" + "".join(f"{i},{p}\n" for i, p in slides))
    model = jitter.model_with_recipe(tmp_path)
    plain = jitter.class_areas(manifest, model, tmp_path / "plain")
    normed = jitter.class_areas(
        manifest, model, tmp_path / "normed", "--model_stain", "shell=macenko"
    )
    ids = [i for i, _ in slides if i != "original"]
    without, with_ = jitter.spreads(plain, ids), jitter.spreads(normed, ids)
    assert (with_ <= without + 1e-9).all(), (without, with_)
    assert with_.sum() < 0.8 * without.sum(), (without, with_)
    [run] = pd.read_parquet(tmp_path / "normed" / "runs").to_dict("records")
    [m] = run["models"]
    assert m["stain"].startswith("macenko towards Macenko's H&E reference")
    assert "max_c 0.8558,0.4477" in m["stain"]
    report = next((tmp_path / "normed" / "report").rglob("index.html")).read_text()
    assert "stain: macenko towards" in report
    np.testing.assert_array_less(0, normed["original"])  # every class still found
