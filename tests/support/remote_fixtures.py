"""Session fixtures for the remote transports' test servers, shared by the suites that run
commands over ssh and SSM (tests/transports, tests/plugins/slurm_ssm).

A conftest imports the fixtures (``from tests.support.remote_fixtures import s3, sshd_server,
ssm_double``) and defines what differs per suite as two session fixtures of its own, which
may depend on other fixtures to order the start-up (the Slurm cluster, a Unix user):

- ``sshd_users``: the Unix users the test sshd lets in, e.g. ``("root",)``.
- ``s3_buckets``: the buckets the S3 server starts with.

``transport_options_for(kind, request, output_bucket=...)``: a transport's options (local,
ssh or ssm) reaching this host through those servers.

Missing prerequisites (sshd, moto) skip locally and fail under CI=true (:func:`require`).
"""
from __future__ import annotations

import pytest

from tests.support import require


@pytest.fixture(scope="session")
def sshd_server(sshd_users):
    from tests.support.sshd import sshd, sshd_available
    ok, why = sshd_available()
    require(ok, why)
    with sshd(tuple(sshd_users)) as server:
        yield server


@pytest.fixture(scope="session")
def s3(s3_buckets):
    from tests.support.s3_server import moto_available, s3_server
    ok, why = moto_available()
    require(ok, why)
    with s3_server(buckets=list(s3_buckets)) as server:
        yield server


@pytest.fixture(scope="session")
def ssm_double(s3):
    from tests.support.ssm_endpoint import ssm_available, ssm_endpoint
    ok, why = ssm_available()
    require(ok, why)
    with ssm_endpoint(s3_endpoint_url=s3.url) as endpoint:
        yield endpoint


def transport_options_for(kind: str, request, *, output_bucket: str) -> dict:
    """Options of a ``kind`` transport (local, ssh as root, ssm with ``output_bucket``)."""
    if kind == "local":
        return {"type": "local"}
    if kind == "ssh":
        return request.getfixturevalue("sshd_server").transport_options(user="root")
    s3_server = request.getfixturevalue("s3")
    return request.getfixturevalue("ssm_double").transport_options(
        output_bucket=output_bucket, s3_endpoint_url=s3_server.url)
