"""The hostile-input corpus: one table of cases, each an input and its expected outcome.

Outcomes: ``ok`` (results), ``("dead", stage, error_type)`` (a dead letter), or
``("fatal", text)`` (the job fails at start, naming the cause). Each family runs ONE pipeline
with all its cases and a good input beside them, so every case also checks that the good inputs
of the same run still get their results, and that inputs = results + dead letters.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.e2e.cli import read_errors

pytestmark = [pytest.mark.pipeline, pytest.mark.shared_data]

OK = "ok"


def dead(stage: str, error_type: str) -> tuple[str, str, str]:
    return ("dead", stage, error_type)


# --------------------------------------------------------------------------- slide files


def _tiled(path: Path, rgb: np.ndarray, **kw) -> str:
    import tifffile

    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(256, 256), photometric="rgb", **kw)
    return str(path)


def _tissue(size: int = 1024) -> np.ndarray:
    from demo.synthetic_slide import make_slide

    return make_slide(size, size, seed=5).rgb


def declared_huge_tiff(path: Path) -> str:
    """A TIFF whose header declares 10^6 x 10^6 RGB pixels in 4096 px tiles: 60,025 tile
    entries that all point at one 22-byte zlib tile, so the file is ~0.5 MB."""
    import zlib

    side, tile = 1_000_000, 4096
    n = (-(-side // tile)) ** 2
    data = zlib.compress(bytes(16))
    entries = [
        (256, 4, 1, side),  # ImageWidth
        (257, 4, 1, side),  # ImageLength
        (258, 3, 3, None),  # BitsPerSample 8,8,8
        (259, 3, 1, 8),  # Compression: deflate
        (262, 3, 1, 2),  # RGB
        (277, 3, 1, 3),  # SamplesPerPixel
        (284, 3, 1, 1),  # PlanarConfiguration
        (322, 3, 1, tile),
        (323, 3, 1, tile),
        (324, 4, n, None),  # TileOffsets
        (325, 4, n, None),  # TileByteCounts
    ]
    ifd_at = 8
    ifd_size = 2 + 12 * len(entries) + 4
    bits_at = ifd_at + ifd_size
    data_at = bits_at + 6
    offsets_at = data_at + len(data)
    counts_at = offsets_at + 4 * n
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_at) + struct.pack("<H", len(entries)))
    for tag, typ, count, value in entries:
        if tag == 258:
            value = bits_at
        elif tag == 324:
            value = offsets_at
        elif tag == 325:
            value = counts_at
        fmt = "<HHI" + ("HH" if typ == 3 and count == 1 else "I")
        out += struct.pack(fmt, tag, typ, count, *((value, 0) if fmt.endswith("HH") else (value,)))
    out += struct.pack("<I", 0)
    out += struct.pack("<HHH", 8, 8, 8) + data
    out += struct.pack(f"<{n}I", *([data_at] * n)) + struct.pack(f"<{n}I", *([len(data)] * n))
    path.write_bytes(bytes(out))
    return str(path)


def tile_bomb(path: Path) -> str:
    """One 8192 x 8192 zlib tile of zeros: ~200 KB on disk, 200 MB decoded."""
    import tifffile

    with tifffile.TiffWriter(path) as tif:
        tif.write(
            np.zeros((8192, 8192, 3), np.uint8),
            tile=(8192, 8192),
            photometric="rgb",
            compression="zlib",
        )
    return str(path)


def build_slides(d: Path, tmp: Path) -> dict[str, tuple[str, str | None, object]]:
    """case id -> (uri, manifest mpp or None, expected outcome)."""
    cmu1 = d / "aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"
    truncated = tmp / "truncated.svs"
    truncated.write_bytes(cmu1.read_bytes()[:300_000])
    (tmp / "empty.svs").write_bytes(b"")
    (tmp / "png.svs").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(2000))
    tissue = _tissue()
    return {
        "cmu1_svs": (str(cmu1), None, OK),
        "ndpi": (str(d / "ndpi_tritc" / "test3-TRITC-2-560.ndpi"), None, OK),
        "generic_tiff_manifest_mpp": (str(d / "generic_tiff_boxes" / "boxes.tiff"), "0.25", OK),
        "truncated_svs": (str(truncated), None, dead("PlanPatches", "SlideError")),
        "zero_byte_file": (
            str(tmp / "empty.svs"),
            None,
            dead("PlanPatches", "UnsupportedFormatError"),
        ),
        "png_renamed_svs": (
            str(tmp / "png.svs"),
            None,
            dead("PlanPatches", "UnsupportedFormatError"),
        ),
        "unreadable_svs": (
            str(d / "negative_unreadable_svs" / "unreadable.svs"),
            None,
            dead("PlanPatches", "SlideError"),
        ),
        "unopenable_tiff": (
            str(d / "negative_unopenable_tiff" / "unopenable.tiff"),
            None,
            dead("PlanPatches", "SlideError"),
        ),
        "dicom": (
            str(d / "dicom_wsi2dcm_jpeg" / "wsi2dcm_jpeg.dcm"),
            None,
            dead("PlanPatches", "UnsupportedFormatError"),
        ),
        "missing_file": (str(tmp / "nope.svs"), None, dead("PlanPatches", "FileNotFoundError")),
        "no_mpp": (_tiled(tmp / "nompp.tiff", tissue), None, dead("PlanPatches", "SlideError")),
        "single_level": (_tiled(tmp / "single.tiff", tissue, compression="jpeg"), "0.5", OK),
        "jpeg2000_tiles": (_tiled(tmp / "j2k.tiff", tissue, compression="jpeg2000"), "0.5", OK),
        "declared_1e6_square": (
            declared_huge_tiff(tmp / "huge.tiff"),
            "0.5",
            dead("PlanPatches", "SlideError"),
        ),
        "tile_bomb": (tile_bomb(tmp / "bomb.tiff"), "0.5", dead("PlanPatches", "SlideError")),
    }


@pytest.fixture(scope="module")
def slide_run(shared_data, tiny_models, tmp_path_factory):
    from pipelines.slide_inference import run

    tmp = tmp_path_factory.mktemp("hostile_slides")
    cases = build_slides(shared_data, tmp)
    manifest = tmp / "slides.csv"
    manifest.write_text(
        "slide_id,uri,mpp\n"
        + "".join(f"{cid},{uri},{mpp or ''}\n" for cid, (uri, mpp, _) in cases.items())
    )
    out = tmp / "out"
    run(
        ["--slides", str(manifest), "--model", f"two={tiny_models['two']}", "--patch_px", "64"]
        + ["--patch_mpp", "0.5", "--output", str(out), "--no_heatmaps"]
    )
    summaries = pd.read_parquet(out / "slide_summaries")
    errors = read_errors(out)
    return cases, summaries, errors


SLIDE_CASES = [
    "cmu1_svs",
    "ndpi",
    "generic_tiff_manifest_mpp",
    "truncated_svs",
    "zero_byte_file",
    "png_renamed_svs",
    "unreadable_svs",
    "unopenable_tiff",
    "dicom",
    "missing_file",
    "no_mpp",
    "single_level",
    "jpeg2000_tiles",
    "declared_1e6_square",
    "tile_bomb",
]


def outcome(key: str, ok_keys: set[str], errors: list[dict]) -> object:
    mine = [e for e in errors if e["key"] == key or e["key"].startswith(f"{key}@")]
    if key in ok_keys and not mine:
        return OK
    assert len(mine) == 1, (key, mine)
    return dead(mine[0]["stage"], mine[0]["error_type"])


@pytest.mark.parametrize("case", SLIDE_CASES)
def test_slide_case(slide_run, case):
    cases, summaries, errors = slide_run
    assert outcome(case, set(summaries.slide_id), errors) == cases[case][2]
    # The whole run: slides in = slides with results + slide dead letters.
    assert len(cases) == summaries.slide_id.nunique() + len(errors)
    assert (summaries[summaries.slide_id == "cmu1_svs"].patch_count > 100).all()


# ------------------------------------------------------------------------------ manifests

MANIFEST_CASES = {
    # slide manifest rows (written as a BOM + CRLF CSV: the good row must still parse)
    "bom_crlf_csv": OK,
    "slide_row_without_uri": dead("ReadManifest", "ManifestError"),
    "duplicate_slide_id_other_uri": dead("ReadManifest", "ManifestError"),
    # patch manifest rows (a Parquet file whose coordinate columns are strings)
    "parquet_string_coordinates": OK,
    "parquet_wrong_type": dead("ReadManifest", "ManifestError"),
    "nan_coordinate": dead("ReadManifest", "ManifestError"),
    "negative_coordinate": dead("ReadManifest", "ManifestError"),
    "patch_out_of_bounds": dead("PlanPatches", "OutOfBoundsError"),
    "level_that_does_not_exist": dead("PlanPatches", "SlideError"),
}


@pytest.fixture(scope="module")
def manifest_run(shared_data, tiny_models, tmp_path_factory):
    from pipelines.slide_inference import run

    tmp = tmp_path_factory.mktemp("hostile_manifests")
    cmu1 = shared_data / "aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"
    ndpi = shared_data / "ndpi_tritc" / "test3-TRITC-2-560.ndpi"
    slides = tmp / "slides.csv"
    slides.write_bytes(
        "\ufeffslide_id,uri\r\n"
        f"bom_crlf_csv,{cmu1}\r\n"
        "slide_row_without_uri,\r\n"
        f"duplicate_slide_id_other_uri,{cmu1}\r\n"
        f"duplicate_slide_id_other_uri,{ndpi}\r\n".encode()
    )
    rows = [
        ("parquet_string_coordinates", "100", "100", "64", "0"),
        ("parquet_wrong_type", "abc", "100", "64", "0"),
        ("nan_coordinate", "nan", "100", "64", "0"),
        ("negative_coordinate", "100", "-5", "64", "0"),
        ("patch_out_of_bounds", "100000", "100", "64", "0"),
        ("level_that_does_not_exist", "200", "200", "64", "7"),
    ]
    patches = tmp / "patches.parquet"
    frame = pd.DataFrame(rows, columns=["case", "x_px", "y_px", "size_px", "level"])
    frame.insert(0, "slide_id", "bom_crlf_csv")
    frame.to_parquet(patches)
    out = tmp / "out"
    run(
        ["--slides", str(slides), "--patches", str(patches), "--model", f"two={tiny_models['two']}"]
        + ["--patch_px", "64", "--patch_mpp", "0.5", "--output", str(out), "--no_heatmaps"]
    )
    predictions = pd.read_parquet(out / "patch_predictions")
    return frame, predictions, read_errors(out)


SLIDE_ROW_KEYS = {
    "bom_crlf_csv": "bom_crlf_csv",
    "slide_row_without_uri": "slides.csv:row 2",
    "duplicate_slide_id_other_uri": "duplicate_slide_id_other_uri",
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_manifest_case(manifest_run, case):
    frame, predictions, errors = manifest_run
    by_key = {e["key"]: e for e in errors}
    if case in SLIDE_ROW_KEYS:
        error = by_key.get(SLIDE_ROW_KEYS[case])
    else:
        i = int(frame.index[frame.case == case][0])
        row = frame.iloc[i]
        error = by_key.get(f"patches.parquet:row {i + 1}")
        if error is None and row.x_px.isdigit() and not row.y_px.startswith("-"):
            error = by_key.get(f"bom_crlf_csv@{int(row.x_px)},{int(row.y_px)}")
    got = OK if error is None else dead(error["stage"], error["error_type"])
    assert got == MANIFEST_CASES[case]
    # The good patch has its prediction; patches in = predictions + patch dead letters.
    assert list(zip(predictions.x_px, predictions.y_px, strict=True)) == [(100, 100)]
    patch_errors = [e for e in errors if e["key"].startswith(("patches.parquet:", "bom_crlf_csv@"))]
    assert len(frame) == len(predictions) + len(patch_errors)
