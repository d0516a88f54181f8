"""``--compile``: what compiling costs once per worker process, what it gains per patch, and the
job size past which it pays off.

    python -m bench.bench_compile [--patches 640]

ResNet-18 (``bench/resnet.py``) exported with ``torch.export``, run through the pipeline's own
``TorchModel`` (``forward``: uint8 patches -> normalised channels-last batch -> model, under the
precision's autocast) at batch 32, eager against ``TorchModel.compile(32)``, in fp32 and bf16.
*compile s*: the first call of each precision (the compile), as ``PatchModelHandler.load_model``
pays it at setup; with reduced precision a worker compiles both (the guard runs fp32 too).
Each rate is the median of 3 passes over the same patches, eager and compiled alternating.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from bench.bench_slides import BATCH, OUT, export_model


def rate(model, batches: list) -> float:  # noqa: ANN001
    start = time.perf_counter()
    for batch in batches:
        model.forward(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patches", type=int, default=640)
    args = parser.parse_args()
    import os
    import tempfile

    # a fresh inductor cache, as a new Dataflow worker has: a warm one (a second run on the
    # same machine) compiles ResNet-18 in 1-3 s instead
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    import torch

    from bench.resnet import ResNet18
    from transforms.models.spec import IMAGENET_MEAN, IMAGENET_STD
    from transforms.models.torch_models import TorchModel

    path = export_model("resnet18", ResNet18(), 224)
    rng = np.random.default_rng(0)
    pixels = list(rng.integers(0, 256, (args.patches, 224, 224, 3), dtype=np.uint8))
    batches = [pixels[i : i + BATCH] for i in range(0, len(pixels), BATCH)]

    def model() -> TorchModel:
        return TorchModel(torch.export.load(str(path)).module(), "cpu", IMAGENET_MEAN, IMAGENET_STD)

    out: dict = {}
    for precision in ("fp32", "bf16"):
        compiled, eager = model(), model()
        compiled.precision = eager.precision = precision
        compiled.compile(BATCH)  # for this precision, as --compile does after --precision
        start = time.perf_counter()
        compiled.forward(batches[0][:1])  # the compile, at setup, on one padded patch
        compile_s = time.perf_counter() - start
        eager.forward(batches[0][:2])
        rates: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(3):
            rates["eager"].append(rate(eager, batches))
            rates["compiled"].append(rate(compiled, batches))
        e, c = statistics.median(rates["eager"]), statistics.median(rates["compiled"])
        saved_per_patch = 1 / e - 1 / c
        out[precision] = {
            "compile_s": compile_s,
            "eager": e,
            "compiled": c,
            "gain": c / e,
            "break_even_patches": compile_s / saved_per_patch if saved_per_patch > 0 else None,
            "runs": rates,
        }
        print(precision, json.dumps(out[precision]), flush=True)
    (OUT / "bench_compile.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
