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


def test_commands_do_not_get_the_gateways_own_variables(monkeypatch, tmp_path):
    """Under gunicorn PROMETHEUS_MULTIPROC_DIR names the gateway's metrics directory: a
    job's prometheus_client would write there (and appear in /metrics), or fail where the
    directory does not exist."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setenv("HPCGW_METRICS_MASTER", "1")
    monkeypatch.setenv("GATEWAY_CONFIG", "/etc/hpc-gateway/gateway.yaml")
    monkeypatch.setenv("SITE_SETTING", "kept")
    t = LocalTransport()
    for env in (None, {"EXTRA": "1"}):
        out = t.run(["env"], env=env).stdout.decode()
        names = {line.split("=", 1)[0] for line in out.splitlines()}
        assert "SITE_SETTING" in names and "PATH" in names
        assert not names & {"PROMETHEUS_MULTIPROC_DIR", "HPCGW_METRICS_MASTER", "GATEWAY_CONFIG"}, names
    proc = t.popen(["env"], stdout=subprocess.PIPE)
    assert b"PROMETHEUS_MULTIPROC_DIR" not in proc.communicate(timeout=10)[0]
