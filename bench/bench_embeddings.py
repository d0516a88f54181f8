"""Patch embeddings from a ViT-S/16-sized encoder: the pipeline against the bare model on the
same patches, and the bytes each embedding costs in Parquet.

    python -m bench.bench_embeddings [--patches 400] [--rounds 2]

The encoder is a Hugging Face ``ViTModel`` with ViT-S/16's shape (384 wide, 12 layers, 6 heads,
224 px, 16 px patches: the size of UNI's and Phikon's backbones' smaller siblings), random
weights, saved with ``save_pretrained`` and run from that folder by the pipeline
(``--model_output enc=embedding``). The bare model is the same ``AutoModel`` on normalised
batches already in memory. Pipeline runs alternate with bare runs and medians are compared (this
2-core VM drifts by 10-20% from minute to minute). Output size: the ``patch_embeddings`` Parquet
files of one run, per patch and per 10,000 patches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from bench.bench_slides import BATCH, OUT, grid_boxes_of, read_region_loop, synthetic_slide

SHAPE = {
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "intermediate_size": 1536,
    "image_size": 224,
    "patch_size": 16,
}


def encoder_folder() -> str:
    import transformers

    folder = OUT / "vit_s16"
    if not (folder / "config.json").exists():
        model = transformers.ViTModel(transformers.ViTConfig(**SHAPE), add_pooling_layer=False)
        model.eval().save_pretrained(folder)
    return str(folder)


def bare_rate(folder: str, pixels: np.ndarray) -> float:
    """Embeddings/s of the encoder's forward alone, normalised batches in memory."""
    import torch
    import transformers

    from transforms.models.spec import IMAGENET_MEAN, IMAGENET_STD
    from transforms.models.torch_models import LoadedModel, preprocess

    net = transformers.AutoModel.from_pretrained(folder, local_files_only=True).eval()
    on_cpu = LoadedModel("cpu", IMAGENET_MEAN, IMAGENET_STD)
    batches = [
        preprocess(list(pixels[i : i + BATCH]), on_cpu) for i in range(0, len(pixels), BATCH)
    ]
    with torch.inference_mode():
        net(pixel_values=batches[0][:2])
        start = time.perf_counter()
        for batch in batches:
            net(pixel_values=batch).last_hidden_state[:, 0]
    return len(pixels) / (time.perf_counter() - start)


def pipeline_run(folder: str, slide, n: int, tag: str) -> tuple[float, int, int]:  # noqa: ANN001
    """(embeddings/s over run() wall time, rows, Parquet bytes) of one pipeline run."""
    from pipelines.report import counters
    from pipelines.slide_inference import run

    patches = OUT / f"{tag}-patches.csv"
    boxes = grid_boxes_of(slide, 224, n)
    patches.write_text(
        "slide_id,x_px,y_px,size_px\n" + "".join(f"s,{x},{y},{size}\n" for x, y, size in boxes)
    )
    slides = OUT / f"{tag}.csv"
    slides.write_text(f"slide_id,uri\ns,{slide}\n")
    out = OUT / f"results-{tag}"
    start = time.monotonic()
    result = run(
        ["--slides", str(slides), "--patches", str(patches), "--model", f"enc={folder}"]
        + ["--model_output", "enc=embedding", "--embedding_key", "enc=cls", "--patch_px", "224"]
        + ["--batch_size", str(BATCH), "--output", str(out), "--run_id", tag, "--no_heatmaps"]
    )
    wall = time.monotonic() - start
    rows = counters(result)["patches_inferred"]
    size = sum(f.stat().st_size for f in (out / "patch_embeddings").glob(f"{tag}*.parquet"))
    return rows / wall, rows, size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patches", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    folder = encoder_folder()
    slide = synthetic_slide("throughput", 10240, 10240)
    _, pixels = read_region_loop(slide, grid_boxes_of(slide, 224, args.patches))
    bare, piped = [bare_rate(folder, pixels)], []
    for i in range(args.rounds):
        rate, rows, size = pipeline_run(folder, slide, args.patches, f"embed{i}")
        piped.append(rate)
        bare.append(bare_rate(folder, pixels))
    print(
        json.dumps(
            {
                "patches": rows,
                "pipeline_embeddings_per_s": round(statistics.median(piped), 2),
                "bare_model_embeddings_per_s": round(statistics.median(bare), 2),
                "pipeline_runs": [round(r, 2) for r in piped],
                "bare_runs": [round(b, 2) for b in bare],
                "pipeline_over_bare": round(statistics.median(piped) / statistics.median(bare), 3),
                "parquet_bytes_per_patch": round(size / rows, 1),
                "parquet_mb_per_10k_patches": round(size / rows * 10_000 / 1e6, 2),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
