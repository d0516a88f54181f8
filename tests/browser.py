"""A real headless Chromium driven through the DevTools protocol (CDP over a websocket): open a
``file://`` page with the network cut off, run JavaScript in it, take screenshots.

No browser download: Debian's ``chromium`` (``scripts/setup.sh`` installs it).
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

INSTALL = "apt-get install chromium"


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip(f"headless Chromium is not installed: {INSTALL}")
    return found


class Browser:
    """One headless Chromium with one page. The network is cut off (a proxy on a closed port),
    so a page that loads did so from the file system alone; ``requests`` lists every URL the
    page asked for."""

    def __init__(self, width: int = 1200, height: int = 800) -> None:
        self._profile = tempfile.mkdtemp(prefix="chromium-")
        self._process = subprocess.Popen(
            [
                chromium_path(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--proxy-server=127.0.0.1:9",  # no network: anything not on disk fails
                "--remote-debugging-port=0",
                f"--user-data-dir={self._profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        url = self._devtools_url()
        page = self._page_target(url)
        from websockets.sync.client import connect

        self._ws = connect(page, max_size=64 << 20)
        self._ids = itertools.count(1)
        self.requests: list[str] = []
        self.call("Page.enable")
        self.call("Network.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def _devtools_url(self) -> str:
        assert self._process.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self._process.stderr.readline()
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            if found:
                return found.group(1)
        raise RuntimeError("Chromium did not start its DevTools endpoint")

    @staticmethod
    def _page_target(browser_ws: str) -> str:
        import urllib.request

        port = re.search(r":(\d+)/", browser_ws).group(1)  # type: ignore[union-attr]
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
            targets = json.load(answer)
        return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")

    def call(self, method: str, **params: Any) -> dict:
        """Send one CDP command; return its result (events that arrive meanwhile are noted)."""
        ident = next(self._ids)
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=120))
            if message.get("method") == "Network.requestWillBeSent":
                self.requests.append(message["params"]["request"]["url"])
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def open(self, page: Path) -> None:
        self.call("Page.navigate", url=page.as_uri())
        self.wait_for("document.readyState === 'complete'")

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression (a promise is awaited)."""
        result = self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, condition: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.eval(f"Boolean({condition})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout} s for {condition}")
            time.sleep(0.2)

    def screenshot(self, path: Path | None = None) -> np.ndarray:
        """The page as an ``H x W x 3`` array (also saved as a PNG at ``path``)."""
        from PIL import Image

        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        if path is not None:
            path.write_bytes(data)
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def close(self) -> None:
        try:
            self._ws.close()
        finally:
            self._process.kill()
            self._process.wait(timeout=30)
            shutil.rmtree(self._profile, ignore_errors=True)
