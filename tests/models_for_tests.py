"""Tiny real torch models that the tests build and export themselves (seeded, random weights)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TinyPatchNet(nn.Module):
    """Conv -> pool -> linear: a real (if small) patch classifier with ``n_classes`` outputs."""

    def __init__(self, n_classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(8, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def tiny_net(n_classes: int = 2, seed: int = 0) -> TinyPatchNet:
    torch.manual_seed(seed)
    return TinyPatchNet(n_classes).eval()


def export_pt2(net: nn.Module, path: str, patch_px: int = 64) -> str:
    """Save ``net`` as a ``torch.export`` program with a dynamic batch dimension."""
    example = torch.zeros(2, 3, patch_px, patch_px)
    program = torch.export.export(
        net, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},)
    )
    torch.export.save(program, path)
    return path


class OomAboveFour(TinyPatchNet):
    """Raises torch's out-of-memory error for batches over 4, like a GPU at its limit."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 4:
            raise torch.OutOfMemoryError(f"CUDA out of memory (batch {x.shape[0]} > 4)")
        return super().forward(x)


class FailsOnWhite(TinyPatchNet):
    """Raises for any batch holding an all-white patch: a per-element failure."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.flatten(1).min(dim=1).values > 2.0).any()):  # white, ImageNet-normalised
            raise ValueError("white patch in batch")
        return super().forward(x)


class NanOnDark(TinyPatchNet):
    """Returns NaN logits for dark patches (mean below ImageNet's mean): a numerically broken
    model that must be flagged, not written as a prediction."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        dark = x.flatten(1).mean(dim=1, keepdim=True) < 0
        return torch.where(dark, torch.full_like(logits, float("nan")), logits)


class SpatialOutput(nn.Module):
    """A segmentation-shaped output (N x 2 x H x W) where one row of class scores is expected."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class TinyEncoder(nn.Module):
    """A patch encoder: N x 3 x H x W -> N x 16 features (the shape of a foundation model's
    pooled output)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.proj = nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class NanEmbeddingOnDark(TinyEncoder):
    """An encoder returning NaN vectors for dark patches: some elements fail, the rest do not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = super().forward(x)
        dark = x.flatten(1).mean(dim=1, keepdim=True) < 0
        return torch.where(dark, torch.full_like(features, float("nan")), features)


TINY_VIT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 64,
    "patch_size": 16,
}
"""A tiny ViT's shape (64 px input): the tests' Hugging Face vision models."""


def tiny_vit_config(**extra):  # noqa: ANN003, ANN201
    import transformers

    return transformers.ViTConfig(**{**TINY_VIT, **extra})


def tiny_vision_folder(folder: str, kind: str = "vit", seed: int = 0) -> str:
    """A ``save_pretrained`` ViT or DINOv2 with random weights (the architecture of UNI, Virchow,
    Phikon, H-optimus), 64 px input, with an image-processor config (mean = std = 0.5)."""
    import json
    import os

    import transformers

    torch.manual_seed(seed)
    if kind == "vit":
        model = transformers.ViTModel(tiny_vit_config())
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**TINY_VIT))
    model.eval().save_pretrained(folder)
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump({"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": {"height": 64}}, f)
    return folder


def export_onnx(net: nn.Module, path: str, patch_px: int = 64, fixed_batch: int | None = None):
    """Save ``net`` as an ONNX graph: a dynamic batch, or a fixed one of ``fixed_batch``."""
    import warnings

    example = torch.zeros(fixed_batch or 2, 3, patch_px, patch_px)
    axes = None if fixed_batch else {"image": {0: "n"}, "logits": {0: "n"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation
        torch.onnx.export(
            net.eval(),
            (example,),
            path,
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes=axes,
        )
    return path


def onnx_taking_tokens(path: str) -> str:
    """An ONNX graph whose input is N x 16 int64 token ids, not an image."""
    import onnx
    from onnx import TensorProto, helper

    tokens = helper.make_tensor_value_info("tokens", TensorProto.INT64, ["n", 16])
    out = helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 16])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["tokens"], ["ids"])], "t", [tokens], [out]
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


class LossyInBf16(nn.Module):
    """Logits 1000 + a hundredth of the patch's mean: fp32 tells the classes apart, bf16 (whose
    step at 1000 is 4) cannot, so its labels disagree with fp32's on about half the patches."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[0.01, 0.0, 0.0], [0.0, 0.0, 0.0]]))
            self.head.bias.fill_(1000.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3)))


