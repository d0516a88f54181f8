"""Slide pipeline benchmark: throughput against the bare model, and peak RSS against patch count.

    python -m bench.bench_slides throughput [--patches 2025]
    python -m bench.bench_slides rss [--mpps 5,1.6,0.5]

throughput: in one process, on the same patches of one synthetic JPEG slide, ResNet-18 at 224 px,
batch 32:
  * the whole slide pipeline on the local runner (run() wall time: start-up, model load, planning,
    reads, inference, summaries, heatmap and Parquet writes), alternating with bare-model runs,
    medians reported (this shared 2-core VM drifts by 10-20% from minute to minute);
  * the bare model: forward only, on normalised patches already in memory;
  * a per-patch ``read_region`` loop, and our tile-aligned block reads, without Beam.
rss: the pipeline's peak RSS (a child process's ru_maxrss) on one 10240 x 10240 slide cut into
about 1k, 10k and 100k patches of 32 px (patch MPP 5, 1.6, 0.5) with a tiny CNN, so the figure is
about the pipeline, not the model or the slide.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out"
REPO = Path(__file__).resolve().parents[1]
BATCH = 32


def synthetic_slide(name: str, width: int, height: int) -> Path:
    """A cached synthetic H&E-like SVS of the given size, 0.5 µm/px, 256 px JPEG tiles."""
    from demo.synthetic_slide import make_slide, write_svs

    path = OUT / f"{name}.svs"
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        write_svs(str(path), make_slide(width, height, seed=7).rgb, mpp=0.5)
    return path


def export_model(name: str, net, patch_px: int) -> Path:  # noqa: ANN001
    import torch

    path = OUT / f"{name}.pt2"
    if not path.exists():
        example = torch.zeros(2, 3, patch_px, patch_px)
        dims = ({0: torch.export.Dim("batch", min=1, max=4096)},)
        torch.export.save(torch.export.export(net.eval(), (example,), dynamic_shapes=dims), path)
    return path


def pipeline_args(slide: Path, model: Path, patch_px: int, patch_mpp: float, tag: str) -> list:
    """The CLI flags of one benchmark run over one slide (grid, no tissue filter)."""
    manifest = OUT / f"{tag}.csv"
    manifest.write_text(f"slide_id,uri\n{tag},{slide}\n")
    return [
        "--slides",
        str(manifest),
        "--model",
        f"m={model}",
        "--patch_px",
        str(patch_px),
        "--patch_mpp",
        str(patch_mpp),
        "--min_tissue",
        "0",
        "--batch_size",
        str(BATCH),
        "--output",
        str(OUT / f"results-{tag}"),
        "--run_id",
        tag,
        "--progress_interval_s",
        "30",
    ]


def run_pipeline(slide: Path, model: Path, patch_px: int, tag: str, patch_mpp: float) -> dict:
    """Run the CLI in a child process; return its counters, wall time and peak RSS."""
    code = (
        "import json, resource, sys, time\n"
        "from pipelines.slide_inference import run\n"
        "from pipelines.report import counters\n"
        "t = time.monotonic(); result = run(sys.argv[1:]); wall = time.monotonic() - t\n"
        "rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print('BENCH ' + json.dumps({'wall_s': wall, 'rss_kb': rss, **counters(result)}))\n"
    )
    return run_child(code, pipeline_args(slide, model, patch_px, patch_mpp, tag))


def run_child(code: str, args: list[str]) -> dict:
    """Run ``code`` in a fresh Python with ``args``; return the JSON it prints after ``BENCH ``."""
    env = {**os.environ, "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:9"}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH "))
    return json.loads(line[6:])


def run_pipeline_here(slide: Path, model: Path, patch_px: int, tag: str) -> dict:
    """Run the pipeline in this process; return its counters and ``run()`` wall time."""
    from pipelines.report import counters
    from pipelines.slide_inference import run

    t = time.monotonic()
    result = run(pipeline_args(slide, model, patch_px, 0.5, tag))
    return {"wall_s": time.monotonic() - t, **counters(result)}


def grid_boxes_of(slide: Path, patch_px: int, limit: int) -> list[tuple[int, int, int]]:
    from transforms.slides.geometry import PatchingConfig, grid_boxes, grid_spec
    from transforms.slides.reader import open_slide, slide_geometry

    geom = slide_geometry(open_slide(str(slide)))
    spec = grid_spec(geom, PatchingConfig(patch_px=patch_px, patch_mpp=0.5, min_tissue=0))
    # whole patches only, as the read loops and the anchors (tiatoolbox) cut them
    boxes = grid_boxes(geom, spec, whole_only=True)
    return [(b.x_px, b.y_px, b.size_px) for b in boxes][:limit]


def read_region_loop(slide: Path, boxes: list[tuple[int, int, int]]) -> tuple[float, np.ndarray]:
    """Patches/s of one ``read_region`` per patch; also returns the patches."""
    import tiffslide

    s = tiffslide.TiffSlide(str(slide))
    t = time.perf_counter()
    pixels = np.stack([s.read_region((x, y), 0, (w, w), as_array=True) for x, y, w in boxes])
    return len(boxes) / (time.perf_counter() - t), pixels


def block_reads(slide: Path, patch_px: int, n: int) -> float:
    """Patches/s of this project's tile-aligned work-unit reads, without Beam."""
    from transforms.slides.geometry import PatchingConfig, grid_boxes, grid_spec, work_units
    from transforms.slides.read_patches import cut_patch
    from transforms.slides.reader import open_slide, read_level_region, slide_geometry

    s = open_slide(str(slide))
    geom = slide_geometry(s)
    cfg = PatchingConfig(patch_px=patch_px, patch_mpp=0.5, min_tissue=0)
    boxes = list(grid_boxes(geom, grid_spec(geom, cfg), whole_only=True))[:n]
    t = time.perf_counter()
    count = 0
    for unit in work_units("b", str(slide), geom, boxes, cfg, 0.5):
        region = read_level_region(s, unit.level, *unit.region_lvl)
        for b in unit.patches:
            cut_patch(
                region,
                b.x_px - unit.region_lvl[0],
                b.y_px - unit.region_lvl[1],
                b.size_px,
                patch_px,
            )
            count += 1
    return count / (time.perf_counter() - t)


