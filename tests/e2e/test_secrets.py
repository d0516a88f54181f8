"""A secret planted in a slide's URI (a signed-URL token in its name) and in a manifest column
appears in no output: no table, dead letter, run record, report, picture or file name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.pipeline, pytest.mark.shared_data]
SECRET = "hunter2secret"


def test_a_planted_secret_reaches_no_output(cmu1, tiny_models, tmp_path):
    from pipelines.slide_inference import run

    slides = tmp_path / "slides"
    slides.mkdir()
    signed = slides / f"cmu1.svs?token={SECRET}"  # a legal file name holding a signed-URL token
    shutil.copy(cmu1, signed)
    manifest = tmp_path / "slides.csv"
    manifest.write_text(
        "slide_id,uri,case_id,note\n"
        f"good,{signed},c1,https://alice:{SECRET}@example.org/x\n"
        f"missing,dicomweb+http://alice:{SECRET}@127.0.0.1:9/dicom-web/studies/1/series/2,c1,\n"
    )
    out = tmp_path / "out"
    run(
        ["--slides", str(manifest), "--model", f"two={tiny_models['two']}", "--patch_px", "64"]
        + ["--group_by", "case_id", "--output", str(out), "--qupath_min_prob", "0"]
    )
    texts = []
    for path in sorted(Path(out).rglob("*")):
        assert SECRET not in path.name, path
        if path.suffix == ".parquet":
            texts.append(pd.read_parquet(path).to_json(date_format="iso"))
        elif path.is_file() and path.suffix in (".jsonl", ".html", ".geojson", ".json"):
            texts.append(path.read_text())
    assert len(texts) >= 6  # predictions, summaries, cases, errors, runs, report, GeoJSON
    leaks = [
        text[text.index(SECRET) - 80 : text.index(SECRET) + 20] for text in texts if SECRET in text
    ]
    assert leaks == []
    summary = pd.read_parquet(out / "slide_summaries")
    assert summary.uri.iloc[0].endswith("cmu1.svs?token=REDACTED")
