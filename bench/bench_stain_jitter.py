"""How much stain normalisation steadies a model's class areas across stain variation.

    python -m bench.bench_stain_jitter [--copies 5] [--jitter 0.15] [--method macenko]

Five stain-jittered copies of CMU-1-Small-Region are made by perturbing its H&E stain basis:
each optical-density vector's components and each stain's concentrations are scaled by factors
drawn uniformly from 1 ± ``--jitter`` (the residual optical density off the H&E plane is kept),
and each copy is written as an Aperio-style pyramid at the slide's own mpp. The real lavlab-shell
segmentation net (``../shared/models``, with its recipe) runs over all copies twice in one
pipeline run each: without normalisation, and with ``--model_stain shell=METHOD``. Printed: each
class's area per copy and its spread (max - min) both ways, and the spread's reduction.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CMU1 = SHARED / "data" / "aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"
MODEL = SHARED / "models" / "lavlab_shell_0.9.1_v1"
OUT = Path("/tmp/pathbeam-bench/stain_jitter")
RECIPE = {
    "output_kind": "segmentation",
    "activation": "sigmoid",
    "input": "eho",
    "class_names": ["lumen", "epithelium", "stroma"],
    "patch_px": 320,
    "patch_mpp": 2.0,
    "min_tissue": 0.05,
    "modality": "brightfield_he",
}
"""README's seven flags for the lavlab net, as its recipe."""


def slide_pixels(path: Path) -> tuple[np.ndarray, float]:
    """Level 0 of the slide at ``path`` as RGB, and its mpp."""
    import tiffslide

    slide = tiffslide.TiffSlide(str(path))
    try:
        rgb = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
        return rgb, float(slide.properties["tiffslide.mpp-x"])
    finally:
        slide.close()


def jittered(rgb: np.ndarray, seed: int, jitter: float) -> np.ndarray:
    """``rgb`` with its H&E stain vectors and concentrations each scaled by 1 ± ``jitter``."""
    from transforms.slides.stains import estimate_stains, optical_density
    from transforms.slides.tissue import tissue_mask

    small = rgb[::8, ::8]
    basis = estimate_stains(small, tissue_mask(small, "brightfield"))
    h, e = np.asarray(basis.h_od), np.asarray(basis.e_od)
    n = np.cross(h, e)
    n /= np.linalg.norm(n)
    inverse = np.linalg.pinv(np.stack([h, e, n], axis=1)).astype(np.float32)
    rng = np.random.default_rng(seed)

    def factor(size: int | None = None) -> np.ndarray:
        return rng.uniform(1.0 - jitter, 1.0 + jitter, size)

    h2, e2 = h * factor(3), e * factor(3)
    h2, e2 = h2 / np.linalg.norm(h2), e2 / np.linalg.norm(e2)
    kh, ke = factor(), factor()
    od = optical_density(rgb, basis.io)
    conc = od @ inverse.T  # H, E and the residual off their plane, per pixel
    rebuilt = (
        (conc[..., :1] * kh) * h2.astype(np.float32)
        + (conc[..., 1:2] * ke) * e2.astype(np.float32)
        + conc[..., 2:] * n.astype(np.float32)
    )
    return np.clip(np.rint(basis.io * np.power(10.0, -rebuilt)), 0, 255).astype(np.uint8)


def make_copies(folder: Path, copies: int, jitter: float) -> list[tuple[str, Path]]:
    from demo.synthetic_slide import write_svs

    rgb, mpp = slide_pixels(CMU1)
    out = [("original", CMU1)]
    for k in range(copies):
        path = folder / f"jitter{k}.svs"
        if not path.exists():
            write_svs(str(path), jittered(rgb, k, jitter), mpp)
        out.append((f"jitter{k}", path))
    return out


def model_with_recipe(folder: Path) -> Path:
    for name in ("model_v1.onnx", "model_v1.onnx.data"):
        if not (folder / name).exists():
            shutil.copy(MODEL / name, folder / name)
    (folder / "model_v1.recipe.json").write_text(json.dumps(RECIPE))
    return folder / "model_v1.onnx"


def class_areas(slides: Path, model: Path, out: Path, *flags: str) -> dict[str, np.ndarray]:
    """Each slide's class areas (mm²) from one pipeline run."""
    import pandas as pd

    shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.slide_inference", "--slides", str(slides)]
        + ["--model", f"shell={model}", "--output", str(out), "--no_heatmaps", *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    rows = pd.read_parquet(out / "slide_summaries").to_dict("records")
    return {r["slide_id"]: np.asarray(r["class_area_mm2"]) for r in rows}


def spreads(areas: dict[str, np.ndarray], ids: list[str]) -> np.ndarray:
    stacked = np.stack([areas[i] for i in ids])
    return stacked.max(axis=0) - stacked.min(axis=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--jitter", type=float, default=0.15)
    parser.add_argument("--method", default="macenko", choices=("macenko", "reinhard"))
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    slides = make_copies(OUT, args.copies, args.jitter)
    manifest = OUT / "slides.csv"
    manifest.write_text("slide_id,uri\n" + "".join(f"{i},{p}\n" for i, p in slides))
    model = model_with_recipe(OUT)
    plain = class_areas(manifest, model, OUT / "plain")
    normed = class_areas(manifest, model, OUT / "normed", "--model_stain", f"shell={args.method}")
    ids = [i for i, _ in slides if i != "original"]
    names = RECIPE["class_names"]
    print(f"class areas, mm² ({', '.join(names)}); jitter ±{args.jitter:.0%}, {args.method}")
    for i, _ in slides:
        print(f"  {i:<9} plain {np.round(plain[i], 4)}  normalised {np.round(normed[i], 4)}")
    without, with_ = spreads(plain, ids), spreads(normed, ids)
    for c, name in enumerate(names):
        ratio = with_[c] / without[c] if without[c] > 0 else float("nan")
        print(
            f"  spread of {name:<10} without {without[c]:.4f}  with {with_[c]:.4f} mm²  "
            f"(x{ratio:.2f})"
        )


if __name__ == "__main__":
    main()