def bare_model(model: Path, pixels: np.ndarray) -> float:
    """Patches/s of the model's forward pass alone, on normalised batches already in memory."""
    import torch

    from transforms.models.spec import IMAGENET_MEAN, IMAGENET_STD
    from transforms.models.torch_models import LoadedModel, preprocess

    net = torch.export.load(str(model)).module()
    on_cpu = LoadedModel("cpu", IMAGENET_MEAN, IMAGENET_STD)
    batches = [
        preprocess(list(pixels[i : i + BATCH]), on_cpu) for i in range(0, len(pixels), BATCH)
    ]
    with torch.inference_mode():
        net(batches[0])
        t = time.perf_counter()
        for batch in batches:
            net(batch)
    return len(pixels) / (time.perf_counter() - t)


def throughput(n_patches: int, rounds: int) -> None:
    from bench.resnet import ResNet18

    slide = synthetic_slide("throughput", 10240, 10240)
    model = export_model("resnet18", ResNet18(), 224)
    boxes = grid_boxes_of(slide, 224, n_patches)
    read_rate, pixels = read_region_loop(slide, boxes)
    block_rate = block_reads(slide, 224, len(boxes))
    # Same process, bare model before and after the pipeline: this machine's speed drifts by
    # 10-20% between minutes, and a child process would add its own start-up to one side only.
    bare, pipe_rates = [bare_model(model, pixels)], []
    for i in range(rounds):
        pipe = run_pipeline_here(slide, model, 224, f"throughput{i}")
        pipe_rates.append(pipe["patches_inferred"] / pipe["wall_s"])
        bare.append(bare_model(model, pixels))
    n = pipe["patches_inferred"]
    pipe_rate = statistics.median(pipe_rates)
    bare_rate = statistics.median(bare)
    print(
        json.dumps(
            {
                "patches": n,
                "pipeline_patches_per_s": round(pipe_rate, 2),
                "bare_model_patches_per_s": round(bare_rate, 2),
                "bare_model_runs": [round(b, 2) for b in bare],
                "pipeline_runs": [round(r, 2) for r in pipe_rates],
                "read_region_loop_patches_per_s": round(read_rate, 1),
                "block_reads_patches_per_s": round(block_rate, 1),
                "pipeline_over_bare_model": round(pipe_rate / bare_rate, 3),
                "block_reads_over_read_region": round(block_rate / read_rate, 2),
                "last_pipeline_wall_s": round(pipe["wall_s"], 1),
            },
            indent=1,
        )
    )


def rss(mpps: list[float]) -> None:
    """Peak RSS on ONE slide at patch MPPs that give about 1k, 10k and 100k patches, so the slide,
    its mask and its thumbnail are the same and only the patch count changes."""
    import torch.nn as nn

    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)
    )
    model = export_model("tiny32", net, 32)
    slide = synthetic_slide("rss-10240", 10240, 10240)
    rows = []
    for mpp in mpps:
        result = run_pipeline(slide, model, 32, f"rss-{mpp:g}".replace(".", "p"), patch_mpp=mpp)
        rows.append(
            {
                "patch_mpp": mpp,
                "patches": result["patches_inferred"],
                "wall_s": round(result["wall_s"], 1),
                "peak_rss_mb": round(result["rss_kb"] / 1024),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    peaks = [r["peak_rss_mb"] for r in rows]
    print(json.dumps({"rss_spread_vs_smallest": round(max(peaks) / peaks[0] - 1, 3)}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=("throughput", "rss"))
    parser.add_argument("--patches", type=int, default=2025)
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="pipeline runs, each followed by a bare-model run; medians are reported",
    )
    parser.add_argument(
        "--mpps",
        default="5,1.6,0.5",
        help="patch MPPs for rss: ~1k, ~10k and ~100k patches of 32 px",
    )
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if args.mode == "throughput":
        throughput(args.patches, args.rounds)
    else:
        rss([float(m) for m in args.mpps.split(",")])


if __name__ == "__main__":
    main()
