"""LocalTransport specifics."""
from __future__ import annotations

import subprocess
import time

import pytest

from gateway.errors import SchedulerTimeout
from gateway.transports.local import LocalTransport


def test_a_timeout_does_not_wait_for_what_the_kill_cannot_end():
    """A command past its timeout is killed with its process group; something that still
    holds its output pipe (here a process that left the group; in real life one stuck on a
    hung mount, which no signal ends) must not keep the caller: before, the transport waited
    for the pipe to close, 31 s here."""
    marker = "31.4142"
    t0 = time.monotonic()
    try:
        with pytest.raises(SchedulerTimeout, match="within 1 s"):
            LocalTransport().run(["sh", "-c", f"setsid sleep {marker} & exec sleep 100"], timeout=1)
        assert time.monotonic() - t0 < 20, time.monotonic() - t0   # a hang guard (5 s grace)
    finally:
        subprocess.run(["pkill", "-f", f"sleep {marker}"], check=False)
