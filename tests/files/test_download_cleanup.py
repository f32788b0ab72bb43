"""A download whose client stops early must not leave its ``dd`` behind.

A download is ``dd``'s stdout piped into the response (gateway.files.channels.PipeChannel).
Whether the WSGI server closes the response (client gone, or HEAD) or the response is dropped
unclosed (its generator garbage-collected), the tool must be killed and reaped and its pipe
closed within seconds: a leftover ``dd`` blocks on the full pipe (locally: for ever).
Runs through the real app (Flask test client, mock backend) as the service account and, as
root, as the user through ``sudo``.
"""
from __future__ import annotations

import gc
import os
import shutil
import tempfile
import time

import pytest

from gateway import create_app
from gateway.auth.users_file import UsersFile
from tests.support import ensure_user, require

PREFIX = "/aip/v9.2"
SIZE = 64 * 1024 * 1024
PASSWORD = "pw-download-123"


@pytest.fixture(params=["service", "sudo"])
def gateway(request, tmp_path):
    """(Flask test client, auth headers, path of a 64 MiB file the user may read)."""
    run_as = request.param
    user = "gwfiles"
    if run_as == "sudo":
        user = "gwalice"
        require(os.geteuid() == 0 and ensure_user(user), "run_as: sudo needs root and the Unix user gwalice")
    # Outside tmp_path (0700 under root's pytest dir): the user must be able to reach it.
    share = tempfile.mkdtemp(prefix="gw-download-")
    os.chmod(share, 0o755)
    path = os.path.join(share, "big.bin")
    with open(path, "wb") as fh:
        fh.truncate(SIZE)                      # sparse: 64 MiB of zeros, no disk used
    os.chmod(path, 0o644)
    UsersFile(str(tmp_path / "users.yaml")).set_password(user, PASSWORD)
    app = create_app({"work_dir": str(tmp_path / "work"), "log_level": "warning",
                      "auth": {"users_file": str(tmp_path / "users.yaml")},
                      "scheduler": {"backend": "mock", "options": {"state_dir": str(tmp_path / "mock"),
                                                                   "run_as": run_as}},
                      "files": {"roots": [share]}})
    client = app.test_client()
    login = client.post(PREFIX + "/login", json={"username": user, "password": PASSWORD})
    assert login.status_code == 200, login.get_json()
    headers = {"Authorization": "Bearer " + login.get_json()["data"]["token"]["token"]}
    try:
        yield client, headers, path
    finally:
        app.extensions["hpc_gateway"].scheduler.close()
        shutil.rmtree(share, ignore_errors=True)


def leftovers(path: str) -> list[str]:
    """``dd`` processes reading ``path`` (anyone's), and unreaped dd/sudo children of ours."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
            with open(f"/proc/{pid}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue                            # gone meanwhile
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        if os.path.basename(argv[0].decode(errors="replace")) == "dd" and f"if={path}".encode() in argv:
            found.append(f"{pid} {state} {b' '.join(argv).decode(errors='replace').strip()}")
        elif int(ppid) == os.getpid() and name in ("dd", "sudo"):
            found.append(f"{pid} {state} {name} (child of the test)")
    return found


def gone_within(path: str, seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := leftovers(path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def first_chunk(client, headers, path):
    """Start the download, read only its first chunk; return the (unclosed) response."""
    response = client.get(PREFIX + "/files/content", query_string={"path": path}, headers=headers,
                          buffered=False)
    assert response.status_code == 200, response.get_data()[:500]
    assert response.headers["Content-Length"] == str(SIZE)
    chunk = next(iter(response.response))
    assert chunk and chunk == b"\0" * len(chunk) and len(chunk) < SIZE
    assert leftovers(path), "the download's dd is not running: nothing would be tested"
    return response


def test_a_download_closed_early_ends_its_dd(gateway):
    """The WSGI server closes the response (the client went away after the first chunk)."""
    client, headers, path = gateway
    response = first_chunk(client, headers, path)
    response.close()
    assert gone_within(path, 5) == []


def test_a_download_dropped_unclosed_ends_its_dd(gateway):
    """The response is dropped without close() (its generator gets GeneratorExit when collected):
    the dd must not stay blocked on the full pipe."""
    client, headers, path = gateway
    first_chunk(client, headers, path)          # the response is not kept: dropped here
    gc.collect()
    assert gone_within(path, 5) == []
