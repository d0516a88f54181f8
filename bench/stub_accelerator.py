"""A model that stands in for a GPU: it holds each batch for ``batch / rate`` seconds and
releases the GIL while it waits (``time.sleep``), as a CUDA forward pass does, one batch at a
time however many threads call it (a lock: one device), and returns two-class logits.
``PATHBEAM_STUB_RATE`` (patches/s) sets the rate; 0 returns at once (to measure what the
pipeline costs around a model that costs nothing).

The pipeline loads it as a ``state_dict`` model: ``--model m=<empty state dict>
--model_class m=bench.stub_accelerator:StubAccelerator``.
"""

from __future__ import annotations

import os
import threading
import time

import torch

RATE = "PATHBEAM_STUB_RATE"

DEVICE = threading.Lock()
"""One device: batches from several harness threads queue for it, as on one GPU."""


class StubAccelerator(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rate = float(os.environ.get(RATE, "0"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate > 0:
            with DEVICE:
                time.sleep(x.shape[0] / self.rate)
        # depends on the pixels, so nothing upstream can be skipped
        return torch.stack([x.mean(dim=(1, 2, 3)), -x.mean(dim=(1, 2, 3))], dim=1)


def save_stub(path: str) -> str:
    """An empty state dict: the stub has no weights."""
    torch.save(StubAccelerator().state_dict(), path)
    return path
