"""Helpers shared by the integration tests: real test servers and small utilities.

Modules (each documents its API in its docstring):

- ``tests.support.sshd``         — a real OpenSSH sshd on 127.0.0.1 (context manager ``sshd``).
- ``tests.support.s3_server``    — moto's S3 server on 127.0.0.1 (context manager ``s3_server``).
- ``tests.support.ssm_endpoint`` — a local AWS SSM Run Command test double that really runs
  the commands on this host (context manager ``ssm_endpoint``).

Utilities here:

- ``CI``: True when the environment says ``CI=true``.
- ``require(cond, why)``: skip the calling test when ``cond`` is false, except under CI,
  where a missing server or binary must fail the run instead.
- ``free_port(host)``: a TCP port nobody listens on right now.
- ``ensure_user(name)``: create a real unprivileged Unix user (useradd, as root) if missing.
- ``wait_for_port(host, port, timeout, proc=None)``: wait until something accepts connections.
- ``silent_server(greeting=b"")``: a server on 127.0.0.1 that accepts connections, sends
  ``greeting`` and then never says anything (a hung endpoint); yields its port.
"""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager

import pytest

CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(cond, why: str) -> None:
    """Skip (locally) or fail (CI=true) the current test when ``cond`` is false."""
    if cond:
        return
    if CI:
        pytest.fail(f"required for this test under CI: {why}", pytrace=False)
    pytest.skip(why)


@contextmanager
def silent_server(greeting: bytes = b""):
    """A TCP server on 127.0.0.1 that accepts connections, sends ``greeting`` (an SSH banner,
    say) and then stays silent: an endpoint that has stopped answering. Yields its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held = []

    def accept():
        while True:
            try:
                conn = server.accept()[0]
            except OSError:
                return
            if greeting:
                conn.sendall(greeting)
            held.append(conn)
    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for conn in held:
            conn.close()


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 10.0, proc=None) -> None:
    """Return once ``host:port`` accepts a TCP connection; raise RuntimeError otherwise.

    With ``proc`` (a Popen), fail at once if that process exits first.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with code {proc.returncode} "
                               f"before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {host}:{port} after {timeout:g} s")
            time.sleep(0.02)


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def ensure_user(name: str) -> bool:
    """Make sure the Unix user ``name`` exists (creating it with useradd when root).

    Returns True when the user exists afterwards. Never changes an existing user.
    """
    if user_exists(name):
        return True
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        return False
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", "--user-group", name],
                   check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return user_exists(name)
