"""DICOM whole-slide images in a DICOMweb store (Orthanc, Cloud Healthcare API, ...).

A slide is one series: ``dicomweb+http(s)://HOST[:PORT]/PATH/studies/STUDY_UID/series/SERIES_UID``
(``PATH`` is the store's DICOMweb root, e.g. ``/dicom-web`` for Orthanc, or
``/v1/projects/P/locations/L/datasets/D/dicomStores/S/dicomWeb`` for the Healthcare API).
wsidicom fetches the frames (tiles) a read needs through WADO-RS. Every request has a timeout
(``PATHBEAM_IO_TIMEOUT_S``); 429, 5xx and dropped connections are retried with backoff and
counted in ``io_retries``. ``https`` stores are reached with Application Default Credentials
(google-auth); no token is ever put in a message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transforms.core import progress
from transforms.core.errors import SlideError
from transforms.core.remote_io import ATTEMPTS, io_timeout_s

if TYPE_CHECKING:
    from transforms.slides.dicom import Transfer

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
    match = _SERIES.match(uri.removeprefix("dicomweb+"))
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
    """A requests session for the store: ADC for https, timeouts and retries on every request;
    each response's requests and body bytes are added to ``transfer``."""
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
    send = session.request
    timeout = io_timeout_s()

    def request(method: str, url: str, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", timeout)
        response = send(method, url, **kwargs)
        if transfer is not None:
            transfer.add(len(response.content), requests=1)
        return response

    session.request = request
    return session


JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"


LOSSY_IMAGE_COMPRESSION = "00282110"


def frame_syntax(instances: list[dict[str, Any]]) -> str:
    """The transfer syntax to ask a store for, so that frames arrive with their stored pixels.

    Stores need not say how an instance is stored (Orthanc says neither
    AvailableTransferSyntaxUID nor the file's syntax), and a store transcodes to whatever is
    asked for. Lossy-compressed instances (Lossy Image Compression = "01") are asked for as JPEG
    Baseline, their usual stored syntax, so they come back as stored; anything else as JPEG-LS
    Lossless, a bit-exact transcoding that still compresses on the wire. Asking lossless data
    for JPEG Baseline (wsidicom's default) would return lossy pixels.
    """
    lossy = any(
        (m.get(LOSSY_IMAGE_COMPRESSION, {}).get("Value") or [""])[0] == "01" for m in instances
    )
    return JPEG_BASELINE if lossy else JPEG_LS_LOSSLESS


def open_series(uri: str, transfer: Transfer | None = None) -> Any:
    """The ``WsiDicom`` of one DICOMweb series, its requests and bytes added to ``transfer``.

    Raises:
      FileNotFoundError: the store has no such series (404).
      SlideError: the store refused the credentials (401/403), naming which were used.
    """
    from dicomweb_client.web import DICOMwebClient
    from requests.exceptions import HTTPError
    from wsidicom import WsiDicom, WsiDicomWebClient

    ref = parse_series(uri)
    web = DICOMwebClient(ref.root, session=session_for(ref, transfer))
    # Its own retry layer retries every exception 5 times with 1-17 s waits (35 s for one hung
    # request): the session already retries 429/5xx, and the operation retries timeouts.
    web.set_http_retry_params(retry=False)
    try:
        # One QIDO request: whether the series exists, and how its instances are compressed.
        instances = web.search_for_instances(
            ref.study_uid, ref.series_uid, fields=[LOSSY_IMAGE_COMPRESSION]
        )
        if not instances:
            raise FileNotFoundError(f"no such DICOMweb series: {uri}")
        return WsiDicom.open_web(
            WsiDicomWebClient(web),
            ref.study_uid,
            ref.series_uid,
            requested_transfer_syntax=frame_syntax(instances),
        )
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
