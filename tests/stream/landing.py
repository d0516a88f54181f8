"""What the stream tests share: a DICOM series stored level by level with a Healthcare-format
notification each (Orthanc sends none), and a bounded wait on a running stream."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STORE = "projects/local-project/locations/us/datasets/lab/dicomStores/wsi"
"""The DICOM store the notifications name (its DICOMweb root: ``--dicomweb_root``)."""


def store_series(store: Any, pubsub: Any, instances: list[Path], gap_s: float) -> tuple[str, str]:
    """Upload each instance to ``store`` (``gap_s`` apart) and publish its notification on topic
    ``dicom``; return the series' (study, series) UIDs."""
    import pydicom

    study = series = ""
    for i, path in enumerate(instances):
        if i:
            time.sleep(gap_s)  # the next level lands later
        store.upload(path)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        study, series = ds.StudyInstanceUID, ds.SeriesInstanceUID
        name = f"{STORE}/dicomWeb/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}"
        pubsub.publish("dicom", name.encode(), action="StoreInstances")
    return study, series


def wait_until(until: Callable[[], bool], timeout_s: float, proc: subprocess.Popen) -> None:
    """Poll ``until`` while the stream runs; fail if it exits or the bound passes."""
    deadline = time.monotonic() + timeout_s
    while not until():
        assert proc.poll() is None, "the stream exited"
        assert time.monotonic() < deadline, "not within the bound"
        time.sleep(0.5)
