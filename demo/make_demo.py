"""Build the demo: synthetic slides, a slide manifest, and a small trained tumour classifier.

    python -m demo.make_demo --out demo_data

Writes ``demo_data/slides/*.svs``, ``demo_data/slides.csv`` (with a ``case_id`` column) and
``demo_data/models/tumor.pt2``: a real convolutional network, trained for a few seconds on patches
of the first synthetic slide with the generator's own tumour labels, saved with ``torch.export``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os

import numpy as np

from demo.synthetic_slide import make_slide, write_svs

SLIDES = (
    ("demo-A1", "case-A", 6144, 4096, 1),
    ("demo-A2", "case-A", 4096, 4096, 2),
    ("demo-B1", "case-B", 5120, 3072, 3),
)
PATCH_PX = 224
MPP = 0.5


def tumour_net():  # noqa: ANN201 - torch is imported lazily
    """A small CNN: 224 px RGB patch -> 2 logits (stroma, tumour)."""
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(3, 16, 5, stride=4, padding=2),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 2),
    )


def training_patches(slide, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random tissue patches with label 1 where most of the patch is tumour."""
    ds = slide.mask_downsample
    h, w = slide.rgb.shape[:2]
    xs, ys, labels = [], [], []
    while len(xs) < n:
        x, y = int(rng.integers(0, w - PATCH_PX)), int(rng.integers(0, h - PATCH_PX))
        window = np.s_[y // ds : (y + PATCH_PX) // ds, x // ds : (x + PATCH_PX) // ds]
        if slide.tissue[window].mean() < 0.5:
            continue
        xs.append(x)
        ys.append(y)
        labels.append(int(slide.tumour[window].mean() > 0.5))
    pixels = np.stack(
        [slide.rgb[y : y + PATCH_PX, x : x + PATCH_PX] for x, y in zip(xs, ys, strict=True)]
    )
    return pixels, np.array(labels)


def train(slide, steps: int = 120, seed: int = 0):  # noqa: ANN201
    """Train ``tumour_net`` on ImageNet-normalised patches of ``slide``; return it in eval mode."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pixels, labels = training_patches(slide, rng, 768)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x_all = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - mean) / std
    y_all = torch.from_numpy(labels)
    net = tumour_net()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(x_all), 32))
        loss = torch.nn.functional.cross_entropy(net(x_all[idx]), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(x_all).argmax(1) == y_all).float().mean().item()
    print(f"demo model: training accuracy {accuracy:.3f} on {len(x_all)} patches")
    return net


def export(net, path: str) -> None:  # noqa: ANN001
    """Save ``net`` as a ``torch.export`` program with a dynamic batch dimension."""
    import torch

    example = torch.zeros(2, 3, PATCH_PX, PATCH_PX)
    program = torch.export.export(
        net, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},)
    )
    torch.export.save(program, path)


RECIPE = {
    "description": "pathbeam's demo tumour classifier, trained on the synthetic slides",
    "output_kind": "classification",
    "activation": "softmax",
    "class_names": ["normal", "tumour"],
    "patch_px": PATCH_PX,
    "patch_mpp": 0.5,
    "min_tissue": 0.5,
    "modality": "brightfield_he",
    "licence": "Apache-2.0 (pathbeam)",
}
"""How to feed the demo model (transforms/models/recipe.py): it was trained on 224 px H&E-like
patches at 0.5 um/px."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo_data")
    args = parser.parse_args(argv)
    os.makedirs(os.path.join(args.out, "slides"), exist_ok=True)
    os.makedirs(os.path.join(args.out, "models"), exist_ok=True)
    rows, first = [], None
    for slide_id, case_id, width, height, seed in SLIDES:
        slide = make_slide(width, height, seed)
        first = first or slide
        write_svs(os.path.join(args.out, "slides", f"{slide_id}.svs"), slide.rgb, MPP)
        rows.append({"slide_id": slide_id, "uri": f"slides/{slide_id}.svs", "case_id": case_id})
    with open(os.path.join(args.out, "slides.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["slide_id", "uri", "case_id"])
        writer.writeheader()
        writer.writerows(rows)
    export(train(first), os.path.join(args.out, "models", "tumor.pt2"))
    with open(os.path.join(args.out, "models", "tumor.recipe.json"), "w") as f:
        json.dump(RECIPE, f, indent=2)
    print(
        f"demo data in {args.out}/: {len(rows)} slides, slides.csv, models/tumor.pt2 and its "
        "recipe, models/tumor.recipe.json"
    )


if __name__ == "__main__":
    main()
