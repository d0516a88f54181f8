"""Bytes fetched from GCS per read pattern of the pipeline: this project's block cache vs gcsfs's
default file cache. Runs against the local GCS emulator through a counting proxy.

    python -m bench.bench_gcs_reads [--side 8192]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

PATTERNS = {
    "two 128 px patches": [(0, 512, 512, 128), (0, 4096, 4096, 128)],
    "one 2048 px work unit": [(0, 2048, 2048, 2048)],
    "level 1 whole (mask read)": [(1, 0, 0, None)],
}


def fetched(proxy, name: str, opener, reads) -> tuple[int, int]:  # noqa: ANN001
    """(bytes, requests) the proxy served for ``reads`` of a freshly opened slide."""
    import gcsfs

    gcsfs.GCSFileSystem.clear_instance_cache()
    before, requests = proxy.bytes_by_object[name], len(proxy.reads)
    slide = opener(f"gs://bench/{name}")
    for level, x, y, size in reads:
        w, h = slide.level_dimensions[level] if size is None else (size, size)
        if hasattr(slide, "read_region"):  # tiffslide: a level-0 location
            slide.read_region((x, y), level, (w, h), as_array=True)
        else:  # our Slide interface: level coordinates
            ds = slide.level_downsamples[level]
            slide.read(level, round(x / ds), round(y / ds), w, h)
    slide.close()
    return proxy.bytes_by_object[name] - before, len(proxy.reads) - requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", type=int, default=8192)
    args = parser.parse_args()

    import tiffslide

    from demo.synthetic_slide import make_slide, write_svs
    from localgcp.cluster import LocalGcp
    from localgcp.fault_proxy import FaultProxy
    from transforms.slides.reader import open_slide

    root = Path(tempfile.mkdtemp(prefix="bench-gcs-"))
    local = root / "slide.svs"
    write_svs(str(local), make_slide(args.side, args.side, seed=3).rgb, mpp=0.5)
    size = local.stat().st_size
    with LocalGcp(root / "gcp") as gcp:
        os.environ.update(gcp.env())
        gcp.upload(local, "gs://bench/slide.svs")
        with FaultProxy(gcp.gcs_endpoint) as proxy:
            os.environ["STORAGE_EMULATOR_HOST"] = proxy.endpoint
            print(f"slide {args.side} px, {size / 1e6:.1f} MB; MB fetched (share), requests")
            print(f"  {'read':28s} {'open_slide':>22s} {'gcsfs default cache':>22s}")
            for label, reads in PATTERNS.items():
                ours, n_ours = fetched(proxy, "slide.svs", open_slide, reads)
                default, n_def = fetched(proxy, "slide.svs", tiffslide.TiffSlide, reads)
                print(
                    f"  {label:28s} {ours / 1e6:6.2f} ({ours / size:5.1%}) {n_ours:4d} "
                    f"{default / 1e6:6.2f} ({default / size:5.1%}) {n_def:4d}"
                )


if __name__ == "__main__":
    main()
