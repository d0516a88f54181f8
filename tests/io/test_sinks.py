"""Schemas are defined once and both sinks derive from them; names are made safe."""

from __future__ import annotations

import pyarrow as pa

from tests.tables import ALL_TABLES, PATCH_PREDICTIONS
from transforms.io.schemas import SLIDE_SUMMARIES, arrow_schema, bigquery_schema, safe_name


def test_parquet_and_bigquery_schemas_have_the_same_columns_and_modes():
    for table in ALL_TABLES:
        arrow, bq = arrow_schema(table), bigquery_schema(table)["fields"]
        assert arrow.names == [f["name"] for f in bq]
        for field, column in zip(arrow, bq, strict=True):
            assert pa.types.is_list(field.type) == (column["mode"] == "REPEATED")
            assert field.nullable == (column["mode"] != "REQUIRED")


def test_probs_are_a_repeated_float_and_metadata_a_repeated_record():
    arrow = arrow_schema(PATCH_PREDICTIONS)
    assert arrow.field("probs").type == pa.list_(pa.float64())
    bq = {f["name"]: f for f in bigquery_schema(SLIDE_SUMMARIES)["fields"]}
    assert bq["metadata"]["type"] == "RECORD" and bq["metadata"]["mode"] == "REPEATED"
    assert [f["name"] for f in bq["metadata"]["fields"]] == ["key", "value"]


def test_safe_name_keeps_clean_ids_and_neutralises_paths():
    assert safe_name("TCGA-AB-1234_01.svs") == "TCGA-AB-1234_01.svs"
    for hostile in ("../../x", "a/b", "..", "x\x00y", "é" * 300):
        name = safe_name(hostile)
        assert "/" not in name and not name.startswith(".") and len(name) <= 100
    assert safe_name("a/b") != safe_name("a_b")


def test_picture_names_are_one_per_slide_and_model():
    """``a/b`` and ``a_b-c14cddc033`` (the old safe form of ``a/b``) wrote one heatmap, as did
    slide ``s__x`` with model ``tiny`` and slide ``s`` with model ``x__tiny``."""
    from transforms.io.schemas import file_name

    assert safe_name("a/b") == "a_b-c14cddc033"
    pairs = [
        ("a/b", "tiny"),
        ("a_b-c14cddc033", "tiny"),
        ("s__x", "tiny"),
        ("s", "x__tiny"),
        ("s.x", "tiny"),
        ("s", "x"),
        ("S", "x"),
        ("..", "m"),
        ("_", "m"),
        ("x" * 200, "m"),
        ("x" * 199 + "y", "m"),
    ]
    names = [file_name(slide, model, ".png") for slide, model in pairs]
    assert len(set(names)) == len(pairs), names
    assert file_name("slide-1", "tumor", ".png") == "slide-1.tumor.png"  # plain ids stay plain
