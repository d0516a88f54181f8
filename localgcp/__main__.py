"""``python -m localgcp [ROOT]``: run the GCS and BigQuery emulators, and the Pub/Sub emulator
where it is installed, until Ctrl-C, printing the exports to use."""

from __future__ import annotations

import contextlib
import signal
import sys
import tempfile
from pathlib import Path

from localgcp.cluster import LocalGcp
from localgcp.pubsub import INSTALL, PubSubEmulator, emulator_binary


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="localgcp-"))
    with contextlib.ExitStack() as running:
        gcp = running.enter_context(LocalGcp(root.resolve()))
        env = gcp.env()
        if emulator_binary() is not None:
            env |= running.enter_context(PubSubEmulator(root.resolve() / "pubsub")).env()
        else:
            print(f"# no Pub/Sub emulator (for the stream): {INSTALL}")
        print("# emulators up; in another shell:")
        for name, value in env.items():
            print(f"export {name}={value}")
        sys.stdout.flush()
        stop = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        signal.sigwait(stop)


if __name__ == "__main__":
    main()
