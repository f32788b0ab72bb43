"""The AIP plugin in the behaviour suite, against the LSF/AIP stand-in (tests/standins/lsf).

Four backends: both naming styles (b-commands: bsub, bjobs, ...; c-commands: csub, cjobs, ...)
through the local transport and through SSH to a real sshd on 127.0.0.1. Each starts its own
stand-in cluster (and sshd) and stops it at the end of the session.

- ``aip-b-*``: the environment file (like AIP's aip.sh) is sourced once and commands are
  found on its PATH; jobs are listed with ``bjobs -o ... -json``.
- ``aip-c-*``: commands are found in ``bindir`` with ``LSF_ENVDIR`` given in ``env``; jobs
  are listed with the wide listing (``cjobs -w``). AIP's c-set has no requeue or badmin of
  its own: the overrides point them at the LSF-compatible names, as on an AIP head node.

As root, jobs run as the gateway's users (``run_as: sudo``); otherwise everything runs as
the current user (``run_as: service``, the owner carried by the job's project).
"""
from __future__ import annotations

import contextlib
import os

from tests.helpers import require
from tests.standins.lsf import lsf_standin

ROOT = os.geteuid() == 0


def _options(cluster, style: str, transport: dict) -> dict:
    opts = {
        "commands": style,
        "transport": transport,
        "run_as": "sudo" if ROOT else "service",
        "timeout": 30,
        "cache_seconds": 0.5,
    }
    if ROOT:
        opts["admin_account"] = "gwadmin"
    else:                        # a developer's run: one account for the gateway and the jobs
        opts["allow_gateway_account"] = True
    if style == "b":
        opts.update(env_file=str(cluster.env_file), listing="json")
    else:
        opts.update(bindir=str(cluster.bindir), env={"LSF_ENVDIR": str(cluster.envdir)},
                    listing="wide", default_queue="normal", cluster_name="aip-standin",
                    commands_override={"brequeue": "brequeue", "badmin": "badmin"})
    return opts


@contextlib.contextmanager
def _local(env, style: str):
    with lsf_standin(admins=(env.users["admin"],), slots=4) as cluster:
        yield {"backend": "aip", "options": _options(cluster, style, {"type": "local"})}


@contextlib.contextmanager
def _ssh(env, style: str):
    from tests.support.sshd import sshd, sshd_available
    ok, why = sshd_available()
    require(ok, f"sshd for the aip-{style}-ssh backend: {why}")
    with lsf_standin(admins=(env.users["admin"],), slots=4) as cluster, \
            sshd(users=("root",)) as server:
        transport = server.transport_options(user="root")
        yield {"backend": "aip", "options": _options(cluster, style, transport)}


BACKENDS = {
    "aip-b-local": lambda env: _local(env, "b"),
    "aip-c-local": lambda env: _local(env, "c"),
    "aip-b-ssh": lambda env: _ssh(env, "b"),
    "aip-c-ssh": lambda env: _ssh(env, "c"),
}
