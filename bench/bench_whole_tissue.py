"""What the whole-tissue outputs cost per slide: stitching, region tracing and the viewer's tiles.

    python -m bench.bench_whole_tissue [--side 16384] [--repeats 2]

On one synthetic 16384 x 16384 px H&E-like slide (0.5 µm/px, 8 x 8 mm), a small segmentation
net (3 classes, its class map at its input's size) runs at 256 px, 1 µm/px: 1,024 patches and a
stitched mask of 8192 x 8192. Each run is a fresh process (its peak RSS is its own), alternating:
  * ``--no_heatmaps``: the tables only (no stitching, regions, viewer or pictures);
  * pictures on: also the stitched mask (OME-TIFF), its class regions (GeoJSON) and the viewer
    (DZI tiles to 2 µm/px, overlays, the page).
Reported: medians of wall time and peak RSS, the bytes each output folder holds, and, timed alone
in this process on the same slide and mask, the DZI cut and the region tracing. Memory must stay
bounded: the mask as one uint8 array would be 64 MiB, the slide as RGB 768 MiB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from bench.bench_slides import OUT, run_child, synthetic_slide

CHILD = """
import json, resource, sys, time
from pipelines.slide_inference import run
t = time.monotonic()
run(sys.argv[1:])
wall = time.monotonic() - t
print("BENCH " + json.dumps({"wall_s": wall,
      "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def segmentation_model() -> Path:
    import torch
    from torch import nn

    from bench.bench_slides import export_model

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    return export_model("segnet3", net, 256)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    slide = synthetic_slide(f"whole-{args.side}", args.side, args.side)
    model = segmentation_model()
    manifest = OUT / "whole.csv"
    manifest.write_text(f"slide_id,uri\nwhole,{slide}\n")
    runs: dict[str, list[dict]] = {"tables only": [], "pictures on": []}
    for i in range(args.repeats):
        for name, extra in (("tables only", ["--no_heatmaps"]), ("pictures on", [])):
            out = OUT / f"whole-{i}-{name.split()[0]}"
            shutil.rmtree(out, ignore_errors=True)  # run ids are claimed once per folder
            flags = [
                *("--slides", str(manifest), "--model", f"seg={model}"),
                *("--model_output", "seg=segmentation", "--class_names", "seg=a,b,c"),
                *("--patch_px", "256", "--patch_mpp", "1.0", "--min_tissue", "0.05"),
                *("--batch_size", "16", "--output", str(out), "--run_id", f"w{i}{name[0]}"),
                *("--progress_interval_s", "60", *extra),
            ]
            result = run_child(CHILD, flags)
            result["bytes"] = {
                folder.name: folder_bytes(folder) for folder in out.iterdir() if folder.is_dir()
            }
            runs[name].append(result)
            print(name, json.dumps(result))
    summary = {
        name: {
            "wall_s": statistics.median(r["wall_s"] for r in rs),
            "rss_mib": statistics.median(r["rss_mib"] for r in rs),
            "bytes": rs[-1]["bytes"],
        }
        for name, rs in runs.items()
    }
    print(json.dumps(summary, indent=1))
    alone(slide, OUT / f"whole-{args.repeats - 1}-pictures")


def alone(slide: Path, out: Path) -> None:
    """The DZI cut and the region tracing, timed alone on the run's slide and mask."""
    import tempfile

    import numpy as np
    import pandas as pd

    from transforms.slides.masks import BAND_ROWS, Band, MaskGrid
    from transforms.slides.regions import class_regions
    from transforms.slides.viewer import cut_dzi

    with tempfile.TemporaryDirectory() as tmp:
        t = time.monotonic()
        image = cut_dzi(str(slide), tmp, "s", 2.0)
        print(
            f"DZI cut alone: {time.monotonic() - t:.1f} s, {image.tiles} tiles, "
            f"{image.bytes / 1e6:.1f} MB, {image.width} x {image.height} px"
        )
    [summary] = pd.read_parquet(out / "slide_summaries").to_dict("records")
    import zlib

    import tiffslide

    mask = tiffslide.TiffSlide(summary["mask_uri"])
    w, h = mask.dimensions
    grid = MaskGrid.of((2 * w, 2 * h), 2.0, 2.0, 0.5)
    bands = []
    for i, y in enumerate(range(0, h, BAND_ROWS)):
        rows = np.asarray(mask.read_region((0, y), 0, (w, min(BAND_ROWS, h - y)), as_array=True))
        bands.append(Band(i, zlib.compress(rows[..., 0].tobytes(), 1), np.zeros(256)))
    t = time.monotonic()
    n = sum(1 for _ in class_regions(grid, bands, 3, min_px2=100 / 0.5**2))
    print(f"region tracing alone: {time.monotonic() - t:.1f} s, {n} regions from {w} x {h}")


if __name__ == "__main__":
    main()
