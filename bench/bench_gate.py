"""What a gate saves: a ResNet-18 detail model run everywhere against run only where a cheap gate
passes, on the 16k bench slide.

    python -m bench.bench_gate [--side 16384] [--repeats 2] [--keep 0.3]

The slide is the synthetic 16384 x 16384 px H&E-like SVS (0.5 µm/px). The detail model is
ResNet-18 (random weights) at 224 px, 0.5 µm/px (the slide's own). The gate is a fixed-weight
brightness classifier (global pool -> linear, ``tests.models_for_tests.DarkGate``) at 28 px,
8 µm/px, read from a coarser pyramid level: each gate patch covers four detail patches (the
centre rule maps them).

First a gate-only run measures the gate's own cost and its P(dark) per patch; the rule's
threshold is the quantile that keeps ``--keep`` of the gate's patches. Then, alternating, each in
a fresh process:
  * ``ungated``: the detail model on every tissue patch;
  * ``gated``: the gate, then the detail model where ``gate:dark >= threshold``;
  * ``gated, all pass``: the same with a rule every patch passes (the gating's own overhead).
Reported: medians of wall time, the detail stage's patches, the ratio gated / ungated, and the
break-even keep fraction: the two gated runs fit T(f) = a + b * f (f the share of detail patches
kept); break-even is the f where T(f) equals the ungated time (over 1: gating pays at any f).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from bench.bench_slides import OUT, export_model, run_child, synthetic_slide

CHILD = """
import json, resource, sys, time
from pipelines.slide_inference import run
from pipelines.report import counters
t = time.monotonic()
result = run(sys.argv[1:])
wall = time.monotonic() - t
print("BENCH " + json.dumps({"wall_s": wall, **counters(result),
      "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def models() -> tuple[Path, Path]:
    import torch

    from bench.resnet import ResNet18
    from tests.models_for_tests import DarkGate

    torch.manual_seed(0)
    detail = export_model("resnet18-224", ResNet18(2), 224)
    gate = export_model("dark-gate-28", DarkGate(threshold=0.75, sharpness=12.0), 28)
    return gate, detail


def _flags(manifest: Path, out: Path, run_id: str, *extra: str) -> list[str]:
    return [
        *("--slides", str(manifest), "--patch_px", "224", "--patch_mpp", "0.5"),
        *("--min_tissue", "0.25", "--batch_size", "32", "--no_heatmaps"),
        *("--output", str(out), "--run_id", run_id, "--progress_interval_s", "120", *extra),
    ]


def gate_flags(gate: Path) -> list[str]:
    return [
        *("--model", f"gate={gate}", "--model_mpp", "gate=8", "--model_patch_px", "gate=28"),
        *("--class_names", "gate=light,dark"),
    ]


def main() -> None:
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--keep", type=float, default=0.3)
    args = parser.parse_args()
    slide = synthetic_slide(f"whole-{args.side}", args.side, args.side)
    gate, detail = models()
    manifest = OUT / "gate.csv"
    manifest.write_text(f"slide_id,uri\ngate,{slide}\n")

    out = OUT / "gate-only"
    shutil.rmtree(out, ignore_errors=True)
    gate_only = run_child(CHILD, _flags(manifest, out, "g0", *gate_flags(gate)))
    p_dark = pd.read_parquet(out / "patch_predictions").probs.map(lambda p: p[1])
    threshold = float(p_dark.quantile(1 - args.keep))
    print("gate only", json.dumps(gate_only), f"threshold {threshold:.6f}")

    runs: dict[str, list[dict]] = {"ungated": [], "gated": [], "gated, all pass": []}
    variants = {
        "ungated": ["--model", f"detail={detail}"],
        "gated": [
            *gate_flags(gate),
            *("--model", f"detail={detail}", "--gate", f"detail=gate:dark>={threshold:.6f}"),
        ],
        "gated, all pass": [
            *gate_flags(gate),
            *("--model", f"detail={detail}", "--gate", "detail=gate:dark>=0"),
        ],
    }
    for i in range(args.repeats):
        for name, extra in variants.items():
            out = OUT / f"gate-{i}-{name[:5]}-{len(name)}"
            shutil.rmtree(out, ignore_errors=True)
            result = run_child(CHILD, _flags(manifest, out, f"g{i}{len(name)}", *extra))
            rows = pd.read_parquet(out / "patch_predictions")
            result["detail_patches"] = int((rows.model_name == "detail").sum())
            runs[name].append(result)
            print(name, json.dumps(result))
    wall = {name: statistics.median(r["wall_s"] for r in rs) for name, rs in runs.items()}
    patches = {name: rs[0]["detail_patches"] for name, rs in runs.items()}
    keep = patches["gated"] / patches["ungated"]
    keep_all = patches["gated, all pass"] / patches["ungated"]
    slope = (wall["gated, all pass"] - wall["gated"]) / (keep_all - keep)
    intercept = wall["gated"] - slope * keep
    break_even = (wall["ungated"] - intercept) / slope if slope > 0 else None
    overhead = wall["gated, all pass"] - wall["ungated"]
    summary = {
        "slide_px": args.side,
        "gate_only_wall_s": round(gate_only["wall_s"], 1),
        "gate_patches": int(len(p_dark)),
        "detail_patches": patches,
        "keep_fraction": round(keep, 3),
        "wall_s": {k: round(v, 1) for k, v in wall.items()},
        "gated_over_ungated": round(wall["gated"] / wall["ungated"], 3),
        "gating_overhead_s": round(overhead, 1),
        "wall_s_each": {k: [round(r["wall_s"], 1) for r in rs] for k, rs in runs.items()},
        "break_even_keep_fraction": None if break_even is None else round(break_even, 3),
    }
    print("SUMMARY " + json.dumps(summary))


if __name__ == "__main__":
    main()
