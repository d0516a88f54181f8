"""tiatoolbox's PatchPredictor over one whole slide: the anchor of ``bench_anchors``.

Runs in tiatoolbox's own venv (it needs torch<2.13 and torchvision), never in the project's:

    python3 -m venv ../tia-venv
    ../tia-venv/bin/pip install torch==2.9.1 torchvision==0.24.1 tiatoolbox==2.1.3
    ../tia-venv/bin/python bench/tia_anchor.py SLIDE OUT_DIR

Its ``CNNModel("resnet18", 2)`` (torchvision's ResNet-18 with a 2-class head, random weights:
nothing is downloaded), 224 px patches at 0.5 µm/px, stride 224, batch 32, on the CPU, with a
mask covering the whole slide so it cuts the same 2,025 patches as the pipeline's
``--min_tissue 0`` grid. Prints ``BENCH {json}``: the whole process's wall time (imports
included), ``run()``'s alone, and the patch count.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()

import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tiatoolbox.models.architecture.vanilla import CNNModel  # noqa: E402
from tiatoolbox.models.engine.io_config import IOPatchPredictorConfig  # noqa: E402
from tiatoolbox.models.engine.patch_predictor import PatchPredictor  # noqa: E402
from tiatoolbox.wsicore.wsireader import WSIReader  # noqa: E402


def main() -> None:
    slide, out = sys.argv[1], Path(sys.argv[2])
    shutil.rmtree(out, ignore_errors=True)
    torch.manual_seed(0)
    model = CNNModel("resnet18", num_classes=2).eval()
    # mpp given: tiatoolbox reads the synthetic slide with its TIFF reader, not OpenSlide's
    reader = WSIReader.open(slide, mpp=(0.5, 0.5))
    thumb = reader.slide_thumbnail(resolution=8.0, units="mpp")
    mask = np.ones(thumb.shape[:2], np.uint8)  # every patch, as --min_tissue 0
    ioconfig = IOPatchPredictorConfig(
        input_resolutions=[{"units": "mpp", "resolution": 0.5}],
        patch_input_shape=(224, 224),
        stride_shape=(224, 224),
    )
    predictor = PatchPredictor(model=model, batch_size=32, num_workers=0)
    started = time.monotonic()
    output = predictor.run(
        [reader],
        masks=[mask],
        ioconfig=ioconfig,
        patch_mode=False,
        save_dir=out,
        output_type="zarr",
        device="cpu",
        return_probabilities=True,
        verbose=False,
    )
    run_s = time.monotonic() - started
    import zarr

    store = zarr.open(str(next(iter(output.values()))), mode="r")
    patches = int(store["probabilities"].shape[0])
    print(
        "BENCH "
        + json.dumps(
            {
                "wall_s": time.monotonic() - STARTED,
                "run_s": run_s,
                "patches": patches,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
