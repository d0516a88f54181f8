"""Tiny real torch models that the tests build and export themselves (seeded, random weights)."""

from __future__ import annotations

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
