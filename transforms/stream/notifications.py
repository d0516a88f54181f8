"""Pub/Sub notifications -> slides that landed.

Two sources announce new data:

- **Cloud Storage** (``gcloud storage buckets notifications create --event-types=OBJECT_FINALIZE
  --payload-format=json``): attributes ``eventType``, ``bucketId``, ``objectId``,
  ``objectGeneration``; data: the object's JSON resource (``name``, ``bucket``, ``generation``,
  ``contentType``, ``metadata``). Object metadata carries manifest columns (``slide_id``,
  ``case_id``, ``mpp``, ``tissue_method``, ...).
- **Cloud Healthcare API DICOM stores** (``notificationConfigs``): data is the instance's
  resource name ``projects/…/dicomStores/S/dicomWeb/studies/ST/series/SE/instances/I``;
  attributes (newer configs) ``action``, ``studyInstanceUID``, ``seriesInstanceUID``,
  ``sopInstanceUID``. A slide is its series.

``parse`` gives a ``Landed`` (a slide, keyed for de-duplication: the object and its generation,
or the series) or an ``Ignored`` (not a slide, or not an event that adds one), never an error for
a well-formed message of either source; a malformed message raises ``ValueError`` and becomes a
dead letter.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

SLIDE_SUFFIXES = (
    ".svs", ".ndpi", ".tif", ".tiff", ".scn", ".bif", ".vms", ".mrxs", ".svslide", ".dcm",
)  # fmt: skip
"""Object names that are slides; anything else in the bucket is ignored (with a counter)."""
NOT_SLIDE_TYPES = ("text/", "application/json", "application/pdf", "image/jpeg", "image/png")
"""Content types that are never a slide, whatever the object's name says."""
ADDING_ACTIONS = ("StoreInstances", "ImportDicomData", "")
"""DICOM store actions that add instances (empty: an older config without attributes)."""
HEALTHCARE_DICOMWEB = "https://healthcare.googleapis.com/v1"
"""Where a Healthcare API resource name is reached (``…/{store}/dicomWeb``)."""

_INSTANCE = re.compile(
    r"^(?P<store>projects/[^/]+/locations/[^/]+/datasets/[^/]+/dicomStores/[^/]+)/dicomWeb/"
    r"studies/(?P<study>[0-9.]+)/series/(?P<series>[0-9.]+)/instances/(?P<instance>[0-9.]+)$"
)


@dataclass(frozen=True)
class Landed:
    """A slide that landed: its manifest row (``slide_id``, ``uri`` and any metadata columns),
    the key its rows are de-duplicated by, when it was published (seconds since the epoch),
    and, for a DICOM series, the instance that announced it."""

    slide_id: str
    uri: str
    key: str
    published_s: float
    source: str
    metadata: dict[str, str] = field(default_factory=dict)
    instance_uid: str | None = None

    def manifest_row(self) -> dict[str, Any]:
        return {**self.metadata, "slide_id": self.slide_id, "uri": self.uri}


@dataclass(frozen=True)
class Ignored:
    """A message that announces no slide, and why (counted, never dead-lettered)."""

    reason: str
    what: str


def _gcs(data: bytes, attributes: dict[str, str], published_s: float) -> Landed | Ignored:
    event = attributes.get("eventType", "")
    bucket, name = attributes.get("bucketId", ""), attributes.get("objectId", "")
    resource = json.loads(data.decode("utf-8")) if data else {}
    bucket = bucket or resource.get("bucket", "")
    name = name or resource.get("name", "")
    if not bucket or not name:
        raise ValueError("a Cloud Storage notification without bucketId and objectId")
    uri = f"gs://{bucket}/{name}"
    if event != "OBJECT_FINALIZE":
        return Ignored(f"event {event}", uri)
    if not name.lower().endswith(SLIDE_SUFFIXES):
        return Ignored("not a slide (suffix)", uri)
    if str(resource.get("contentType", "")).startswith(NOT_SLIDE_TYPES):
        return Ignored("not a slide (content type)", uri)
    generation = attributes.get("objectGeneration") or str(resource.get("generation", ""))
    metadata = {str(k): str(v) for k, v in (resource.get("metadata") or {}).items()}
    slide_id = metadata.pop("slide_id", None) or posixpath.splitext(name)[0]
    return Landed(slide_id, uri, f"{uri}#{generation}", published_s, "gcs", metadata)


def dicomweb_root(store: str, roots: dict[str, str]) -> str:
    """The DICOMweb root of a DICOM store (its resource name): the one given for it, else the
    Healthcare API's."""
    return roots.get(store) or f"{HEALTHCARE_DICOMWEB}/{store}/dicomWeb"


def _dicom(
    data: bytes, attributes: dict[str, str], published_s: float, roots: dict[str, str]
) -> Any:
    name = data.decode("utf-8").strip()
    match = _INSTANCE.fullmatch(name)
    if match is None:
        raise ValueError(f"not a DICOM store instance name: {name[:200]!r}")
    action = attributes.get("action", "")
    if action not in ADDING_ACTIONS:
        return Ignored(f"action {action}", name)
    root = dicomweb_root(match["store"], roots).rstrip("/")
    uri = f"dicomweb+{root}/studies/{match['study']}/series/{match['series']}"
    return Landed(match["series"], uri, uri, published_s, "dicom", instance_uid=match["instance"])


def parse(
    data: bytes,
    attributes: dict[str, str] | None,
    published_s: float,
    dicomweb_roots: dict[str, str] | None = None,
) -> Landed | Ignored:
    """One Pub/Sub message of either source; ``ValueError`` if it is neither.
    ``dicomweb_roots``: a DICOM store's resource name -> its DICOMweb root, where it is not the
    Healthcare API's (a test's Orthanc)."""
    attributes = dict(attributes or {})
    if "eventType" in attributes or "bucketId" in attributes:
        return _gcs(data, attributes, published_s)
    if data.startswith(b"projects/"):
        return _dicom(data, attributes, published_s, dicomweb_roots or {})
    raise ValueError(
        "neither a Cloud Storage notification (no eventType attribute) nor a DICOM store one "
        "(data is not a projects/… resource name)"
    )
