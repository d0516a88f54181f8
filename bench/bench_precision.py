"""Reduced precision on this CPU: the pipeline in fp32 against bf16 (the accuracy guard
included), and the bare model in both, on the same patches.

    python -m bench.bench_precision [--patches 400] [--rounds 2]

ResNet-18 (bench/resnet.py) exported with torch.export, 224 px patches from a patch manifest on
the synthetic 10240 px JPEG slide, batch 32. Pipeline runs (``run()`` wall time, everything
included) alternate between precisions; the bare model runs the same normalised batches in
memory with and without a bf16 autocast. Medians of the rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from bench.bench_slides import (
    BATCH,
    OUT,
    export_model,
    grid_boxes_of,
    read_region_loop,
    synthetic_slide,
)


def pipeline_rate(slide, model, boxes, precision: str, tag: str) -> float:  # noqa: ANN001
    from pipelines.report import counters
    from pipelines.slide_inference import run

    patches = OUT / f"{tag}-patches.csv"
    patches.write_text(
        "slide_id,x_px,y_px,size_px\n" + "".join(f"s,{x},{y},{z}\n" for x, y, z in boxes)
    )
    slides = OUT / f"{tag}.csv"
    slides.write_text(f"slide_id,uri\ns,{slide}\n")
    start = time.monotonic()
    result = run(
        ["--slides", str(slides), "--patches", str(patches), "--model", f"m={model}"]
        + ["--precision", f"m={precision}", "--patch_px", "224", "--batch_size", str(BATCH)]
        + ["--output", str(OUT / f"results-{tag}"), "--run_id", tag, "--no_heatmaps"]
    )
    return counters(result)["patches_inferred"] / (time.monotonic() - start)


def bare_rate(model, pixels: np.ndarray, precision: str) -> float:  # noqa: ANN001
    import torch

    from transforms.models.spec import IMAGENET_MEAN, IMAGENET_STD
    from transforms.models.torch_models import TorchModel

    net = TorchModel(torch.export.load(str(model)).module(), "cpu", IMAGENET_MEAN, IMAGENET_STD)
    net.precision = precision
    batches = [list(pixels[i : i + BATCH]) for i in range(0, len(pixels), BATCH)]
    net.forward(batches[0][:2])
    start = time.perf_counter()
    for batch in batches:
        net.forward(batch)
    return len(pixels) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patches", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from bench.resnet import ResNet18

    slide = synthetic_slide("throughput", 10240, 10240)
    model = export_model("resnet18", ResNet18(), 224)
    boxes = grid_boxes_of(slide, 224, args.patches)
    _, pixels = read_region_loop(slide, boxes)
    runs: dict[str, list[float]] = {p: [] for p in ("fp32", "bf16")}
    bare: dict[str, list[float]] = {p: [] for p in ("fp32", "bf16")}
    for i in range(args.rounds):
        for precision in ("fp32", "bf16"):
            runs[precision].append(
                pipeline_rate(slide, model, boxes, precision, f"p{i}{precision}")
            )
            bare[precision].append(bare_rate(model, pixels, precision))
    med = {k: statistics.median(v) for k, v in runs.items()}
    bare_med = {k: statistics.median(v) for k, v in bare.items()}
    print(
        json.dumps(
            {
                "patches": len(boxes),
                "pipeline_patches_per_s": {k: [round(x, 1) for x in v] for k, v in runs.items()},
                "bare_patches_per_s": {k: [round(x, 1) for x in v] for k, v in bare.items()},
                "pipeline_bf16_over_fp32": round(med["bf16"] / med["fp32"], 2),
                "bare_bf16_over_fp32": round(bare_med["bf16"] / bare_med["fp32"], 2),
                "pipeline_over_bare": {k: round(med[k] / bare_med[k], 2) for k in med},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
