"""Notifications through the real Pub/Sub emulator to slides, on the streaming direct runner:
Cloud Storage notifications for three slides (one announced twice), a non-slide object and a
malformed message, and a DICOM series in Orthanc whose two instances are stored 10 s apart
(each with a Healthcare-format notification published by the test, as Orthanc publishes none).
Within a bounded time: each slide once, the series once and after its second instance, the
non-slide ignored, the malformed message a dead letter. The stream is then stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localgcp.cluster import stop_group
from localgcp.notify import gcs_message
from localgcp.orthanc import INSTALL as ORTHANC_INSTALL
from localgcp.orthanc import Orthanc, orthanc_binary
from localgcp.pubsub import INSTALL, PubSubEmulator, emulator_binary
from tests.conftest import REPO
from tests.stream.landing import STORE, store_series, wait_until

pytestmark = pytest.mark.gcp


def _read(folder: Path, kind: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"{kind}-*.json"))]


def test_each_landed_slide_comes_out_once_and_a_dicom_series_once_it_is_whole(
    tmp_path, shared_data
):
    if emulator_binary() is None:
        pytest.skip(f"the Pub/Sub emulator is not installed: {INSTALL}")
    if orthanc_binary() is None:
        pytest.skip(f"Orthanc with its DICOMweb plugin is not installed: {ORTHANC_INSTALL}")
    import pydicom

    instances = sorted((shared_data / "dicom_openslide_boxes").glob("*.dcm"))
    first = pydicom.dcmread(instances[0], stop_before_pixels=True)
    study, series = first.StudyInstanceUID, first.SeriesInstanceUID
    out = tmp_path / "out"
    with PubSubEmulator(tmp_path / "pubsub") as pubsub, Orthanc(tmp_path / "orthanc") as store:
        gcs_sub, dicom_sub = pubsub.subscription("scans"), pubsub.subscription("dicom")
        env = {**os.environ, **pubsub.env()}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.stream.notifications_driver", str(out), gcs_sub,
             dicom_sub, "--root", f"{STORE}={store.endpoint}/dicom-web", "--quiet_s", "15"],
            cwd=REPO, env=env, stdout=(tmp_path / "stream.log").open("wb"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            for name in ("s1.svs", "s2.ndpi", "s3.tiff", "s1.svs", "readme.txt"):
                data, attributes = gcs_message("scans", name)
                pubsub.publish("scans", data, **attributes)
            pubsub.publish("scans", b"not a notification")
            store_series(store, pubsub, instances, gap_s=10)  # the 2nd level 10 s later
            second_at = time.monotonic()
            wait_until(lambda: len(_read(out, "slides")) >= 4, 120, proc)
            series_seen = time.monotonic()
            time.sleep(5)  # a duplicate, were there one, would have landed by now
        finally:
            stop_group(proc, 20)
    slides = _read(out, "slides")
    assert sorted(s["slide_id"] for s in slides) == sorted(["s1", "s2", "s3", series])
    [dicom] = [s for s in slides if s["slide_id"] == series]
    assert dicom["uri"] == store.series_uri(study, series)
    assert dicom["instances"] == str(len(instances))  # processed after its second level
    assert series_seen - second_at >= 14  # and only once that level had been quiet for 15 s
    assert [i["uri"] for i in _read(out, "ignored")] == ["gs://scans/readme.txt"]
    [dead] = _read(out, "dead_letters")
    assert dead["stage"] == "ReadNotifications"


def test_localgcp_notify_publishes_an_objects_notification_as_cloud_storage_would(
    tmp_path, local_gcp, shared_data, monkeypatch, capsys
):
    """``python -m localgcp.notify``: what a new user runs to try the stream locally. The
    message carries the object's real generation and metadata, and the stream reads it as the
    slide it is."""
    if emulator_binary() is None:
        pytest.skip(f"the Pub/Sub emulator is not installed: {INSTALL}")
    from google.cloud import pubsub_v1

    from localgcp.notify import main
    from transforms.stream.notifications import Landed, parse

    uri = local_gcp.upload(shared_data / "generic_tiff_boxes/boxes.tiff", "gs://lab/2026/b1.tiff")
    blob = local_gcp.storage().bucket("lab").get_blob("2026/b1.tiff")
    with PubSubEmulator(tmp_path / "pubsub") as pubsub:
        for name, value in pubsub.env().items():
            monkeypatch.setenv(name, value)
        main([uri, "--topic", "lab", "--metadata", "case_id=c7"])
        main([uri, "--topic", "lab"])  # the topic and subscription exist now: reused
        subscription = capsys.readouterr().out.split()[-1]
        pulled = pubsub_v1.SubscriberClient().pull(subscription=subscription, max_messages=10)
    messages = [m.message for m in pulled.received_messages]
    assert len(messages) == 2
    landed = parse(messages[0].data, dict(messages[0].attributes), 0.0)
    assert isinstance(landed, Landed)
    assert landed.uri == uri and landed.key.endswith(str(blob.generation))
    assert landed.manifest_row()["case_id"] == "c7"