def patches(n, px=64, seed=0):
    """Noise around a brightness that varies from patch to patch (dark to light)."""
    rng = np.random.default_rng(seed)
    levels = rng.integers(40, 216, (n, 1, 1, 1))
    noise = rng.integers(-30, 31, (n, px, px, 3))
    return list((levels + noise).clip(0, 255).astype(np.uint8))


class WhiteIsOne(nn.Module):
    """A segmentation net (N x 2 x H x W logits at the input's size): class 1 where a pixel is
    near white (as a patch's padding past the slide's edge is), class 0 elsewhere. Its input is
    ImageNet-normalised RGB, where white is about (2.2, 2.4, 2.6)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        white = (x.sum(dim=1, keepdim=True) - 5.0) * 10.0
        return torch.cat([torch.zeros_like(white), white], dim=1)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DarkGate(nn.Module):
    """A fixed-weight gate: global average pool -> linear, two classes (light, dark).

    The dark logit is ``sharpness * (threshold - brightness)``, where brightness is the patch's
    mean RGB in [0, 1] (the weights undo ImageNet normalisation); so P(dark) >= 0.5 exactly when
    the patch's mean grey level is under ``threshold``.
    """

    def __init__(self, threshold: float = 0.5, sharpness: float = 40.0) -> None:
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(3, 2)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
            for c in range(3):
                self.head.weight[1, c] = -sharpness * IMAGENET_STD[c] / 3
            self.head.bias[1] = sharpness * (threshold - sum(IMAGENET_MEAN) / 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(x))


class ABMIL(nn.Module):
    """Gated attention MIL (Ilse et al. 2018): per-patch projection, gated attention pooling,
    a linear classifier. Takes ``features (1, N, D)``, ``coords (1, N, 2)`` and the level-0
    patch size (the contract of ``models/slide_head.py``); returns logits ``(1, C)`` and
    attention ``(1, N)`` (softmax over the slide's patches)."""

    def __init__(self, dim: int = 16, hidden: int = 8, n_classes: int = 3) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())
        self.attention_v = nn.Linear(hidden, hidden)
        self.attention_u = nn.Linear(hidden, hidden)
        self.attention_w = nn.Linear(hidden, 1)
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(
        self, features: torch.Tensor, coords: torch.Tensor, patch_size: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.project(features[0])
        gate = torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))
        attention = torch.softmax(self.attention_w(gate)[:, 0], dim=0)
        pooled = (attention[:, None] * h).sum(0, keepdim=True)
        return self.classifier(pooled), attention[None]


def export_head(head: nn.Module, path: str, dim: int = 16) -> str:
    """Save a slide head as a ``torch.export`` program with a dynamic patch count."""
    n = torch.export.Dim("patches", min=1, max=200_000)
    example = (torch.zeros(1, 5, dim), torch.zeros(1, 5, 2, dtype=torch.int64), torch.tensor(64))
    program = torch.export.export(head, example, dynamic_shapes=({1: n}, {1: n}, None))
    torch.export.save(program, path)
    return path


def export_head_onnx(head: nn.Module, path: str, dim: int = 16) -> str:
    """Save a slide head as ONNX with a dynamic patch count (an ABMIL uses neither coords nor
    the patch size, so the exporter drops those inputs)."""
    import warnings

    example = (torch.zeros(1, 5, dim), torch.zeros(1, 5, 2, dtype=torch.int64), torch.tensor(64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            head.eval(),
            example,
            path,
            dynamo=False,
            input_names=["features", "coords", "patch_size"],
            output_names=["logits", "attention"],
            dynamic_axes={"features": {1: "n"}, "coords": {1: "n"}, "attention": {1: "n"}},
        )
    return path
