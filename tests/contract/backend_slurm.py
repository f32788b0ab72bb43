"""The real single-node Slurm (tests/cluster/slurm.sh) behind the slurm_ssm plugin, reached
through each transport: local subprocesses, a real sshd on loopback, and the SSM test double
(boto3 -> local SSM endpoint -> bash on this host, output through moto's S3). Jobs run as
the logged-in Unix user (run_as: sudo). The cluster starts once per session and stays up for
the other backends; it goes down when the test process exits (if this process started it).
"""
from __future__ import annotations

import contextlib
import os

from tests.cluster.slurm_cluster import ensure_slurm
from tests.support import require

SSM_OUTPUT_BUCKET = "gw-slurm-ssm-output"
SCRIPT_BUCKET = "gw-slurm-scripts"


def _options(env, transport: dict, **extra) -> dict:
    return {"backend": "slurm_ssm", "options": {
        "transport": transport, "run_as": "sudo", "cache_dir": str(env.tmp / "slurm-cache"),
        "snapshot_interval": 1.0, "command_timeout": 30, **extra}}


def _prerequisites(env):
    require(os.geteuid() == 0, "slurm backends need root (slurm.sh, sudo -u <user>)")
    ensure_slurm()


@contextlib.contextmanager
def slurm_local(env):
    _prerequisites(env)
    yield _options(env, {"type": "local"})


@contextlib.contextmanager
def slurm_local_json(env):
    """The same through squeue --json instead of the default format strings."""
    _prerequisites(env)
    yield _options(env, {"type": "local"}, json="yes")


@contextlib.contextmanager
def slurm_ssh(env):
    _prerequisites(env)
    from tests.support.sshd import sshd, sshd_available
    ok, why = sshd_available()
    require(ok, why)
    with sshd(users=("root",)) as server:
        yield _options(env, server.transport_options(user="root"))


@contextlib.contextmanager
def slurm_ssm(env):
    _prerequisites(env)
    from tests.support.s3_server import moto_available, s3_server
    from tests.support.ssm_endpoint import ssm_available, ssm_endpoint
    for ok, why in (moto_available(), ssm_available()):
        require(ok, why)
    with s3_server(buckets=[SSM_OUTPUT_BUCKET, SCRIPT_BUCKET]) as s3, \
            ssm_endpoint(s3_endpoint_url=s3.url) as endpoint:
        transport = endpoint.transport_options(output_bucket=SSM_OUTPUT_BUCKET, s3_endpoint_url=s3.url)
        yield _options(env, transport, s3={"endpoint_url": s3.url, "region_name": s3.region})


BACKENDS = {"slurm-local": slurm_local, "slurm-local-json": slurm_local_json, "slurm-ssh": slurm_ssh,
            "slurm-ssm": slurm_ssm}
