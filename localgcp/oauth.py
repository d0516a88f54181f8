"""A local OAuth token endpoint and the Application Default Credentials file that points at it.

Beam's GCS client asks ``google.auth.default()`` for credentials and, when there are none, retries
for about 20 s per process before it connects anonymously. Local runs against the emulators get
a service-account ADC file instead, with a key made here and a ``token_uri`` that is this server:
every client (Beam, gcsfs, google-cloud-*) then finds credentials at once and refreshes them
here, offline. (An ``authorized_user`` file would not do: google-auth ignores its token_uri.)
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from localgcp.background import BackgroundServer


class _TokenHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps(
            {"access_token": "local-token", "expires_in": 3600, "token_type": "Bearer"}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class TokenServer(BackgroundServer):
    """Serves ``POST /token`` on 127.0.0.1 from a daemon thread."""

    def __init__(self, port: int = 0) -> None:
        super().__init__(_TokenHandler, port)

    @property
    def token_uri(self) -> str:
        return f"{self.endpoint}/token"


def write_adc_file(path: Path, token_uri: str, project: str) -> Path:
    """A service-account key file, with a fresh RSA key, whose tokens come from ``token_uri``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": project,
                "private_key_id": "local",
                "private_key": pem,
                "client_email": f"local@{project}.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": token_uri,
            }
        )
    )
    return path
