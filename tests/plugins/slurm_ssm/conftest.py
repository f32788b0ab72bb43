"""Fixtures for the slurm_ssm tests that need the real single-node Slurm (tests/cluster/slurm.sh)
and, for the remote transports, the test sshd and the SSM test double. Missing pieces skip
locally and fail under CI=true."""
from __future__ import annotations

import os
import time

import pytest

from gateway.models import JobState
from tests.support import ensure_user, require
from tests.support.remote_fixtures import (  # noqa: F401  (fixtures used by the tests)
    s3,
    ssm_double,
    sshd_server,
    transport_options_for,
)

USERS = ("gwalice", "gwbob")
SSM_OUTPUT_BUCKET = "gw-slurm-test-ssm-output"
SCRIPT_BUCKET = "gw-slurm-test-scripts"


@pytest.fixture(scope="session")
def slurm():
    """The cluster is up and gwalice/gwbob exist."""
    require(os.geteuid() == 0, "the Slurm tests need root (slurm.sh, sudo -u <user>)")
    for user in USERS:
        require(ensure_user(user), f"cannot create the Unix user {user}")
    from tests.cluster.slurm_cluster import ensure_slurm
    ensure_slurm()


@pytest.fixture(scope="session")
def sshd_users(slurm):
    """Who the test sshd lets in (tests.support.remote_fixtures.sshd_server)."""
    return ("root",)


@pytest.fixture(scope="session")
def s3_buckets(slurm):
    """The buckets the S3 server starts with (tests.support.remote_fixtures.s3)."""
    return [SSM_OUTPUT_BUCKET, SCRIPT_BUCKET]


def transport_options(kind: str, request) -> dict:
    return transport_options_for(kind, request, output_bucket=SSM_OUTPUT_BUCKET)


@pytest.fixture
def make_plugin(slurm, tmp_path):
    """make_plugin(**options) -> a SlurmScheduler on the real cluster (run_as sudo, local)."""
    from gateway_slurm_ssm import make_scheduler
    made = []

    def _make(**options):
        options.setdefault("transport", {"type": "local"})
        options.setdefault("run_as", "sudo")
        options.setdefault("cache_dir", str(tmp_path / f"cache{len(made)}"))
        options.setdefault("snapshot_interval", 0.2)
        plugin = make_scheduler(options)
        made.append(plugin)
        return plugin

    yield _make
    for plugin in made:
        plugin.close()


def wait_for(plugin, user, job_id, states, timeout=60.0):
    """Poll get_job until the job's state is in ``states``; return the job."""
    if isinstance(states, JobState):
        states = {states}
    deadline = time.monotonic() + timeout
    while True:
        job = plugin.get_job(user=user, job_id=job_id)
        if job.state in states:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} is {job.state} ({job.reason}), not {states}")
        time.sleep(0.1)
