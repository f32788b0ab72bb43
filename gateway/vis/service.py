"""The core's vis behaviour, so a scheduler plugin need not implement the vis hooks.

- Submitting: the plugin's ``submit_vis_job`` when it has one, else its ordinary
  ``submit_job`` with the launcher JobSpec (the launcher is just a job script).
- The session: the plugin's ``vis_session`` when it has one; else the session file, read as
  the account the user's jobs run as: through the plugin's ``read_user_file`` hook, or else
  through the transport its ``file_transport`` hook hands out (the files feature's).
"""
from __future__ import annotations

import threading
import time

from ..errors import Forbidden, NotImplementedByPlugin, SchedulerRefused
from ..models import Job, User, VisSession
from ..transports import run_command
from .session import MAX_SESSION_BYTES, parse_session, session_path

COMMAND_TIMEOUT = 30
HOME_CACHE_SECONDS = 300
_homes: dict = {}
_homes_lock = threading.Lock()


def submit_hook(scheduler) -> str:
    """The hook that submits a vis JobSpec on this scheduler."""
    return "submit_vis_job" if scheduler.implements("submit_vis_job") else "submit_job"


def read_vis_session(scheduler, user: User, job: Job, options: dict) -> VisSession | None:
    """The running vis job's session, or None while its desktop is starting."""
    if scheduler.implements("vis_session"):
        return scheduler.call("vis_session", user=user, job_id=job.job_id)
    path = session_path(job.job_id)
    if scheduler.implements("read_user_file"):
        data = scheduler.call("read_user_file", user=user, path=path, limit=MAX_SESSION_BYTES)
    elif scheduler.implements("file_transport"):
        data = _read_through_file_transport(scheduler, user, path, MAX_SESSION_BYTES)
    else:
        raise NotImplementedByPlugin(
            f"the '{scheduler.name}' scheduler backend cannot report visualization sessions "
            "(it implements none of vis_session, read_user_file, file_transport)")
    not_before = job.start_time.timestamp() - options["stale_seconds"] if job.start_time else None
    return parse_session(data, job.job_id, not_before)


def _read_through_file_transport(scheduler, user: User, path: str, limit: int) -> bytes | None:
    """``head -c`` as the user through the plugin's file transport; ``~/`` is the passwd home
    of the account the commands run as (the account the user's jobs run as)."""
    from ..files.service import file_access
    access = file_access(scheduler, user)
    if path.startswith("~/"):
        path = _account_home(scheduler, access) + path[1:]
    # private: the session file holds the VNC password (kept out of SSM's command history).
    res = run_command(access.transport, ["head", "-c", str(int(limit)), "--", path], private=True,
                      as_user=access.as_user, timeout=COMMAND_TIMEOUT)
    if res.returncode != 0:
        if "No such file" in res.err:
            return None
        raise SchedulerRefused(f"cannot read {path}: {res.err.strip() or res.returncode}")
    return res.stdout or None


def _account_home(scheduler, access) -> str:
    key = (id(scheduler), access.as_user)
    now = time.monotonic()
    with _homes_lock:
        hit = _homes.get(key)
        if hit and now - hit[1] < HOME_CACHE_SECONDS:
            return hit[0]
    name = access.as_user
    if name is None:
        res = access.transport.run(["id", "-un"], timeout=COMMAND_TIMEOUT)
        name = res.out.strip() if res.returncode == 0 else ""
    home = None
    if name:
        res = access.transport.run(["getent", "passwd", "--", name], timeout=COMMAND_TIMEOUT)
        fields = res.out.strip().splitlines()[0].split(":") if res.returncode == 0 and res.out.strip() else []
        home = fields[5] if len(fields) >= 7 and fields[5].startswith("/") else None
    if home is None:
        raise Forbidden(f"cannot find the home directory of {name or 'the service account'} on the cluster")
    with _homes_lock:
        _homes[key] = (home, now)
    return home
