"""The vis job: one POSIX shell launcher (launcher.sh) serving every scheduler.

The job's script is a short header of settings, the user's command among them (quoted with
shlex.quote: it is the user's own job content, run as the user by the job's shell; nothing
of it reaches a shell of the gateway), followed by launcher.sh verbatim.
"""
from __future__ import annotations

import os
import re
import shlex
from functools import lru_cache

from ..models import JobSpec

LAUNCHER_PATH = os.path.join(os.path.dirname(__file__), "launcher.sh")
# Vis jobs are named vnc-<program>: the gateway tells them from ordinary jobs by this prefix.
JOB_NAME_PREFIX = "vnc-"


@lru_cache(maxsize=1)
def launcher_body() -> str:
    with open(LAUNCHER_PATH, encoding="utf-8") as fh:
        return fh.read()


def launcher_script(command: str, *, geometry: str, options: dict) -> str:
    """The whole job script for ``command`` on a desktop of ``geometry``."""
    settings = {
        "VIS_COMMAND": command,
        "VIS_GEOMETRY": geometry,
        "VIS_LISTEN": options["listen"],
        "VIS_PORT_MIN": str(options["port_min"]),
        "VIS_PORT_MAX": str(options["port_max"]),
        "VIS_DISPLAY_MIN": str(options["display_min"]),
        "VIS_DISPLAY_MAX": str(options["display_max"]),
    }
    header = ["#!/bin/sh", "# HPC Gateway visualization job (generated: settings, then launcher.sh)"]
    header += [f"{key}={shlex.quote(value)}" for key, value in settings.items()]
    return "\n".join(header) + "\n\n" + launcher_body()


def job_name(command: str) -> str:
    """vnc-<the program's base name>, in characters every scheduler accepts in a job name."""
    try:
        first = shlex.split(command)[0]
    except (ValueError, IndexError):
        first = command.split()[0] if command.split() else "desktop"
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(first))[:40] or "desktop"
    return JOB_NAME_PREFIX + base


def is_vis_job(name: str | None) -> bool:
    return bool(name) and name.startswith(JOB_NAME_PREFIX)


def vis_job_spec(command: str, *, options: dict, queue: str | None = None, geometry: str | None = None,
                 time_limit_minutes: int | None = None) -> JobSpec:
    """The ordinary JobSpec of a vis job: the launcher as its script."""
    return JobSpec(
        script=launcher_script(command, geometry=geometry or options["geometry"], options=options),
        name=job_name(command),
        queue=queue or options["queue"],
        time_limit_minutes=time_limit_minutes or options["time_limit_minutes"],
        nodes=1,
        cpus=1,
    )
