"""Stain normalisation (``slides/stain_norm.py``) against an independent implementation
(torchstain's NumPy Macenko normaliser), on CMU-1-Small-Region; Reinhard's statistics; and where
a reference stain comes from."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from transforms.core.errors import ConfigError
from transforms.slides.stain_norm import (
    MACENKO_DEFAULT,
    normalise,
    reinhard_default,
    resolve_reference,
)
from transforms.slides.stains import basis_of, estimate_stains, rgb_to_lab
from transforms.slides.tissue import tissue_mask

torchstain = pytest.importorskip("torchstain", reason="pip install torchstain (the dev extra)")
from torchstain.numpy.normalizers.macenko import NumpyMacenkoNormalizer  # noqa: E402

LN10 = math.log(10.0)


@pytest.fixture(scope="module")
def cmu1_rgb(cmu1) -> np.ndarray:
    import tiffslide

    slide = tiffslide.TiffSlide(str(cmu1))
    try:
        return np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
    finally:
        slide.close()


def _torchstain_matrices(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """torchstain's own H&E matrix (columns) and 99th-percentile concentrations (natural log)."""
    he, _, max_c = NumpyMacenkoNormalizer()._NumpyMacenkoNormalizer__compute_matrices(
        rgb, 240, 1, 0.15
    )
    return he, max_c


def test_the_macenko_mapping_equals_torchstains_given_the_same_stain_matrix(cmu1_rgb):
    """With torchstain's stain vectors and concentration percentiles, our per-pixel mapping
    gives its normalised pixels: on tissue, within 1 grey level on average and 8 at the 99th
    percentile (we clip optical density at the background, it adds 1 to each intensity)."""
    rgb = np.ascontiguousarray(cmu1_rgb[::4, ::4])
    expected, _, _ = NumpyMacenkoNormalizer().normalize(rgb, Io=240, stains=False)
    he, max_c = _torchstain_matrices(rgb)
    basis = dataclasses.replace(basis_of(he[:, 0], he[:, 1], 240.0, rgb), max_c=tuple(max_c / LN10))
    ours = normalise(rgb, basis, "macenko", MACENKO_DEFAULT)
    tissue = tissue_mask(rgb, "brightfield")
    diff = np.abs(ours.astype(int) - expected.astype(int))[tissue]
    assert diff.mean() < 1.0
    assert np.percentile(diff, 99) <= 8


def test_the_survey_finds_the_stain_vectors_torchstain_finds(cmu1_rgb):
    rgb = np.ascontiguousarray(cmu1_rgb[::4, ::4])
    he, _ = _torchstain_matrices(rgb)
    ours = estimate_stains(rgb, tissue_mask(rgb, "brightfield"))
    for theirs, mine in ((he[:, 0], ours.h_od), (he[:, 1], ours.e_od)):
        cosine = float(np.dot(theirs / np.linalg.norm(theirs), mine))
        assert math.degrees(math.acos(min(1.0, cosine))) < 6.0


def test_a_tissue_only_region_normalises_as_torchstain_normalises_it(cmu1_rgb):
    """Where every pixel is tissue the two conventions meet (ours takes the percentiles over
    tissue pixels, torchstain over the whole image): within 10 grey levels on average."""
    crop = np.ascontiguousarray(cmu1_rgb[::2, ::2][384:640, 512:768])
    assert tissue_mask(crop, "brightfield").mean() > 0.9
    expected, _, _ = NumpyMacenkoNormalizer().normalize(crop, Io=240, stains=False)
    basis = estimate_stains(crop, np.ones(crop.shape[:2], bool))
    ours = normalise(crop, basis, "macenko", MACENKO_DEFAULT)
    assert np.abs(ours.astype(int) - expected.astype(int)).mean() < 10.0


def test_reinhard_gives_the_tissue_the_references_colour_statistics(cmu1_rgb):
    rgb = np.ascontiguousarray(cmu1_rgb[::4, ::4])
    tissue = tissue_mask(rgb, "brightfield")
    basis = estimate_stains(rgb, tissue)
    ref = reinhard_default()
    out = rgb_to_lab(normalise(rgb, basis, "reinhard", ref)[tissue])
    np.testing.assert_allclose(out.mean(axis=0), ref.lab_mean, atol=2.0)
    np.testing.assert_allclose(out.std(axis=0), ref.lab_std, rtol=0.15, atol=1.0)


def test_macenko_maps_a_slides_stain_percentiles_onto_the_references(cmu1_rgb):
    """After normalisation the slide's H and E concentrations, read with the reference's
    vectors, have the reference's 99th percentiles."""
    rgb = np.ascontiguousarray(cmu1_rgb[::4, ::4])
    tissue = tissue_mask(rgb, "brightfield")
    basis = estimate_stains(rgb, tissue)
    out = normalise(rgb, basis, "macenko", MACENKO_DEFAULT)
    ref = MACENKO_DEFAULT
    again = basis_of(np.asarray(ref.h), np.asarray(ref.e), ref.io, out, tissue)
    np.testing.assert_allclose(again.max_c, ref.max_c, rtol=0.05)


def test_a_reference_comes_from_an_image_a_json_file_or_the_recipe(cmu1_rgb, tmp_path):
    from PIL import Image

    image = tmp_path / "ref.png"
    Image.fromarray(np.ascontiguousarray(cmu1_rgb[::4, ::4])).save(image)
    from_image = resolve_reference("macenko", str(image), "stain_reference")
    assert from_image.source == str(image)
    assert from_image.h[0] > from_image.h[1]  # hematoxylin absorbs red most
    as_json = tmp_path / "ref.json"
    as_json.write_text(json.dumps({"h": from_image.h, "e": from_image.e, "max_c": [1, 0.8]}))
    from_json = resolve_reference("macenko", str(as_json), "stain_reference")
    assert from_json.h == from_image.h and from_json.max_c == (1.0, 0.8)
    assert "macenko towards" in from_json.said("macenko")
    assert resolve_reference("macenko", None, "x") is MACENKO_DEFAULT
    assert resolve_reference("none", str(image), "x") is None


@pytest.mark.parametrize(
    ("method", "value", "said"),
    [
        ("macenko", {"h": [1, 0, 0], "e": [0, 1, 0]}, "needs h, e and max_c"),
        ("reinhard", {"lab_mean": [50, 0, 0]}, "needs lab_mean and lab_std"),
        ("macenko", {"h": [1, 0, 0], "hue": 3}, "unknown field hue"),
        ("macenko", {"h": [1, 0], "e": [0, 1, 0], "max_c": [1, 1]}, "h: expected 3 finite numbers"),
    ],
)
def test_a_bad_reference_fails_naming_what_is_wrong(method, value, said):
    with pytest.raises(ConfigError, match=said):
        resolve_reference(method, value, "stain_reference")
