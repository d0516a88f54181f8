"""The emulators' processes never outlive what started them (``localgcp.cluster``)."""

from __future__ import annotations

import os
import time

from tests.processes import run_python


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # a zombie has died
    except FileNotFoundError:
        return False


def test_a_process_started_dying_with_its_parent_ends_when_the_parent_is_killed():
    """The parent is SIGKILLed (no teardown runs); its emulator-like child gets SIGTERM."""
    script = (
        "import os, signal, subprocess\n"
        "from localgcp.cluster import dying_with_parent\n"
        "child = subprocess.Popen(dying_with_parent(['sleep', '300']), start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = run_python("-c", script, timeout=60)
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    still = _alive(pid)
    if still:
        os.kill(pid, 9)
    assert not still, "the child outlived its killed parent"
