"""Manifest reading and validation: bad rows are reported with row, column and reason."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from transforms.core.errors import ManifestError
from transforms.io.manifests import read_rows, resolve_uri
from transforms.slides.manifest_rows import patch_row as validate_patch_row
from transforms.slides.manifest_rows import slide_row as validate_slide_row


def test_slide_row_keeps_extra_columns_as_metadata_and_resolves_relative_uris():
    row = validate_slide_row(
        {"slide_id": " s1 ", "uri": "slides/a.svs", "mpp": "0.25", "case_id": "c7", "_row": 3},
        "/data/m/slides.csv",
    )
    assert row == {
        "slide_id": "s1",
        "uri": "/data/m/slides/a.svs",
        "mpp": 0.25,
        "tissue_method": None,
        "metadata": {"case_id": "c7"},
        "row": 3,
    }
    assert resolve_uri("gs://b/x.svs", "/data/m.csv") == "gs://b/x.svs"
    assert resolve_uri("x.svs", "gs://b/manifests/m.csv") == "gs://b/manifests/x.svs"


@pytest.mark.parametrize(
    "row, column",
    [
        ({"uri": "a.svs"}, "slide_id"),
        ({"slide_id": "s", "uri": ""}, "uri"),
        ({"slide_id": "s", "uri": "a.svs", "mpp": "fast"}, "mpp"),
        ({"slide_id": "s", "uri": "a.svs", "mpp": "-1"}, "mpp"),
    ],
)
def test_bad_slide_rows_name_the_column(row, column):
    with pytest.raises(ManifestError, match=column):
        validate_slide_row({**row, "_row": 1})


@pytest.mark.parametrize(
    ("mpp", "hint"),
    [
        ("0.000499", "written in mm per pixel"),  # 0.499 µm/px typed in mm
        ("1e-9", "outside the plausible"),
        ("0.01", "outside the plausible"),
        ("250", "written in nm per pixel"),
    ],
)
def test_an_implausible_manifest_mpp_is_refused_by_the_slides_one_rule(mpp, hint):
    """The rule that treats a file's mpp outside 0.05-50 µm/px as missing refuses a manifest's
    too (0.000499 used to run and find no tissue), and says the likely unit mistake."""
    with pytest.raises(ManifestError, match=f"column 'mpp' .*{hint}"):
        validate_slide_row({"slide_id": "s", "uri": "a.svs", "mpp": mpp, "_row": 1})
    assert validate_slide_row({"slide_id": "s", "uri": "a.svs", "mpp": "0.05", "_row": 1})


@pytest.mark.parametrize("cell", ["0_5", "1_0", "0.5x", "half", "1,5"])
def test_manifest_numbers_parse_strictly(cell):
    """Python's float() reads "0_5" as 5 and "1_0" as 10; a manifest cell must not."""
    with pytest.raises(ManifestError, match="x_px.*must be a number"):
        validate_patch_row({"slide_id": "s", "x_px": cell, "y_px": 0, "size_px": 8, "_row": 1})


@pytest.mark.parametrize(
    "row, column",
    [
        ({"slide_id": "s", "y_px": 0, "size_px": 10}, "x_px"),
        ({"slide_id": "s", "x_px": "ten", "y_px": 0, "size_px": 10}, "x_px"),
        ({"slide_id": "s", "x_px": math.nan, "y_px": 0, "size_px": 10}, "x_px"),
        ({"slide_id": "s", "x_px": 0, "y_px": -5, "size_px": 10}, "y_px"),
        ({"slide_id": "s", "x_px": 0, "y_px": 0, "size_px": 10.5}, "size_px"),
        ({"slide_id": "s", "x_px": 0, "y_px": 0, "size_px": 0}, "size_px"),
        ({"slide_id": "s", "x_px": 0, "y_px": 0, "size_px": 8, "level": "top"}, "level"),
    ],
)
def test_bad_patch_rows_name_the_column(row, column):
    with pytest.raises(ManifestError, match=column):
        validate_patch_row({**row, "_row": 1})


def test_patch_row_accepts_integral_floats_and_strings():
    row = validate_patch_row(
        {"slide_id": "s", "x_px": "12", "y_px": 4.0, "size_px": " 8 ", "_row": 2}
    )
    assert row == {"slide_id": "s", "x_px": 12, "y_px": 4, "size_px": 8, "level": 0, "row": 2}


def test_csv_with_bom_and_crlf_reads_clean_column_names(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes("\ufeffslide_id,uri\r\na,x.svs\r\nb,y.svs\r\n".encode())
    rows = list(read_rows(str(path)))
    assert [(r["slide_id"], r["uri"], r["_row"]) for r in rows] == [
        ("a", "x.svs", 1),
        ("b", "y.svs", 2),
    ]


def test_jsonl_bad_lines_become_errors_and_good_lines_survive(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(
        json.dumps({"slide_id": "a", "uri": "x"})
        + "\n{oops\n[1,2]\n\n"
        + json.dumps({"slide_id": "b", "uri": "y"})
        + "\n"
    )
    out = list(read_rows(str(path)))
    assert [r["slide_id"] for r in out if isinstance(r, dict)] == ["a", "b"]
    errors = [r for r in out if isinstance(r, ManifestError)]
    assert len(errors) == 2 and "row 2" in str(errors[0]) and "row 3" in str(errors[1])


def test_parquet_with_wrong_types_fails_per_row_not_per_file(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(
        pa.table(
            {"slide_id": ["a", "a"], "x_px": ["10", "left"], "y_px": [0, 0], "size_px": [8, 8]}
        ),
        path,
    )
    rows = list(read_rows(str(path)))
    assert validate_patch_row(rows[0])["x_px"] == 10
    with pytest.raises(ManifestError, match="x_px"):
        validate_patch_row(rows[1])


def test_unknown_manifest_type_is_a_manifest_error(tmp_path):
    path = tmp_path / "m.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(ManifestError, match=".xlsx"):
        list(read_rows(str(path)))
