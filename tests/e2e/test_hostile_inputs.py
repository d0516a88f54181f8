"""The hostile-input corpus: one table of cases, each an input and its expected outcome.

Outcomes: ``ok`` (results), ``("dead", stage, error_type)`` (a dead letter), or
``("fatal", text)`` (the job fails at start, naming the cause). Each family runs ONE pipeline
with all its cases and a good input beside them, so every case also checks that the good inputs
of the same run still get their results, and that inputs = results + dead letters.
"""

from __future__ import annotations

import json
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


def _copy(source: Path, target: Path) -> str:
    target.write_bytes(source.read_bytes())
    return str(target)


def _truncated(source: Path, target: Path) -> str:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return str(target)


def ct_image(path: Path) -> str:
    """A valid DICOM file that is not a slide: an 8 x 8 CT image."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "CT", 8, 8, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(128)
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


def dicom_missing_frames(source: Path, path: Path) -> str:
    """The JPEG slide with half of its frames gone (NumberOfFrames still says all of them)."""
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(source)
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    ds.PixelData = encapsulate(frames[: len(frames) // 2], has_bot=True)
    ds.save_as(path)
    return str(path)


def dicom_in_syntax(source: Path, path: Path, syntax: str) -> str:
    """The slide relabelled with another transfer syntax (e.g. MPEG2, which no reader decodes)."""
    import pydicom

    ds = pydicom.dcmread(source)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path)
    return str(path)


def dicom_image_type_of_numbers(source: Path, path: Path) -> str:
    """A DICOM image that is not a slide, whose ImageType holds numbers, not strings."""
    import pydicom

    ds = pydicom.dcmread(source)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    ds.add_new(0x00080008, "US", [7] * 10_000)
    ds.save_as(path)
    return str(path)


def folder_of(folder: Path, *files: Path, extra: dict[str, bytes] | None = None) -> str:
    """A folder holding copies of ``files`` and the ``extra`` files (name -> bytes)."""
    folder.mkdir()
    for file in files:
        _copy(file, folder / file.name)
    for name, data in (extra or {}).items():
        (folder / name).write_bytes(data)
    return str(folder)


def build_slides(d: Path, tmp: Path) -> dict[str, tuple[str, str | None, object]]:
    """case id -> (uri, manifest mpp or None, expected outcome)."""
    cmu1 = d / "aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"
    truncated = tmp / "truncated.svs"
    truncated.write_bytes(cmu1.read_bytes()[:300_000])
    (tmp / "empty.svs").write_bytes(b"")
    (tmp / "png.svs").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(2000))
    tissue = _tissue()
    dicom_jpeg = d / "dicom_wsi2dcm_jpeg" / "wsi2dcm_jpeg.dcm"
    boxes = d / "dicom_openslide_boxes"
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
        # DICOM (wsidicom). The wsi2dcm slides say 16.8 um/px: the manifest's mpp lets a
        # 0.5 mpp grid cut them, which is what these cases test (reading, not resolution).
        "dicom_jpeg": (str(dicom_jpeg), "0.5", OK),
        "dicom_raw": (str(d / "dicom_wsi2dcm_raw" / "wsi2dcm_raw.dcm"), "0.5", OK),
        "dicom_folder_of_instances": (str(d / "dicom_openslide_boxes"), None, OK),
        "dicom_renamed_svs": (_copy(dicom_jpeg, tmp / "dicom.svs"), "0.5", OK),
        "dicom_at_its_own_mpp": (str(dicom_jpeg), None, dead("PlanPatches", "ResolutionError")),
        "dicom_truncated": (
            _truncated(dicom_jpeg, tmp / "truncated.dcm"),
            "0.5",
            dead("PlanPatches", "SlideError"),
        ),
        "dicom_not_a_slide": (
            ct_image(tmp / "ct.dcm"),
            "0.5",
            dead("PlanPatches", "UnsupportedFormatError"),
        ),
        "dicom_missing_frames": (
            dicom_missing_frames(dicom_jpeg, tmp / "missing_frames.dcm"),
            "0.5",
            dead("PlanPatches", "SlideError"),
        ),
        "dicom_unsupported_transfer_syntax": (
            dicom_in_syntax(dicom_jpeg, tmp / "mpeg2.dcm", "1.2.840.10008.1.2.4.100"),
            "0.5",
            dead("PlanPatches", "UnsupportedFormatError"),
        ),
        "dicom_folder_without_its_volume": (  # only the thumbnail instance is left
            folder_of(tmp / "thumbnail_only", boxes / "boxes_1.dcm"),
            None,
            dead("PlanPatches", "UnsupportedFormatError"),
        ),
        "dicom_folder_with_stray_files": (  # a README and a CT image beside the instances
            folder_of(
                tmp / "with_strays",
                boxes / "boxes_0.dcm",
                boxes / "boxes_1.dcm",
                Path(ct_image(tmp / "stray_ct.dcm")),
                extra={"README.txt": b"scanned 2026-11-30\n"},
            ),
            None,
            OK,
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
        "dicom_tag_of_the_wrong_type": (  # describing it for the dead letter raised TypeError
            dicom_image_type_of_numbers(dicom_jpeg, tmp / "numbers.dcm"),
            "0.5",
            dead("PlanPatches", "UnsupportedFormatError"),
        ),
    }


@pytest.fixture(scope="module")
def slide_run(shared_data, tiny_models, tmp_path_factory):
    from localgcp.bad_servers import MisbehavingServer
    from pipelines.slide_inference import run

    tmp = tmp_path_factory.mktemp("hostile_slides")
    cases = build_slides(shared_data, tmp)
    manifest = tmp / "slides.csv"
    out = tmp / "out"
    # DICOMweb stores that answer 200 and then a byte every 0.5 s, or a body without end (real
    # local servers): each response is read within PATHBEAM_IO_DEADLINE_S and a size cap
    with MisbehavingServer(interval_s=0.5, max_s=60) as bad, pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATHBEAM_IO_DEADLINE_S", "2")
        root = bad.endpoint.replace("http://", "dicomweb+http://")
        series = "dicom-web/studies/1.2/series/1.2.3"
        cases["dicomweb_trickle"] = (
            f"{root}/trickle/{series}",
            None,
            dead("PlanPatches", "RemoteIOError"),
        )
        cases["dicomweb_endless"] = (
            f"{root}/endless/{series}",
            None,
            dead("PlanPatches", "ResponseTooLarge"),
        )
        manifest.write_text(
            "slide_id,uri,mpp\n"
            + "".join(f"{cid},{uri},{mpp or ''}\n" for cid, (uri, mpp, _) in cases.items())
        )
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
    "dicom_jpeg",
    "dicom_raw",
    "dicom_folder_of_instances",
    "dicom_renamed_svs",
    "dicom_at_its_own_mpp",
    "dicom_truncated",
    "dicom_not_a_slide",
    "dicom_missing_frames",
    "dicom_unsupported_transfer_syntax",
    "dicom_folder_without_its_volume",
    "dicom_folder_with_stray_files",
    "missing_file",
    "no_mpp",
    "single_level",
    "jpeg2000_tiles",
    "declared_1e6_square",
    "tile_bomb",
    "dicom_tag_of_the_wrong_type",
    "dicomweb_trickle",
    "dicomweb_endless",
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


def test_dicom_dead_letters_say_what_is_wrong(slide_run):
    _, _, errors = slide_run
    said = {e["key"]: e["message"] for e in errors}
    assert "MPEG2 Main Profile" in said["dicom_unsupported_transfer_syntax"]
    assert "1.2.840.10008.1.2.4.100" in said["dicom_unsupported_transfer_syntax"]
    assert "less frames 6 than NumberOfFrames 12" in said["dicom_missing_frames"]
    assert "thumbnail in Explicit VR Little Endian" in said["dicom_folder_without_its_volume"]
    assert "CT Image Storage" in said["dicom_not_a_slide"]


# ------------------------------------------------------------------------------ manifests

MANIFEST_CASES = {
    # slide manifest rows (written as a BOM + CRLF CSV: the good row must still parse)
    "bom_crlf_csv": OK,
    "slide_row_without_uri": dead("ReadManifest", "ManifestError"),
    "duplicate_slide_id_other_uri": dead("ReadManifest", "ManifestError"),
    "slide_id_of_5000_characters": dead("ReadManifest", "ManifestError"),
    "uri_of_9000_characters": dead("ReadManifest", "ManifestError"),
    "mpp_typed_in_mm": dead("ReadManifest", "ManifestError"),
    "mpp_of_1e-9": dead("ReadManifest", "ManifestError"),
    # patch manifest rows (a Parquet file whose coordinate columns are strings)
    "parquet_string_coordinates": OK,
    "parquet_wrong_type": dead("ReadManifest", "ManifestError"),
    "nan_coordinate": dead("ReadManifest", "ManifestError"),
    "underscored_number": dead("ReadManifest", "ManifestError"),
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
        "\ufeffslide_id,uri,mpp\r\n"
        f"bom_crlf_csv,{cmu1},\r\n"
        "slide_row_without_uri,,\r\n"
        f"duplicate_slide_id_other_uri,{cmu1},\r\n"
        f"duplicate_slide_id_other_uri,{ndpi},\r\n"
        f"{'s' * 5000},{cmu1},\r\n"
        f"uri_of_9000_characters,{'/x' * 4500},\r\n"
        f"mpp_typed_in_mm,{cmu1},0.000499\r\n"
        f"mpp_of_1e-9,{cmu1},1e-9\r\n".encode()
    )
    rows = [
        ("parquet_string_coordinates", "100", "100", "64", "0"),
        ("parquet_wrong_type", "abc", "100", "64", "0"),
        ("nan_coordinate", "nan", "100", "64", "0"),
        ("underscored_number", "1_00", "100", "64", "0"),  # float() reads it as 100
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
    "slide_id_of_5000_characters": "slides.csv:row 5",
    "uri_of_9000_characters": "slides.csv:row 6",
    "mpp_typed_in_mm": "slides.csv:row 7",
    "mpp_of_1e-9": "slides.csv:row 8",
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


# ----------------------------------------------------------------------------------- text

TEXT_CASES = {
    "ncbi_abstract": OK,
    "empty_text": dead("ReadManifest", "ManifestError"),
    "whitespace_only": dead("ReadManifest", "ManifestError"),
    "not_utf8": dead("ReadManifest", "ManifestError"),
    "one_megabyte_document": OK,
    "unbroken_100k_char_token": OK,
    "emoji_and_rtl_scripts": OK,
    "fifty_megabyte_document": dead("ReadManifest", "ManifestError"),
}


@pytest.fixture(scope="module")
def text_run(shared_data, tiny_text_models, tmp_path_factory):
    from pipelines.text_inference import run

    tmp = tmp_path_factory.mktemp("hostile_text")
    ncbi = (shared_data / "text_ncbi_disease_devel" / "ncbi_disease_devel.jsonl").read_text()
    abstract = json.loads(ncbi.splitlines()[0])["text"]
    texts = {
        "ncbi_abstract": abstract,
        "empty_text": "",
        "whitespace_only": " \n\t ",
        "not_utf8": None,
        "one_megabyte_document": (abstract + " ") * (1_000_000 // (len(abstract) + 1)),
        "unbroken_100k_char_token": "a" * 100_000,
        "emoji_and_rtl_scripts": "Patients 😀🧬 with مرض السكري and סוכרת had BRCA1 variants.",
        "fifty_megabyte_document": "x" * 50_000_000,
    }
    lines = []
    for doc_id, text in texts.items():
        if text is None:
            lines.append(b'{"doc_id": "not_utf8", "text": "caf\xe9 au lait spots"}')
        else:
            lines.append(json.dumps({"doc_id": doc_id, "text": text}).encode())
    docs = tmp / "docs.jsonl"
    docs.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp / "out"
    run(
        ["--documents", str(docs), "--model", f"ner={tiny_text_models['ner']}"]
        + ["--task", "ner=token-classification", "--window_tokens", "128"]
        + ["--stride_tokens", "16", "--output", str(out)]
    )
    return list(texts), pd.read_parquet(out / "text_entities"), read_errors(out)


@pytest.mark.parametrize("case", sorted(TEXT_CASES))
def test_text_case(text_run, case):
    order, entities, errors = text_run
    row = order.index(case) + 1
    mine = [
        e for e in errors if e["key"] == f"docs.jsonl:row {row}" or f"row {row}:" in e["message"]
    ]
    if case in set(entities.doc_id):
        assert not mine
        got = OK
    else:
        assert len(mine) == 1, mine
        got = dead(mine[0]["stage"], mine[0]["error_type"])
    assert got == TEXT_CASES[case]
    # Documents in = documents with results + dead letters.
    assert len(order) == entities.doc_id.nunique() + len(errors)
    big = entities[entities.doc_id == "one_megabyte_document"]
    assert int(big.n_windows.iloc[0]) > 100


# --------------------------------------------------------------------------------- models

MODEL_CASES = [
    "missing_model",
    "corrupt_pt2",
    "wrong_output_shape",
    "require_gpu_on_cpu",
    "onnx_not_an_image",
    "onnx_not_an_onnx_file",
    "hf_folder_without_weights",
    "segmentation_output_not_a_map",
    "embedding_key_missing",
]


def _slide_args(tmp: Path, shared_data: Path, model: str, *extra: str) -> list[str]:
    manifest = tmp / "one.csv"
    cmu1 = shared_data / "aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"
    manifest.write_text(f"slide_id,uri\ncmu1,{cmu1}\n")
    return [
        "--slides",
        str(manifest),
        "--model",
        f"bad={model}",
        "--patch_px",
        "64",
        "--output",
        str(tmp / "out"),
        "--no_heatmaps",
        *extra,
    ]


@pytest.mark.parametrize("case", MODEL_CASES)
def test_model_case_fails_the_job_at_setup_naming_model_and_cause(
    case, shared_data, tiny_models, tmp_path
):
    import torch

    from pipelines.slide_inference import run
    from tests.models_for_tests import (
        SpatialOutput,
        export_pt2,
        onnx_taking_tokens,
        tiny_vision_folder,
    )

    if torch.cuda.is_available() and case == "require_gpu_on_cpu":
        pytest.skip("this machine has a GPU")
    weightless = tiny_vision_folder(str(tmp_path / "weightless"))
    (tmp_path / "weightless" / "model.safetensors").unlink()
    (tmp_path / "fake.onnx").write_bytes(b"PK\x03\x04 a zip, not an ONNX graph")
    uri, extra, cause = {
        "missing_model": (str(tmp_path / "nope.pt2"), (), "no such file"),
        "corrupt_pt2": (str(tmp_path / "corrupt.pt2"), (), "could not be loaded"),
        "wrong_output_shape": (
            export_pt2(SpatialOutput().eval(), str(tmp_path / "spatial.pt2")),
            (),
            "fails on a 64x64 patch",
        ),
        "require_gpu_on_cpu": (tiny_models["two"], ("--require_gpu",), "no CUDA device"),
        "onnx_not_an_image": (
            onnx_taking_tokens(str(tmp_path / "tokens.onnx")),
            (),
            "not one N x 3 x H x W float image: it takes tokens tensor(int64) ['n', 16]",
        ),
        "onnx_not_an_onnx_file": (str(tmp_path / "fake.onnx"), (), "not an ONNX graph"),
        "hf_folder_without_weights": (weightless, (), "holds no weights"),
        "segmentation_output_not_a_map": (
            tiny_models["two"],
            ("--model_output", "bad=segmentation"),
            "expected (1, n_classes >= 2, h, w) logits",
        ),
        "embedding_key_missing": (
            tiny_vision_folder(str(tmp_path / "vit")),
            ("--model_output", "bad=embedding", "--embedding_key", "bad=features"),
            "--embedding_key bad=features names no output; it has last_hidden_state, pooler_output",
        ),
    }[case]
    (tmp_path / "corrupt.pt2").write_bytes(b"PK\x03\x04 not a torch.export archive" * 100)
    with pytest.raises(Exception) as failure:
        run(_slide_args(tmp_path, shared_data, uri, *extra))
    message = str(failure.value)
    assert "ModelLoadError" in message or "bad" in message
    assert ("'bad'" in message or "--model bad=" in message) and cause in message
    assert uri in message
    assert not list((tmp_path / "out").glob("patch_predictions/*.parquet"))


def test_model_case_nan_output_is_flagged_not_written(shared_data, tmp_path):
    from pipelines.report import counters
    from pipelines.slide_inference import run
    from tests.models_for_tests import NanOnDark, export_pt2

    model = export_pt2(NanOnDark(2).eval(), str(tmp_path / "nan.pt2"))
    result = run(_slide_args(tmp_path, shared_data, model))
    predictions = pd.read_parquet(tmp_path / "out" / "patch_predictions")
    errors = read_errors(tmp_path / "out")
    assert errors and {(e["stage"], e["error_type"]) for e in errors} == {
        ("RunModel/bad", "ModelOutputError")
    }
    assert all(np.isfinite(list(p)).all() for p in predictions.probs)
    c = counters(result)
    assert c["patches_planned"] == len(predictions) + len(errors)


def test_an_embedding_with_nan_is_a_dead_letter_per_patch(shared_data, tmp_path):
    """NaN vectors for dark patches: those patches are dead letters, the rest are rows."""
    from pipelines.report import counters
    from pipelines.slide_inference import run
    from tests.models_for_tests import NanEmbeddingOnDark, export_pt2

    model = export_pt2(NanEmbeddingOnDark().eval(), str(tmp_path / "nan_encoder.pt2"))
    result = run(_slide_args(tmp_path, shared_data, model, "--model_output", "bad=embedding"))
    rows = pd.read_parquet(tmp_path / "out" / "patch_embeddings")
    errors = read_errors(tmp_path / "out")
    assert errors and {(e["stage"], e["error_type"]) for e in errors} == {
        ("RunModel/bad", "ModelOutputError")
    }
    assert len(rows) > 0 and all(np.isfinite(list(v)).all() for v in rows.embedding)
    assert counters(result)["patches_planned"] == len(rows) + len(errors)


def test_the_corpus_has_at_least_thirty_cases():
    n = len(SLIDE_CASES) + len(MANIFEST_CASES) + len(TEXT_CASES) + len(MODEL_CASES) + 1
    assert n >= 30, n


# ------------------------------------------------------------------------------ safe names


def test_a_hostile_slide_id_cannot_write_outside_the_output_folder(
    shared_data, tiny_models, tmp_path
):
    from pipelines.slide_inference import run

    cmu1 = shared_data / "aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"
    manifest = tmp_path / "slides.csv"
    hostile = [
        "../../x",
        "/etc/passwd",
        "a/../../b",
        "tab\there",
        "é" * 250,
    ]  # longer than a file name, under the 256-character id limit
    manifest.write_text(
        "slide_id,uri\n" + "".join(f'"{sid}",{cmu1}\n' for sid in hostile), encoding="utf-8"
    )
    out = tmp_path / "deep" / "er" / "out"
    run(
        ["--slides", str(manifest), "--model", f"two={tiny_models['two']}", "--patch_px", "64"]
        + ["--patch_mpp", "2.0", "--output", str(out)]
    )
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - {manifest}
    assert written and all(out in p.parents for p in written), written
    heatmaps = sorted(p.name for p in (out / "heatmaps").rglob("*.png"))
    assert len(heatmaps) == len(hostile)
    assert all("/" not in n and ".." not in n and len(n) < 140 for n in heatmaps), heatmaps
    summaries = pd.read_parquet(out / "slide_summaries")
    assert sorted(summaries.slide_id) == sorted(hostile)  # the ids themselves are kept intact


@pytest.mark.parametrize("name", ["../x", "a/b", "x y", "", "é", "a" * 65, ".."])
def test_hostile_model_names_are_config_errors(name):
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.options import slide_job_config
    from transforms.core.errors import ConfigError

    with pytest.raises(ConfigError, match="--model"):
        slide_job_config(PipelineOptions(["--slides", "s.csv", "--model", f"{name}=m.pt2"]))
