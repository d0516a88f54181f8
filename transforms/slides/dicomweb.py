"""DICOM whole-slide images in a DICOMweb store (Orthanc, Cloud Healthcare API, ...).

A slide is one series: ``dicomweb+http(s)://HOST[:PORT]/PATH/studies/STUDY_UID/series/SERIES_UID``
(``PATH`` is the store's DICOMweb root, e.g. ``/dicom-web`` for Orthanc, or
``/v1/projects/P/locations/L/datasets/D/dicomStores/S/dicomWeb`` for the Healthcare API).
wsidicom fetches the frames (tiles) a read needs through WADO-RS, each in the syntax it is stored
in (``stored_syntax``), decoded here: no store transcodes, so pixels equal the local file's.
Every request has a timeout
(``PATHBEAM_IO_TIMEOUT_S``); 429, 5xx and dropped connections are retried with backoff and
counted in ``io_retries``. ``https`` stores are reached with Application Default Credentials
(google-auth); no token is ever put in a message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from transforms.core import progress
from transforms.core.errors import SlideError
from transforms.core.remote_io import ATTEMPTS, bound_session
from transforms.slides.dicom import DicomSlideFile
from transforms.slides.readers import Reader
from transforms.slides.transfer import Transfer

SCHEMES = ("dicomweb+http://", "dicomweb+https://")
_SERIES = re.compile(
    r"^(?P<root>https?://.+?)/studies/(?P<study>[0-9.]+)/series/(?P<series>[0-9.]+)/?$"
)
RETRIED_STATUS = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class SeriesRef:
    """One DICOMweb series: the store's root URL and the study and series UIDs."""

    root: str
    study_uid: str
    series_uid: str


def is_dicomweb(uri: str) -> bool:
    return uri.startswith(SCHEMES)


def parse_series(uri: str) -> SeriesRef:
    """``dicomweb+http(s)://…/studies/S/series/S`` -> ``SeriesRef``; ``SlideError`` if malformed."""
    match = _SERIES.fullmatch(uri.removeprefix("dicomweb+"))
    if match is None:
        raise SlideError(
            f"not a DICOMweb series URI: {uri!r}; expected "
            "dicomweb+http(s)://HOST/DICOMWEB_ROOT/studies/STUDY_UID/series/SERIES_UID"
        )
    return SeriesRef(match["root"], match["study"], match["series"])


def _retry_policy() -> Any:
    from urllib3.util.retry import Retry

    class CountedRetry(Retry):
        def increment(self, *args: Any, **kwargs: Any) -> Any:
            progress.count("io_retries")
            return super().increment(*args, **kwargs)

    return CountedRetry(
        total=ATTEMPTS - 1,
        read=0,  # a request that timed out is retried by the operation (retry_transient)
        backoff_factor=0.5,
        status_forcelist=RETRIED_STATUS,
        allowed_methods=frozenset({"GET"}),
        raise_on_status=False,
    )


def credentials_used(ref: SeriesRef) -> str:
    """Which credentials a request to ``ref`` carries, for messages (never a token)."""
    if not ref.root.startswith("https://"):
        return "no credentials (plain http)"
    try:
        import google.auth

        credentials, project = google.auth.default()
    except Exception as exc:  # noqa: BLE001 - described, not raised
        return f"no Application Default Credentials ({type(exc).__name__})"
    who = getattr(credentials, "service_account_email", None) or type(credentials).__name__
    return f"Application Default Credentials ({who}, project {project})"


