"""A real DICOMweb server for tests and offline runs: Orthanc with its DICOMweb plugin.

Debian's ``orthanc`` and ``orthanc-dicomweb`` packages (``scripts/setup.sh`` installs them where
apt-get can be used). ``Orthanc(root)`` starts one on a free 127.0.0.1 port with its storage under
``root``; ``upload`` stores DICOM files (``POST /instances``); ``series_uri`` gives the
``dicomweb+http://…/studies/S/series/S`` URI a slide manifest names.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Self

from localgcp.cluster import _wait_until_up, dying_with_parent, free_port

PLUGIN_FOLDERS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
INSTALL = "apt-get install orthanc orthanc-dicomweb"


def orthanc_binary() -> str | None:
    """The Orthanc executable with its DICOMweb plugin, or None where they are not installed."""
    binary = shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None
    )
    plugin = any(Path(f, "libOrthancDicomWeb.so").exists() for f in PLUGIN_FOLDERS) or any(
        p.name.startswith("libOrthancDicomWeb.so")
        for f in PLUGIN_FOLDERS
        if Path(f).is_dir()
        for p in Path(f).iterdir()
    )
    return binary if binary and plugin else None


def _plugin_path() -> str:
    for folder in PLUGIN_FOLDERS:
        for path in sorted(Path(folder).glob("libOrthancDicomWeb.so*")):
            return str(path)
    raise FileNotFoundError(f"the Orthanc DICOMweb plugin is not installed: {INSTALL}")


class Orthanc:
    """An Orthanc process with the DICOMweb plugin at ``/dicom-web``; stop() ends it."""

    def __init__(self, root: Path, users: dict[str, str] | None = None) -> None:
        """``users`` (name -> password) turns on HTTP basic authentication: requests without
        them are answered 401."""
        binary = orthanc_binary()
        if binary is None:
            raise FileNotFoundError(f"Orthanc with its DICOMweb plugin is not installed: {INSTALL}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = {
            "Name": "pathbeam-test",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "storage"),
            "HttpPort": self.port,
            "DicomPort": free_port(),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(users),
            "RegisteredUsers": users or {},
            "Plugins": [_plugin_path()],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }
        (self.root / "orthanc.json").write_text(json.dumps(config))
        self._log = self.root / "orthanc.log"
        self._binary = binary
        self._proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(
                dying_with_parent([self._binary, str(self.root / "orthanc.json")]),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _wait_until_up(f"{self.endpoint}/system", self._proc, self._log)
        return self

    def upload(self, path: Path) -> dict:
        """Store one DICOM file; Orthanc's answer (its ids of the instance, series, study)."""
        request = urllib.request.Request(
            f"{self.endpoint}/instances",
            data=Path(path).read_bytes(),
            headers={"Content-Type": "application/dicom"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.loads(answer.read())

    def series_uri(self, study_uid: str, series_uid: str, endpoint: str | None = None) -> str:
        """The manifest URI of one series; ``endpoint`` (e.g. a proxy's) instead of Orthanc's."""
        base = (endpoint or self.endpoint).replace("http://", "dicomweb+http://", 1)
        return f"{base}/dicom-web/studies/{study_uid}/series/{series_uid}"

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
