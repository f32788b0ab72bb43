"""The core's vis behaviour, so a scheduler plugin need not implement the vis hooks.

- Submitting: the plugin's ``submit_vis_job`` when it has one, else its ordinary
  ``submit_job`` with the launcher JobSpec (the launcher is just a job script).
- The session: the plugin's ``vis_session`` when it has one, else the session file read as
  the job's user through the plugin's ``read_user_file`` (the way it already reads job
  output: as that Unix user, through its transport).
"""
from __future__ import annotations

from ..errors import NotImplementedByPlugin
from ..models import Job, User, VisSession
from .session import MAX_SESSION_BYTES, parse_session, session_path


def submit_hook(scheduler) -> str:
    """The hook that submits a vis JobSpec on this scheduler."""
    return "submit_vis_job" if scheduler.implements("submit_vis_job") else "submit_job"


def read_vis_session(scheduler, user: User, job: Job, options: dict) -> VisSession | None:
    """The running vis job's session, or None while its desktop is starting."""
    if scheduler.implements("vis_session"):
        return scheduler.call("vis_session", user=user, job_id=job.job_id)
    if not scheduler.implements("read_user_file"):
        raise NotImplementedByPlugin(
            f"the '{scheduler.name}' scheduler backend cannot report visualization sessions "
            "(it implements neither vis_session nor read_user_file)")
    data = scheduler.call("read_user_file", user=user, path=session_path(job.job_id), limit=MAX_SESSION_BYTES)
    not_before = job.start_time.timestamp() - options["stale_seconds"] if job.start_time else None
    return parse_session(data, job.job_id, not_before)
