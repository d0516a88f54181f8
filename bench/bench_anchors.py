"""Per slide against the anchors: tiatoolbox, Beam's RunInference and the bare model.

    python -m bench.bench_anchors [--rounds 2] [--tia-python ../tia-venv/bin/python]

One synthetic 10240 x 10240 JPEG slide (256 px tiles, 0.5 µm/px), 2,025 patches of 224 px at
0.5 µm/px (every grid patch: ``--min_tissue 0``, and a full mask for tiatoolbox), ResNet-18,
batch 32, CPU. Each entry is a fresh process timed whole, imports included:

- *pipeline fp32*, *pipeline auto* (bf16 on this AMX CPU, with the accuracy guard), *pipeline
  auto + compile*: ``python -m pipelines.slide_inference`` as a user runs it (heatmaps, QuPath
  export, run record and report included);
- *tiatoolbox*: ``bench/tia_anchor.py`` in tiatoolbox's own venv (see its docstring);
- *Beam RunInference*: ``bench/beam_runinference.py`` on the same 2,025 boxes;
- *bare model*: the same ``.pt2`` forward alone, fp32, on the normalised patches in memory;
- *pipeline fp32, 1,024 patches*: the same tissue cropped to 7168 px, for the pipeline's
  marginal rate (the 1,001 patches between the two runs over the time between them: start-up,
  torch's import and the model load cancel out).

Rounds alternate the entries; medians are compared within the session.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from bench.bench_accelerator import slide
from bench.bench_precision import bare_rate
from bench.bench_slides import OUT, REPO, export_model, grid_boxes_of, read_region_loop, run_child
from bench.bench_slides import pipeline_args as slide_args

PIPELINE = (
    "import json, sys, time\n"
    "t = time.monotonic()\n"
    "from pipelines.slide_inference import run\n"
    "from pipelines.report import counters\n"
    "r = time.monotonic(); result = run(sys.argv[1:]); end = time.monotonic()\n"
    "print('BENCH ' + json.dumps({'wall_s': end - t, 'run_s': end - r, **counters(result)}))\n"
)


def pipeline(slide_path, model, precision: str, compiled: bool, tag: str) -> dict:  # noqa: ANN001
    args = slide_args(slide_path, model, 224, 0.5, tag) + ["--precision", f"m={precision}"]
    if compiled:
        args += ["--compile", "m"]
    out = run_child(PIPELINE, args)
    return {"wall_s": out["wall_s"], "run_s": out["run_s"], "patches": out["patches_inferred"]}


def child(python: str, script: list[str]) -> dict:
    env = {**os.environ, "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:9"}
    env["PYTHONPATH"] = str(REPO)
    started = time.monotonic()
    proc = subprocess.run(
        [python, *script], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH "))
    return {"outer_s": time.monotonic() - started, **json.loads(line[6:])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tia-python", default=str(REPO.parent / "tia-venv" / "bin" / "python"))
    args = parser.parse_args()
    import torch

    from bench.resnet import ResNet18

    path, small = slide("jpeg", 10240), slide("jpeg", 7168)
    model = export_model("resnet18", ResNet18(), 224)
    state = OUT / "resnet18_state.pt"
    torch.manual_seed(0)
    torch.save(ResNet18().state_dict(), state)
    _, pixels = read_region_loop(path, grid_boxes_of(path, 224, 1_000_000))
    entries = {
        "pipeline fp32": lambda i: pipeline(path, model, "fp32", False, f"anchor-fp32-{i}"),
        "pipeline fp32, 1,024 patches": lambda i: pipeline(
            small, model, "fp32", False, f"anchor-small-{i}"
        ),
        "pipeline auto": lambda i: pipeline(path, model, "auto", False, f"anchor-auto-{i}"),
        "pipeline auto + compile": lambda i: pipeline(path, model, "auto", True, f"anchor-c-{i}"),
        "tiatoolbox": lambda i: child(
            args.tia_python, ["bench/tia_anchor.py", str(path), str(OUT / f"tia-{i}")]
        ),
        "Beam RunInference": lambda i: child(
            sys.executable,
            ["-m", "bench.beam_runinference", str(path), str(state), str(OUT / f"ri-{i}")],
        ),
        "bare model fp32": lambda i: {
            "wall_s": len(pixels) / bare_rate(model, pixels, "fp32"),
            "patches": len(pixels),
        },
    }
    runs: dict[str, list[dict]] = {name: [] for name in entries}
    for i in range(args.rounds):
        order = list(entries) if i % 2 == 0 else list(reversed(entries))
        for name in order:
            runs[name].append(entries[name](i))
            print(name, json.dumps(runs[name][-1]), flush=True)
    wall = {name: statistics.median(r["wall_s"] for r in rs) for name, rs in runs.items()}
    summary = {
        "wall_s": wall,
        "auto / tiatoolbox": wall["pipeline auto"] / wall["tiatoolbox"],
        "auto+compile / tiatoolbox": wall["pipeline auto + compile"] / wall["tiatoolbox"],
        "fp32 / tiatoolbox": wall["pipeline fp32"] / wall["tiatoolbox"],
        "RunInference / auto": wall["Beam RunInference"] / wall["pipeline auto"],
        "RunInference / fp32": wall["Beam RunInference"] / wall["pipeline fp32"],
        "fp32 pipeline run() / bare (rate)": wall["bare model fp32"]
        / statistics.median(r["run_s"] for r in runs["pipeline fp32"]),
        "fp32 pipeline marginal / bare (rate)": wall["bare model fp32"]
        / (
            statistics.median(r["run_s"] for r in runs["pipeline fp32"])
            - statistics.median(r["run_s"] for r in runs["pipeline fp32, 1,024 patches"])
        )
        * (2025 - 1024)
        / 2025,
        "runs": runs,
    }
    print(json.dumps(summary, indent=1))
    (OUT / "bench_anchors.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
