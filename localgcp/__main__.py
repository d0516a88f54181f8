"""``python -m localgcp [ROOT]``: run both emulators until Ctrl-C, printing the exports to use."""

from __future__ import annotations

import signal
import sys
import tempfile
from pathlib import Path

from localgcp.cluster import LocalGcp


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="localgcp-"))
    with LocalGcp(root.resolve()) as gcp:
        print("# emulators up; in another shell:")
        for name, value in gcp.env().items():
            print(f"export {name}={value}")
        sys.stdout.flush()
        stop = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        signal.sigwait(stop)


if __name__ == "__main__":
    main()
