"""The single-node test Slurm (tests/cluster/slurm.sh) from Python tests.

``ensure_slurm()`` brings the cluster up once per process and returns None, or fails/skips
through ``tests.support.require`` (CI=true: a Slurm that cannot start is a failure, with the
daemons' logs in the message). A cluster this process started is taken down when the
process exits; one that was already up before is left as it was.
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "slurm.sh"
SLURM_DIR = Path(os.environ.get("GATEWAY_SLURM_DIR", "/var/tmp/hpc-gateway-slurm"))
_lock = threading.Lock()
_state: dict = {}


def _sh(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def slurm_available() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "the test Slurm needs root"
    for cmd in ("slurmctld", "slurmd", "munged", "sbatch", "sudo"):
        if not (shutil.which(cmd) or os.path.exists(f"/usr/sbin/{cmd}")):
            return False, f"{cmd} is not installed (apt-get install slurm-wlm munge sudo)"
    return True, ""


def start_slurm() -> tuple[bool, str]:
    """Bring the cluster up (once per process). Returns (ok, why)."""
    with _lock:
        if "ok" in _state:
            return _state["ok"], _state["why"]
        ok, why = slurm_available()
        if ok:
            was_up = _sh("status", timeout=30).returncode == 0
            res = _sh("up")
            ok = res.returncode == 0
            if ok and not was_up:
                atexit.register(stop_slurm)
            why = "" if ok else (f"tests/cluster/slurm.sh up failed:\n{res.stdout}{res.stderr}\n"
                                 + _sh("logs").stdout[-6000:])
        _state.update(ok=ok, why=why)
        return ok, why


def ensure_slurm() -> None:
    from tests.support import require
    ok, why = start_slurm()
    require(ok, why)


def stop_slurm() -> None:
    _sh("down")


def slurm_up() -> None:
    """tests/cluster/slurm.sh up (idempotent), asserting that it worked."""
    res = _sh("up", timeout=180)
    assert res.returncode == 0, f"tests/cluster/slurm.sh up failed: {res.stdout}{res.stderr}"


@contextmanager
def slurmctld_stopped():
    """Stop slurmctld (SIGTERM via its pid file) and wait until it is gone; yields the
    monotonic time it was gone at, and always brings the cluster back up."""
    pid = int((SLURM_DIR / "run" / "slurmctld.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    try:
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{pid}"), "slurmctld did not stop"
        yield time.monotonic()
    finally:
        slurm_up()