def session_for(ref: SeriesRef, transfer: Transfer | None = None) -> Any:
    """A requests session for the store: ADC for https, timeouts and retries on every request,
    each body read whole within ``PATHBEAM_IO_DEADLINE_S`` and at most what was asked for can
    hold (``response_cap``); each response's requests and body bytes are added to
    ``transfer``."""
    limits = {"frame_bytes": DEFAULT_FRAME_BYTES}
    import requests
    from requests.adapters import HTTPAdapter

    if ref.root.startswith("https://"):
        import google.auth
        from google.auth.transport.requests import AuthorizedSession

        credentials, _ = google.auth.default(
            scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
        session: Any = AuthorizedSession(credentials)
    else:
        session = requests.Session()
    adapter = HTTPAdapter(max_retries=_retry_policy())
    session.mount("http://", adapter)
    session.mount("https://", adapter)

    def counted(body: bytes) -> None:
        if transfer is not None:
            transfer.add(len(body), requests=1)

    bound_session(session, lambda url: response_cap(url, limits), counted)
    session.pathbeam_limits = limits
    return session


FRAMING_BYTES = 16 << 10
"""Multipart headers and boundaries around one frame, at most."""
DEFAULT_FRAME_BYTES = 4096 * 4096 * 3 * 2
"""A frame's cap before the series' tile sizes are known: a 4096 px tile, 3 samples of 16 bits."""
METADATA_BYTES = 64 << 20
"""A QIDO search or an instance's metadata: 64 MiB at most."""
_FRAMES = re.compile(r"/frames/([0-9,]+)$")


def response_cap(url: str, limits: dict[str, int]) -> int:
    """The most bytes a response to ``url`` may hold: for frames, each frame's uncompressed
    tile bytes plus framing (a frame cannot be larger); else ``METADATA_BYTES``."""
    frames = _FRAMES.search(url.split("?", 1)[0])
    if frames is None:
        return METADATA_BYTES
    return len(frames[1].split(",")) * (limits["frame_bytes"] + FRAMING_BYTES)


AS_STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
"""Accept header of a WADO-RS frame request asking for the frame as the store holds it."""
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
WSI_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"
SOP_CLASS_UID, SOP_INSTANCE_UID = "00080016", "00080018"
_SYNTAX = re.compile(rb"transfer-syntax\s*=\s*\"?([0-9.]+)", re.IGNORECASE)


def stored_syntax(session: Any, ref: SeriesRef, instance_uid: str) -> str:
    """The transfer syntax an instance's frames are stored in, read from the store's answer to
    one frame asked for as stored (``AS_STORED``): frame 1, a tile's bytes.

    Stores need not list AvailableTransferSyntaxUID (Orthanc does not), and a store asked for
    another syntax transcodes: lossy instances re-encoded, or a 500 where it cannot (Orthanc
    1.10 on JPEG 2000). Frames asked for in their stored syntax come back untouched, and are
    decoded here with the same codecs as a local file's, so pixels equal the file's.
    """
    url = (
        f"{ref.root}/studies/{ref.study_uid}/series/{ref.series_uid}/instances/"
        f"{instance_uid}/frames/1"
    )
    response = session.get(url, headers={"Accept": AS_STORED})
    response.raise_for_status()
    header = response.headers.get("Content-Type", "").encode("latin-1", "replace")
    head = response.content[:4096]
    parts = head.split(b"\r\n\r\n", 1)[0]  # the first part's headers
    for text in (header, parts):
        found = _SYNTAX.search(text)
        if found:
            return found[1].decode()
    if b"application/octet-stream" in header + parts:
        return EXPLICIT_VR_LITTLE_ENDIAN  # DICOM PS3.18: octet-stream without a syntax
    raise SlideError(
        f"the DICOMweb store did not say how instance {instance_uid} is stored (frame 1 came "
        f"back as {header.decode('latin-1')!r})"
    )


def _first(item: dict[str, Any], tag: str) -> str:
    return str((item.get(tag, {}).get("Value") or [""])[0])


def open_series(uri: str, transfer: Transfer | None = None) -> Any:
    """The ``WsiDicom`` of one DICOMweb series, its requests and bytes added to ``transfer``.

    Raises:
      FileNotFoundError: the store has no such series (404).
      SlideError: the store refused the credentials (401/403), naming which were used.
    """
    from dicomweb_client.web import DICOMwebClient
    from requests.exceptions import HTTPError
    from wsidicom import WsiDicom, WsiDicomWebClient

    class AsStored(WsiDicomWebClient):
        """Reports each instance's stored syntax as the one it has, so wsidicom asks for it,
        and hands frames over as bytes."""

        def get_wsi_instances(self, study_uid: Any, series_uids: Any) -> Any:
            for series, instance, _ in super().get_wsi_instances(study_uid, series_uids):
                yield series, instance, {syntaxes[str(instance)]}

        def get_frames(self, *args: Any, **kwargs: Any) -> Any:
            # dicomweb-client yields bytearrays; pydicom's uncompressed decoder takes bytes only
            return (bytes(frame) for frame in super().get_frames(*args, **kwargs))

    ref = parse_series(uri)
    session = session_for(ref, transfer)
    web = DICOMwebClient(ref.root, session=session)
    # Its own retry layer retries every exception 5 times with 1-17 s waits (35 s for one hung
    # request): the session already retries 429/5xx, and the operation retries timeouts.
    web.set_http_retry_params(retry=False)
    try:
        # One QIDO request: whether the series exists, and its instances; then one frame of
        # each image instance, asked for as stored, says how its frames are stored.
        instances = web.search_for_instances(ref.study_uid, ref.series_uid)
        if not instances:
            raise FileNotFoundError(f"no such DICOMweb series: {uri}")
        syntaxes = {
            _first(item, SOP_INSTANCE_UID): stored_syntax(
                session, ref, _first(item, SOP_INSTANCE_UID)
            )
            for item in instances
            if _first(item, SOP_CLASS_UID) in ("", WSI_STORAGE)
        }
        wsi = WsiDicom.open_web(
            AsStored(web),
            ref.study_uid,
            ref.series_uid,
            requested_transfer_syntax=sorted(set(syntaxes.values())),
        )
        session.pathbeam_limits["frame_bytes"] = max_tile_bytes(wsi)
        return wsi
    except HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 404:
            raise FileNotFoundError(f"no such DICOMweb series: {uri}") from exc
        if status in (401, 403):
            raise SlideError(
                f"the DICOMweb store refused access ({status}) with {credentials_used(ref)}; "
                "grant it roles/healthcare.dicomViewer on the store"
            ) from exc
        raise


def max_tile_bytes(wsi: Any) -> int:
    """The largest uncompressed tile of an open series (3 samples of 16 bits at most)."""
    tiles = [lv.tile_size.width * lv.tile_size.height for lv in wsi.levels]
    return max(tiles, default=4096 * 4096) * 3 * 2


def open_web_slide(uri: str) -> DicomSlideFile:
    """A DICOMweb series behind the ``reader.Slide`` interface."""
    transfer = Transfer()
    return DicomSlideFile(open_series(uri, transfer), [], transfer)


READER = Reader("DICOMweb", SCHEMES, None, open_web_slide)
"""A series in a DICOMweb store, by its URI's scheme."""
