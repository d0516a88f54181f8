"""Start the GCS and BigQuery emulators (and the token endpoint) on free 127.0.0.1 ports.

Both emulators share one folder: the GCS emulator keeps objects as files under
``<root>/.cloudstorage/<bucket>/<name>``, and bqemulator resolves a load job's ``gs://`` URIs
under the same folder, so Beam's FILE_LOADS (files staged in GCS, then a load job) works as on GCP.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from localgcp.oauth import TokenServer, write_adc_file

PROJECT = "local-project"


def dying_with_parent(argv: list[str]) -> list[str]:
    """``argv`` run so that Linux sends it SIGTERM when the process that started it dies
    (util-linux's ``setpriv --pdeathsig``, kept across exec), so emulators never outlive a test
    run that was killed before its teardown.

    Not a ``preexec_fn``: Python code between fork and exec is unsafe in a process with threads.
    A test run hung that way, in gRPC's fork handler, once an in-process Pub/Sub client had
    started gRPC's threads; without a ``preexec_fn``, subprocess spawns with vfork and runs no
    fork handlers."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else list(argv)


def stop_group(proc: subprocess.Popen, timeout_s: float = 10) -> None:
    """End ``proc``'s process group: SIGTERM, then SIGKILL if it is still there after
    ``timeout_s``."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"emulator exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except urllib.error.HTTPError:
            return  # it answers (e.g. 401 from a server that wants credentials): it is up
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"emulator at {url} not up after {timeout_s:.0f} s: {log}")


class LocalGcp:
    """The emulators as child processes; ``env()`` points clients at them; ``stop()`` ends them."""

    def __init__(self, root: Path, project: str = PROJECT) -> None:
        self.root = Path(root)
        self.project = project
        self.gcs_port = free_port()
        self.bigquery_port = free_port()
        self._procs: list[subprocess.Popen] = []
        self._tokens: TokenServer | None = None

    @property
    def gcs_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.gcs_port}"

    @property
    def bigquery_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.bigquery_port}"

    def env(self) -> dict[str, str]:
        return {
            "STORAGE_EMULATOR_HOST": self.gcs_endpoint,
            "BIGQUERY_EMULATOR_HOST": self.bigquery_endpoint,
            "GOOGLE_APPLICATION_CREDENTIALS": str(self.root / "adc.json"),
            "GOOGLE_CLOUD_PROJECT": self.project,
            # gcsfs 2026.10 otherwise makes a ~30 s gRPC bucket-type lookup per open.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }

    def storage(self):  # noqa: ANN201 - google.cloud.storage.Client
        """A google-cloud-storage client on the emulator."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project=self.project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.gcs_endpoint},
        )

    def bigquery(self):  # noqa: ANN201 - google.cloud.bigquery.Client
        """A google-cloud-bigquery client on the emulator."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(
            project=self.project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.bigquery_endpoint},
        )

    def upload(self, local: Path, uri: str) -> str:
        """Copy a local file to ``gs://bucket/name`` (creating the bucket); return the URI."""
        bucket_name, _, name = uri.removeprefix("gs://").partition("/")
        client = self.storage()
        bucket = client.lookup_bucket(bucket_name) or client.create_bucket(bucket_name)
        bucket.blob(name).upload_from_filename(str(local))
        return uri

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = self.root / f"{name}.log"
        proc = subprocess.Popen(
            dying_with_parent(argv),
            cwd=self.root,
            env={**os.environ, **env},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._procs.append(proc)
        return proc

    def start(self) -> LocalGcp:
        self.root.mkdir(parents=True, exist_ok=True)
        self._tokens = TokenServer().start()
        write_adc_file(self.root / "adc.json", self._tokens.token_uri, self.project)
        bin_dir = Path(sys.executable).parent
        gcs = self._spawn(
            "gcs",
            [str(bin_dir / "gcp-storage-emulator"), "start", "--port", str(self.gcs_port), "-q"],
            {"STORAGE_BASE": str(self.root)},
        )
        bigquery = self._spawn(
            "bigquery",
            [
                sys.executable,
                "-m",
                "localgcp.bigquery_emulator",
                "start",
                "--rest-port",
                str(self.bigquery_port),
                "--grpc-port",
                str(free_port()),
                "--project",
                self.project,
                "--log-level",
                "error",
            ],
            {
                "BQEMU_GCS_LOCAL_ROOT": str(self.root / ".cloudstorage"),
                "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            },
        )
        try:
            _wait_until_up(
                f"{self.gcs_endpoint}/storage/v1/b?project={self.project}",
                gcs,
                self.root / "gcs.log",
            )
            _wait_until_up(
                f"{self.bigquery_endpoint}/bigquery/v2/projects/{self.project}/datasets",
                bigquery,
                self.root / "bigquery.log",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self._procs:
            stop_group(proc)
        self._procs.clear()
        if self._tokens is not None:
            self._tokens.stop()
            self._tokens = None

    def __enter__(self) -> LocalGcp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
