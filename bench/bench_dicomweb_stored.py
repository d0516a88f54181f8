"""DICOMweb frames fetched as stored: the JPEG 2000 and uncompressed dev slides, read from a real
Orthanc and from their local files by the whole slide pipeline, give the same rows; and what
each read took from its source, per patch.

    python -m bench.bench_dicomweb_stored

The JPEG 2000 slide is a lossless re-encoding of ``dicom_wsi2dcm_raw`` (no JPEG 2000 DICOM ships
in ../shared); its first frames a store asked for as JPEG answered 500 before frames were
fetched as stored. Prints, per slide and source: patches, bytes_read, bytes per patch, and the
largest probability difference from the local file's rows.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from tests.dicomweb.j2k import jpeg2000_copy
from tests.models_for_tests import export_pt2, tiny_net

RAW = Path("../shared/data/dicom_wsi2dcm_raw/wsi2dcm_raw.dcm")


def run_one(tmp: Path, slide_id: str, uri: str, model: str) -> tuple[pd.DataFrame, dict]:
    from pipelines.report import counters
    from pipelines.slide_inference import run

    folder = tmp / slide_id
    folder.mkdir()
    (folder / "slides.csv").write_text(f"slide_id,uri\n{slide_id},{uri}\n")
    result = run(
        ["--slides", str(folder / "slides.csv"), "--model", f"m={model}", "--patch_level", "0"]
        + ["--patch_px", "64", "--min_tissue", "0", "--output", str(folder / "out")]
        + ["--no_heatmaps", "--progress_interval_s", "600"]
    )
    rows = pd.read_parquet(folder / "out" / "patch_predictions").sort_values(["y_px", "x_px"])
    return rows, counters(result)


def main() -> None:
    import pydicom

    from localgcp.orthanc import Orthanc

    tmp = Path(tempfile.mkdtemp(prefix="bench-dicomweb-"))
    model = export_pt2(tiny_net(2), str(tmp / "m.pt2"))
    files = {"raw": RAW.resolve(), "j2k": jpeg2000_copy(RAW, tmp / "j2k.dcm")}
    lines = []
    with Orthanc(tmp / "orthanc") as server:
        for name, path in files.items():
            server.upload(path)
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            web = server.series_uri(ds.StudyInstanceUID, ds.SeriesInstanceUID)
            syntax = ds.file_meta.TransferSyntaxUID
            local, local_counts = run_one(tmp, f"file_{name}", str(path), model)
            remote, remote_counts = run_one(tmp, f"web_{name}", web, model)
            same_boxes = (
                local[["x_px", "y_px", "size_px"]].to_numpy().tolist()
                == remote[["x_px", "y_px", "size_px"]].to_numpy().tolist()
            )
            diff = max(
                abs(a - b)
                for x, y in zip(local.probs, remote.probs, strict=True)
                for a, b in zip(x, y, strict=True)
            )
            for source, rows, counted in (
                ("file", local, local_counts),
                ("DICOMweb", remote, remote_counts),
            ):
                n, read = len(rows), counted["bytes_read"]
                lines.append(
                    f"| {name} ({syntax.name}) | {source} | {n} | {read:,} | {read / n:,.0f} | "
                    + (f"{diff:.1e} (boxes equal: {same_boxes})" if source == "DICOMweb" else "–")
                    + " |"
                )
    print("| slide | source | patches | bytes_read | bytes per patch | max prob diff vs file |")
    print("|---|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
