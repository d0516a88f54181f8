"""The stream's latency and a burst, against the batch pipeline on the same slides.

    python -m bench.bench_stream [--notifications 20] [--burst 50]

Real components throughout, on this machine: the GCS and Pub/Sub emulators and
``python -m pipelines.slide_stream`` on the streaming direct runner (a subprocess), with the tiny
real classifier of the tests at 64 px on level 0 of CMU-1-Small-Region (578 tissue patches).

- **Latency**: CMU-1 is uploaded under ``--notifications`` names; one notification is published
  at a time, the next once the previous slide's summary is written. Each summary's ``latency_s``
  (publish -> rows written) is read back; p50 and p95 against the batch pipeline's whole time for
  the one slide (``python -m pipelines.slide_inference``, a fresh process: what a scheduler that
  launches a batch job per slide would take).
- **Burst**: ``--burst`` notifications published at once (each name once, plus 10 repeats);
  reported: the time until every slide has its rows, that no slide is missing or doubled, and
  the batch pipeline's time over the same slides from one manifest.

Beam's direct runner pulls Pub/Sub with a fixed 30 s timeout and advances the stream's
watermark only when a pull returns, so on a quiet subscription a window closes up to 30 s late
(Dataflow's watermark does not wait on pulls). ``--heartbeat_s`` publishes an ignored message
(a non-slide object) that often, so pulls return and the measured latency is the pipeline's
own; with 0, the direct runner's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
CMU1 = REPO.parent / "shared" / "data" / "aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"
FLAGS = ["--patch_level", "0", "--patch_px", "64", "--min_tissue", "0.5", "--no_heatmaps"]


def _summaries(out: Path) -> pd.DataFrame:
    files = sorted((out / "slide_summaries").glob("*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in files]) if files else pd.DataFrame()


def _wait(until, timeout_s: float) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not until():
        if time.monotonic() > deadline:
            raise TimeoutError("the stream did not finish in time")
        time.sleep(0.2)


def batch_time(model: str, names: list[str], bucket: str, tmp: Path) -> float:
    manifest = tmp / f"batch-{len(names)}.csv"
    manifest.write_text(
        "slide_id,uri\n" + "".join(f"{Path(n).stem},gs://{bucket}/{n}\n" for n in names)
    )
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "pipelines.slide_inference", "--slides", str(manifest),
         "--model", f"two={model}", *FLAGS, "--output", str(tmp / f"batch-{len(names)}")],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    return time.monotonic() - started


def main() -> None:
    import torch

    from localgcp.cluster import LocalGcp, stop_group
    from localgcp.notify import gcs_message
    from localgcp.pubsub import PubSubEmulator
    from tests.models_for_tests import export_pt2, tiny_net

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notifications", type=int, default=20)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--heartbeat_s", type=float, default=0.5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    torch.manual_seed(0)
    model = export_pt2(tiny_net(2, seed=0), str(tmp / "two.pt2"))
    with LocalGcp(tmp / "gcp") as gcp, PubSubEmulator(tmp / "pubsub") as pubsub:
        os.environ.update(gcp.env())
        env = {**os.environ, **pubsub.env()}
        n = max(args.notifications, args.burst)
        names = [f"cmu-{i:03d}.svs" for i in range(n)]
        for name in names:
            gcp.upload(CMU1, f"gs://lab/{name}")
        sub = pubsub.subscription("lab")
        results: dict = {}
        for phase, count in (("latency", args.notifications), ("burst", args.burst)):
            out = tmp / phase
            proc = subprocess.Popen(
                [sys.executable, "-m", "pipelines.slide_stream", f"--subscription={sub}",
                 "--model", f"two={model}", *FLAGS, "--window_s", "1", "--output", str(out)],
                cwd=REPO, env=env, stdout=(tmp / f"{phase}.log").open("wb"),
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            beat = threading.Event()
            if args.heartbeat_s > 0:
                ping = gcs_message("lab", "heartbeat.txt")

                def heartbeat(stop: threading.Event = beat, ping: tuple = ping) -> None:
                    while not stop.wait(args.heartbeat_s):
                        pubsub.publish("lab", ping[0], **ping[1])

                threading.Thread(target=heartbeat, daemon=True).start()
            try:
                time.sleep(8)  # the stream's start-up, not counted in any latency
                started = time.monotonic()
                if phase == "latency":
                    for i, name in enumerate(names[:count]):
                        data, attributes = gcs_message("lab", name)
                        pubsub.publish("lab", data, **attributes)
                        _wait(lambda i=i, out=out: len(_summaries(out)) > i, 300)
                else:
                    for name in names[:count] + names[:10]:  # 10 repeats: redeliveries
                        data, attributes = gcs_message("lab", name)
                        pubsub.publish("lab", data, **attributes)
                    _wait(lambda out=out, c=count: len(_summaries(out)) >= c, 1800)
                elapsed = time.monotonic() - started
                time.sleep(3)
            finally:
                beat.set()
                stop_group(proc, 20)
            summaries = _summaries(out)
            rows = pd.concat(
                [pd.read_parquet(p) for p in sorted((out / "patch_predictions").glob("*.parquet"))]
            )
            ids = sorted(summaries.slide_id)
            results[phase] = {
                "slides": len(ids),
                "missing": sorted(set(Path(n).stem for n in names[:count]) - set(ids)),
                "doubled_rows": int(
                    len(rows) - len(rows.drop_duplicates(["slide_id", "x_px", "y_px"]))
                ),
                "wall_s": round(elapsed, 1),
            }
            if phase == "latency":
                lat = summaries.latency_s.to_numpy()
                results[phase].update(
                    p50_s=round(float(np.percentile(lat, 50)), 2),
                    p95_s=round(float(np.percentile(lat, 95)), 2),
                )
        one = batch_time(model, names[:1], "lab", tmp)
        many = batch_time(model, names[: args.burst], "lab", tmp)
    results["batch_one_slide_s"] = round(one, 1)
    results["batch_burst_s"] = round(many, 1)
    results["p95_over_batch"] = round(results["latency"]["p95_s"] / one, 2)
    results["burst_over_batch"] = round(results["burst"]["wall_s"] / many, 2)
    results["heartbeat_s"] = args.heartbeat_s
    print("SUMMARY " + json.dumps(results))


if __name__ == "__main__":
    main()
