"""Beam's own RunInference over the same patches: the anchor of ``bench_anchors``.

    python -m bench.beam_runinference SLIDE STATE_DICT OUT_DIR

What a Beam user writes from Beam's PyTorch examples: the patch boxes in (``Create`` and a
``Reshuffle``, as this pipeline's planning emits them), one ``read_region`` per patch with
tiffslide (the slide opened once per DoFn), each patch normalised into a float tensor,
``RunInference(PytorchModelHandlerTensor)`` with batches of 32 in fp32 (Beam's handlers have no
reduced precision), softmax, and a Parquet write. The model is ``bench/resnet.py``'s ResNet-18
from a ``state_dict``. Prints ``BENCH {json}`` with the whole process's wall time.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()

import json  # noqa: E402
import sys  # noqa: E402

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from apache_beam.ml.inference.base import RunInference  # noqa: E402
from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.runners.portability.fn_api_runner import FnApiRunner  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


class ReadPatch(beam.DoFn):
    def __init__(self, slide: str) -> None:
        self._path = slide
        self._slide = None

    def setup(self) -> None:
        import tiffslide

        self._slide = tiffslide.TiffSlide(self._path)

    def process(self, box: tuple[int, int, int]):  # noqa: ANN201
        import torch

        x, y, size = box
        rgb = self._slide.read_region((x, y), 0, (size, size), as_array=True)
        pixels = (rgb.astype(np.float32) / 255.0 - MEAN) / STD
        yield box, torch.from_numpy(pixels.transpose(2, 0, 1).copy())


def row(item) -> dict:  # noqa: ANN001
    box, result = item
    logits = result.inference.numpy()
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    return {"x_px": box[0], "y_px": box[1], "probs": probs.tolist()}


def main() -> None:
    from bench.bench_slides import grid_boxes_of
    from bench.resnet import ResNet18

    slide, weights, out = sys.argv[1], sys.argv[2], sys.argv[3]
    boxes = grid_boxes_of(slide, 224, 1_000_000)
    handler = PytorchModelHandlerTensor(
        state_dict_path=weights,
        model_class=ResNet18,
        model_params={},
        device="CPU",
        min_batch_size=32,
        max_batch_size=32,
    )
    schema = pa.schema(
        [("x_px", pa.int64()), ("y_px", pa.int64()), ("probs", pa.list_(pa.float64()))]
    )
    with beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([])) as pipeline:
        _ = (
            pipeline
            | beam.Create(boxes)
            | beam.Reshuffle()
            | beam.ParDo(ReadPatch(slide))
            | RunInference(beam.ml.inference.base.KeyedModelHandler(handler))
            | beam.Map(row)
            | beam.io.WriteToParquet(f"{out}/predictions", schema)
        )
    print("BENCH " + json.dumps({"wall_s": time.monotonic() - STARTED, "patches": len(boxes)}))


if __name__ == "__main__":
    main()
