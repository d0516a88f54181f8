"""In-image smoke test: imports, versions, CUDA visibility, and a tiny model on the device.

docker run --rm --entrypoint python IMAGE /opt/pathbeam/smoke_test.py [--require_gpu]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--require_gpu", action="store_true")
    args = parser.parse_args()

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
            }
        )
    )


if __name__ == "__main__":
    main()
