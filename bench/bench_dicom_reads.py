"""Reading the same pixels as an SVS file, as local DICOM files and from a DICOMweb store.

CMU-1-Small-Region.svs and its DICOM copy (wsidicomizer moves the JPEG tiles into frames without
re-encoding: the pixels are identical, checked here) are read in the pipeline's pattern: work
units of 4 x 4 tiles, each read once through the ``Slide`` interface, patches of one tile. The
DICOMweb store is a real Orthanc, read through the counting proxy (requests and bytes) and
directly (the proxy's own cost). Reported per source: patches/s
(median of 3 rounds, sources alternated within each round), requests and bytes per work unit.

    python -m bench.bench_dicom_reads [--dicom bench/out/cmu1_dicom]

The DICOM copy is made once, in its own venv (wsidicomizer needs a newer wsidicom than the
pipeline's):

    apt-get install -y libturbojpeg0
    python3 -m venv bench/out/dicomizer && bench/out/dicomizer/bin/pip install wsidicomizer
    TURBOJPEG=/usr/lib/x86_64-linux-gnu/libturbojpeg.so.0 bench/out/dicomizer/bin/python -c \\
      "from wsidicomizer import WsiDicomizer; WsiDicomizer.convert('../shared/data/\\
    aperio_cmu1_small_region/CMU-1-Small-Region.svs', 'bench/out/cmu1_dicom', \\
    include_label=False, include_overview=False)"
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

SVS = Path("../shared/data/aperio_cmu1_small_region/CMU-1-Small-Region.svs")
UNIT_TILES = 4


def units(slide) -> list[tuple[int, int, int, int]]:  # noqa: ANN001
    """Tile-aligned work units of ``UNIT_TILES`` x ``UNIT_TILES`` tiles covering level 0."""
    (width, height), (tw, th) = slide.level_dimensions[0], slide.level_tiles[0]
    step_x, step_y = tw * UNIT_TILES, th * UNIT_TILES
    return [
        (x, y, min(step_x, width - x), min(step_y, height - y))
        for y in range(0, height, step_y)
        for x in range(0, width, step_x)
    ]


def read_all(uri: str, proxy=None) -> tuple[float, int, int, int, int]:  # noqa: ANN001
    """(seconds, patches, work units, requests, bytes) reading every unit of a fresh slide."""
    from transforms.slides.reader import compressed_bytes, open_slide, read_level_region

    slide = open_slide(uri)
    before = len(proxy.gets) if proxy else 0
    patches = n_bytes = 0
    todo = units(slide)
    tw, th = slide.level_tiles[0]
    start = time.perf_counter()
    for region in todo:
        pixels = read_level_region(slide, 0, *region)
        n_bytes += compressed_bytes(slide, 0, region)
        patches += (pixels.shape[0] // th) * (pixels.shape[1] // tw)
    seconds = time.perf_counter() - start
    requests = len(proxy.gets) - before if proxy else 0
    slide.close()
    return seconds, patches, len(todo), requests, n_bytes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dicom", default="bench/out/cmu1_dicom")
    args = parser.parse_args()
    dicom = Path(args.dicom)
    if not dicom.is_dir():
        raise SystemExit(f"no DICOM copy at {dicom}: see this module's docstring to make one")

    import numpy as np
    import pydicom

    from localgcp.fault_proxy import FaultProxy
    from localgcp.orthanc import Orthanc
    from transforms.slides.reader import open_slide

    svs, dcm = open_slide(str(SVS)), open_slide(str(dicom))
    same = np.array_equal(svs.read(0, 0, 0, 2048, 2048), dcm.read(0, 0, 0, 2048, 2048))
    svs.close()
    dcm.close()
    with Orthanc(Path(tempfile.mkdtemp(prefix="bench-orthanc-"))) as server:
        for file in sorted(dicom.glob("*.dcm")):
            server.upload(file)
        ds = pydicom.dcmread(next(dicom.glob("*.dcm")), stop_before_pixels=True)
        with FaultProxy(server.endpoint) as proxy:
            web = server.series_uri(ds.StudyInstanceUID, ds.SeriesInstanceUID, proxy.endpoint)
            sources = {"SVS file": (str(SVS), None), "DICOM files": (str(dicom), None)}
            sources["DICOMweb (Orthanc)"] = (web, proxy)
            direct = server.series_uri(ds.StudyInstanceUID, ds.SeriesInstanceUID)
            sources["DICOMweb, no proxy"] = (direct, None)
            runs: dict[str, list] = {name: [] for name in sources}
            for _ in range(3):
                for name, (uri, counter) in sources.items():
                    runs[name].append(read_all(uri, counter))
    print(f"pixels of the SVS and its DICOM copy identical (2048 px region): {same}")
    print(f"{'source':22s} {'patches/s':>10s} {'units':>6s} {'req/unit':>9s} {'KB/unit':>8s}")
    for name, got in runs.items():
        rate = statistics.median(p / s for s, p, *_ in got)
        _, _, n_units, requests, n_bytes = got[-1]
        counted = sources[name][1] is not None
        per_unit = f"{requests / n_units:9.2f}" if counted else f"{'-':>9s}"
        print(f"{name:22s} {rate:10.0f} {n_units:6d} {per_unit} {n_bytes / n_units / 1e3:8.1f}")


if __name__ == "__main__":
    main()
