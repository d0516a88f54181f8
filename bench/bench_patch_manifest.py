"""A patch manifest of up to 10^6 rows for ONE slide: planning time and memory.

    python -m bench.bench_patch_manifest pipeline [--rows 10000,100000,1000000]
    python -m bench.bench_patch_manifest block [--rows 1000000]

pipeline: in a child process per size, ReadManifest (a CSV of N rows, 64 px boxes at random
places on one 10240 x 10240 synthetic SVS) -> PlanPatches on the local FnApiRunner, units
counted and dropped. Wall time and peak RSS (``ru_maxrss``). The local runner keeps every
PCollection in memory between stages, so this RSS grows with N by design of the runner; on
Dataflow shuffles are on disk and a group's values are streamed.
block: the planning step's own working set (tracemalloc peak) for N boxes in ONE block, streamed
as a runner streams a group's values, against holding them in a sorted list as the earlier
per-slide design did.
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc

import numpy as np

from bench.bench_slides import OUT, run_child, synthetic_slide

SIDE = 10240

_CHILD = """
import json, resource, sys, time
import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from pipelines.report import counters
from transforms.slides.geometry import PatchingConfig
from transforms.io.manifests import ReadManifest
from transforms.slides.manifest_rows import PATCH_ROWS, SLIDE_ROWS
from transforms.slides.plan_manifest import PlanManifestPatches

slides, patches = sys.argv[1:3]
t = time.monotonic()
p = beam.Pipeline(runner=FnApiRunner())
_ = {
    "slides": (p | "S" >> ReadManifest(slides, SLIDE_ROWS))["rows"],
    "patches": (p | "P" >> ReadManifest(patches, PATCH_ROWS))["rows"],
} | PlanManifestPatches([PatchingConfig(patch_px=64, patch_mpp=0.5)])
result = p.run()
result.wait_until_finish()
wall = time.monotonic() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
c = counters(result)
print("BENCH " + json.dumps({"wall_s": round(wall, 1), "rss_mb": rss // 1024,
                             "patches_planned": c.get("patches_planned")}))
"""


def manifest(rows: int) -> tuple[str, str]:
    slide = synthetic_slide("manifest-10240", SIDE, SIDE)
    slides = OUT / "manifest-slides.csv"
    slides.write_text(f"slide_id,uri\nbig,{slide}\n")
    patches = OUT / f"manifest-{rows}.csv"
    if not patches.exists():
        rng = np.random.default_rng(rows)
        xy = rng.integers(0, SIDE - 64, size=(rows, 2))
        with patches.open("w") as f:
            f.write("slide_id,x_px,y_px,size_px,level\n")
            f.writelines(f"big,{x},{y},64,0\n" for x, y in xy)
    return str(slides), str(patches)


def pipeline(sizes: list[int]) -> None:
    for rows in sizes:
        figures = run_child(_CHILD, list(manifest(rows)))
        print(json.dumps({"rows": rows, **figures}), flush=True)


def block(rows: int) -> None:
    from transforms.slides.geometry import PatchBox, PatchingConfig, SlideGeometry
    from transforms.slides.plan_manifest import SlideStatus, _BlockUnits

    geom = SlideGeometry(SIDE, SIDE, ((SIDE, SIDE),), (1.0,), ((256, 256),), 0.5)
    status = {"big": SlideStatus({"slide_id": "big", "uri": "big.svs"}, geom, 1.0)}
    cfg = PatchingConfig(patch_px=64, patch_mpp=0.5)

    def boxes():
        for i in range(rows):
            yield PatchBox(i * 7 % 1980, i * 13 % 1980, 64, 0)

    tracemalloc.start()
    t, patches = time.monotonic(), 0
    for unit in _BlockUnits(cfg).process((("big", 0, 0, 0), boxes()), status):
        patches += len(unit.patches)
    streamed = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    wall = time.monotonic() - t
    tracemalloc.start()
    held = sorted(boxes(), key=lambda b: (b.level, b.y_px, b.x_px))
    listed = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del held
    print(
        json.dumps(
            {
                "rows": rows,
                "patches_in_units": patches,
                "streamed_peak_mb": round(streamed / 1e6, 2),
                "sorted_list_peak_mb": round(listed / 1e6, 1),
                "wall_s_under_tracemalloc": round(wall, 1),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("pipeline", "block"))
    parser.add_argument("--rows", default=None)
    args = parser.parse_args()
    if args.mode == "pipeline":
        pipeline([int(r) for r in (args.rows or "10000,100000,1000000").split(",")])
    else:
        block(int(args.rows or 1_000_000))


if __name__ == "__main__":
    main()
