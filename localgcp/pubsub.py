"""The Pub/Sub emulator (Debian's ``google-cloud-cli-pubsub-emulator``) on a free 127.0.0.1 port,
with topics, subscriptions and publishing through the real client (``PUBSUB_EMULATOR_HOST``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Self

from localgcp.cluster import PROJECT, dying_with_parent, free_port, stop_group

LAUNCHER = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
INSTALL = "apt-get install google-cloud-cli-pubsub-emulator default-jre-headless"


def emulator_binary() -> str | None:
    """The emulator's launcher, if installed (it needs a Java runtime too)."""
    if os.path.exists(LAUNCHER) and shutil.which("java"):
        return LAUNCHER
    return None


class PubSubEmulator:
    """The emulator as a child process; ``env()`` points clients at it; ``stop()`` ends it."""

    def __init__(self, root: Path, project: str = PROJECT) -> None:
        self.root = Path(root)
        self.project = project
        self.port = free_port()
        self._proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"PUBSUB_EMULATOR_HOST": self.host, "PUBSUB_PROJECT_ID": self.project}

    def start(self, timeout_s: float = 60) -> Self:
        binary = emulator_binary()
        if binary is None:
            raise RuntimeError(f"the Pub/Sub emulator is not installed: {INSTALL}")
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.root / "pubsub.log"
        self._proc = subprocess.Popen(
            dying_with_parent([binary, "--host=127.0.0.1", f"--port={self.port}"]),
            cwd=self.root,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while b"Server started" not in log.read_bytes():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Pub/Sub emulator did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        return self

    def _clients(self):  # noqa: ANN202 - (publisher, subscriber)
        from google.cloud import pubsub_v1

        os.environ.update(self.env())
        return pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()

    def subscription(self, name: str) -> str:
        """Create topic ``name`` and a pull subscription ``name-sub`` on it; return the
        subscription's path (``projects/P/subscriptions/NAME-sub``)."""
        publisher, subscriber = self._clients()
        topic = publisher.topic_path(self.project, name)
        publisher.create_topic(name=topic)
        path = subscriber.subscription_path(self.project, f"{name}-sub")
        subscriber.create_subscription(name=path, topic=topic, ack_deadline_seconds=60)
        return path

    def publish(self, topic: str, data: bytes, **attributes: str) -> str:
        """Publish one message; return its id."""
        publisher, _ = self._clients()
        path = publisher.topic_path(self.project, topic)
        return publisher.publish(path, data, **attributes).result(timeout=30)

    def stop(self) -> None:
        if self._proc is not None:
            stop_group(self._proc)
        self._proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
