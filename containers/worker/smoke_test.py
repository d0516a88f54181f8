"""In-image smoke test: imports, versions, CUDA visibility, and a tiny model on the device.

docker run --rm --entrypoint python IMAGE /opt/pathbeam/smoke_test.py [--require_gpu]
    [--launcher_lock requirements/launcher.lock]

The image must be exactly its lock (no package off its pin), and its Beam and dill must be the
launcher lock's: a job pickled by the launcher is unpickled here.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--require_gpu", action="store_true")
    parser.add_argument("--launcher_lock", help="the launcher image's lock, to compare with")
    args = parser.parse_args()

    from pathlib import Path

    from transforms.core.environment import (
        PICKLING_PACKAGES,
        check_same_pickling,
        drift,
        environment,
        lock_pins,
    )

    off = drift()
    assert not off, f"the image is not exactly its lock: {'; '.join(off)}"
    if args.launcher_lock:
        pins = lock_pins(Path(args.launcher_lock).read_text())
        check_same_pickling({name: pins[name] for name in PICKLING_PACKAGES})  # one line

    import imagecodecs  # noqa: F401 - JPEG tiles need it
    import onnxruntime
    import tiffslide  # noqa: F401
    import torch

    import pipelines.slide_inference  # noqa: F401
    from transforms.models.onnx_models import providers
    from transforms.models.torch_models import select_device

    device = select_device(args.require_gpu)
    onnx_providers = providers(args.require_gpu)  # the CUDA provider where there is a GPU
    net = (
        torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(4, 2),
        )
        .to(device)
        .eval()
    )
    with torch.inference_mode():
        out = net(torch.rand(2, 3, 32, 32, device=device))
    assert out.shape == (2, 2)
    print(
        json.dumps(
            {
                "apache-beam": md.version("apache-beam"),
                "torch": torch.__version__,
                "cuda_build": torch.version.cuda,
                "cuda_available": torch.cuda.is_available(),
                "device": device,
                "tiffslide": md.version("tiffslide"),
                "imagecodecs": md.version("imagecodecs"),
                "onnxruntime": onnxruntime.__version__,
                "onnx_providers": onnx_providers,
                "environment": environment(),
            }
        )
    )


if __name__ == "__main__":
    main()
