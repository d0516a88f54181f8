"""Notifications of both sources, in their real message layouts, become slides or are ignored."""

from __future__ import annotations

import pytest

from localgcp.notify import gcs_message
from transforms.stream.notifications import Ignored, Landed, parse

STORE = "projects/p/locations/us/datasets/d/dicomStores/wsi"


def test_a_finalized_slide_object_lands_with_its_metadata_as_manifest_columns():
    data, attributes = gcs_message(
        "scans", "scanner-2/2026/s17.svs", 1733, metadata={"case_id": "c9", "mpp": "0.25"}
    )
    landed = parse(data, attributes, 1000.0)
    assert isinstance(landed, Landed)
    assert landed.manifest_row() == {
        "case_id": "c9",
        "mpp": "0.25",
        "slide_id": "scanner-2/2026/s17",
        "uri": "gs://scans/scanner-2/2026/s17.svs",
    }
    assert landed.key == "gs://scans/scanner-2/2026/s17.svs#1733"
    again = parse(*gcs_message("scans", "scanner-2/2026/s17.svs", 1734), 1001.0)
    assert again.key != landed.key  # a new generation is a new slide version


@pytest.mark.parametrize(
    "name, event, extra, reason",
    [
        ("notes/readme.txt", "OBJECT_FINALIZE", {}, "suffix"),
        ("s1.svs", "OBJECT_DELETE", {}, "event OBJECT_DELETE"),
        ("s1.svs", "OBJECT_METADATA_UPDATE", {}, "event"),
        ("fake.tiff", "OBJECT_FINALIZE", {"contentType": "image/png"}, "content type"),
    ],
)
def test_what_is_not_a_new_slide_is_ignored_with_its_reason(name, event, extra, reason):
    ignored = parse(*gcs_message("scans", name, event=event, **extra), 0.0)
    assert isinstance(ignored, Ignored) and reason in ignored.reason


def test_a_dicom_instance_notification_names_its_series_in_the_store():
    name = f"{STORE}/dicomWeb/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5".encode()
    attributes = {"action": "StoreInstances", "studyInstanceUID": "1.2.3"}
    landed = parse(name, attributes, 5.0)
    assert isinstance(landed, Landed) and landed.source == "dicom"
    assert landed.uri == (
        f"dicomweb+https://healthcare.googleapis.com/v1/{STORE}/dicomWeb/studies/1.2.3/series/1.2.3.4"
    )
    assert (landed.slide_id, landed.instance_uid) == ("1.2.3.4", "1.2.3.4.5")
    local = parse(name, {}, 5.0, {STORE: "http://127.0.0.1:8042/dicom-web"})
    assert local.uri == "dicomweb+http://127.0.0.1:8042/dicom-web/studies/1.2.3/series/1.2.3.4"
    deleted = parse(name, {"action": "DeleteInstance"}, 5.0)
    assert isinstance(deleted, Ignored)


@pytest.mark.parametrize("data, attributes", [(b"hello", {}), (b"projects/p/oops", {})])
def test_a_message_of_neither_source_is_an_error(data, attributes):
    with pytest.raises(ValueError):
        parse(data, attributes, 0.0)
