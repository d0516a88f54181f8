"""Is an accelerator kept fed? The pipeline's real read path in front of a stub GPU.

    python -m bench.bench_accelerator [--rounds 2]

The model is ``bench/stub_accelerator.py``: it holds each batch for ``batch / rate`` seconds
with the GIL released, as a CUDA forward pass does, so everything else the job does is real:
the tissue survey, planning, the tile block reads and their decoding, the cut, the uint8 ->
normalised float conversion, activations, the Parquet writes and the run record.

Each figure is a *marginal* one, from two grid runs of the same slide content at two sizes
(7168 px: 1,024 patches; 10240 px: 2,025 patches of 224 px at 0.5 µm/px, ``--min_tissue 0``):
the difference in CPU seconds (user + system, every thread of the child process) or in wall
seconds over the difference in patches, so Beam's start-up and the model load cancel out.

1. *CPU per patch outside the model*: stub rate 0 (the model costs nothing), JPEG and JPEG 2000
   slides, one harness thread.
2. *Share of the stub's rate delivered*: the stub at a T4's and an L4's ResNet-50 fp16 rate,
   and at a rate this 2-vCPU machine can feed, with 1 harness thread and with the GPU presets'
   4 (``--direct_running_mode multi_threading --direct_num_workers 4`` on the local runner).
"""

from __future__ import annotations

import argparse
import json
import statistics

from bench.bench_slides import BATCH, OUT, run_child
from bench.stub_accelerator import RATE, save_stub

SIZES = (7168, 10240)
"""Slide edges in px: 32 x 32 and 45 x 45 grids of 224 px patches."""

STUB_RATES = {"t4": 1000.0, "l4": 2600.0}
"""ResNet-50 fp16 patches/s of a T4 and an L4 under PyTorch autocast at batch 64 (no TensorRT):
the GPU's time per patch that the CPUs must match. Assumptions sized from published figures, not
measured here (no GPU is lent to this project yet); TensorRT roughly doubles both."""

CHILD = (
    "import json, os, resource, sys, time\n"
    "from pipelines.slide_inference import run\n"
    "from pipelines.report import counters\n"
    "t = time.monotonic(); result = run(sys.argv[1:]); wall = time.monotonic() - t\n"
    "r = resource.getrusage(resource.RUSAGE_SELF)\n"
    "print('BENCH ' + json.dumps({'wall_s': wall, 'cpu_s': r.ru_utime + r.ru_stime,"
    " **counters(result)}))\n"
)


def slide(codec: str, edge: int) -> str:
    from demo.synthetic_slide import make_slide, write_svs

    path = OUT / f"stub-{codec}-{edge}.svs"
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        rgb = make_slide(10240, 10240, seed=7).rgb[:edge, :edge]  # the same tissue, cropped
        write_svs(str(path), rgb, mpp=0.5, compression=codec)
    return str(path)


def run(codec: str, edge: int, rate: float, threads: int, tag: str) -> dict:
    import os

    stub = save_stub(str(OUT / "stub.pt"))
    manifest = OUT / f"{tag}.csv"
    manifest.write_text(f"slide_id,uri\n{tag},{slide(codec, edge)}\n")
    args = ["--slides", str(manifest), "--model", f"m={stub}"]
    args += ["--model_class", "m=bench.stub_accelerator:StubAccelerator"]
    args += ["--patch_px", "224", "--patch_mpp", "0.5", "--min_tissue", "0"]
    args += ["--batch_size", str(BATCH), "--output", str(OUT / f"results-{tag}")]
    args += ["--run_id", tag, "--progress_interval_s", "600"]
    if threads > 1:
        args += ["--direct_running_mode", "multi_threading", "--direct_num_workers", str(threads)]
    os.environ[RATE] = str(rate)
    try:
        return run_child(CHILD, args)
    finally:
        del os.environ[RATE]


def marginal(codec: str, rate: float, threads: int, rounds: int) -> dict:
    """CPU ms and wall ms per patch between the two slide sizes; medians of ``rounds``."""
    cpu, wall, patches = [], [], 0
    for i in range(rounds):
        small, large = (
            run(codec, edge, rate, threads, f"stub-{codec}-{edge}-{int(rate)}-{threads}-{i}")
            for edge in SIZES
        )
        patches = large["patches_inferred"] - small["patches_inferred"]
        cpu.append(1000 * (large["cpu_s"] - small["cpu_s"]) / patches)
        wall.append(1000 * (large["wall_s"] - small["wall_s"]) / patches)
    return {
        "cpu_ms": statistics.median(cpu),
        "wall_ms": statistics.median(wall),
        "rate": 1000 / statistics.median(wall),
        "runs_cpu_ms": [round(c, 2) for c in cpu],
        "runs_wall_ms": [round(w, 2) for w in wall],
        "patches": patches,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--reuse-cpu", action="store_true", help="take part 1 from the last run's JSON"
    )
    args = parser.parse_args()
    saved = OUT / "bench_accelerator.json"
    out: dict = {"cpu": {}, "fed": {}}
    if args.reuse_cpu and saved.exists():
        out["cpu"] = json.loads(saved.read_text())["cpu"]
    for codec in ("jpeg", "jpeg2000"):
        if codec not in out["cpu"]:
            out["cpu"][codec] = marginal(codec, 0, 1, args.rounds)
        print(codec, json.dumps(out["cpu"][codec]), flush=True)
    for codec in ("jpeg", "jpeg2000"):  # no model at all: what the read path alone can give
        for threads in (1, 4):
            free = f"free/{codec}/{threads}"
            if threads == 1:
                out["fed"][free] = out["cpu"][codec]
            else:
                out["fed"][free] = marginal(codec, 0, threads, args.rounds)
            print(free, json.dumps(out["fed"][free]), flush=True)
    # a rate one of this machine's two vCPUs can feed alone, by the figure just measured
    feedable = round(0.5 * 1000 / out["cpu"]["jpeg"]["cpu_ms"])
    for name, rate in {"feedable": feedable, **STUB_RATES}.items():
        for threads in (1, 4):
            fed = marginal("jpeg", rate, threads, args.rounds)
            fed["stub_rate"], fed["share"] = rate, fed["rate"] / rate
            out["fed"][f"{name}/{threads}"] = fed
            print(name, rate, threads, json.dumps(fed), flush=True)
    per_patch = {codec: out["cpu"][codec]["cpu_ms"] for codec in out["cpu"]}
    out["vcpus"] = {
        gpu: {codec: rate * ms / 1000 for codec, ms in per_patch.items()}
        for gpu, rate in STUB_RATES.items()
    }
    print(json.dumps(out, indent=1))
    saved.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
