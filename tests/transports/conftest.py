"""Fixtures for the transport tests: real servers, started once per session.

``transport`` is parametrized over local, ssh and ssm, so every behaviour test in
test_transport_behaviour.py runs against all three. Missing prerequisites (root, sshd,
moto) skip locally and fail under CI=true (tests.support.require).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

from gateway.transports import make_transport  # noqa: E402
from tests.support import ensure_user, free_port, require  # noqa: E402
from tests.support.remote_fixtures import (  # noqa: E402, F401  (fixtures used by the tests)
    s3,
    ssm_double,
    sshd_server,
    transport_options_for,
)

UNPRIVILEGED_USER = "gwalice"
OUTPUT_BUCKET = "gw-ssm-output"


@pytest.fixture(scope="session")
def unix_user() -> str:
    """A real unprivileged Unix user (created with useradd when running as root)."""
    require(ensure_user(UNPRIVILEGED_USER),
            f"needs root (and useradd) to create the Unix user {UNPRIVILEGED_USER}")
    return UNPRIVILEGED_USER


@pytest.fixture(scope="session")
def sshd_users(unix_user):
    """Who the test sshd lets in (tests.support.remote_fixtures.sshd_server)."""
    return ("root", unix_user)


@pytest.fixture(scope="session")
def s3_buckets():
    """The buckets the S3 server starts with (tests.support.remote_fixtures.s3)."""
    return [OUTPUT_BUCKET]


def transport_config(kind: str, request) -> dict:
    return transport_options_for(kind, request, output_bucket=OUTPUT_BUCKET)


@pytest.fixture(scope="session", params=["local", "ssh", "ssm"])
def transport(request):
    """One transport of each kind, reaching this host; reused across the session."""
    t = make_transport(transport_config(request.param, request))
    yield t
    t.close()


@pytest.fixture(params=["local", "ssh", "ssm"])
def unreachable_transport(request):
    """A transport of each kind whose target cannot be reached."""
    if request.param == "local":
        # For a local transport "unreachable" is a scheduler binary that does not exist.
        t = make_transport({"type": "local"})
        t.missing_command = ["/nonexistent/gw-no-such-command"]
    elif request.param == "ssh":
        require(shutil.which("ssh"), "the OpenSSH client (ssh) is not installed")
        t = make_transport({"type": "ssh", "host": "127.0.0.1", "port": free_port(),
                            "connect_timeout": 2})
    else:
        request.getfixturevalue("s3")  # dummy credentials in the environment
        t = make_transport({"type": "ssm", "instance_id": "i-0123456789abcdef0",
                            "endpoint_url": f"http://127.0.0.1:{free_port()}"})
    t.kind = request.param
    yield t
    t.close()
