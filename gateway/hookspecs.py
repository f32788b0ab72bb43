"""The scheduler plugin contract.

Every hook is called with keyword arguments and is ``firstresult``: exactly one scheduler
plugin is registered per app. A hook a plugin does not implement answers 501. Plugins raise
``gateway.errors`` classes, never return error dicts. ``user`` is a ``gateway.models.User``.

A hook call gives the request's turn (gateway/turns.py) away while it runs, so a command that
waits on the cluster does not keep other requests of the worker from running. A plugin that
answers some hooks from memory, a local database or a snapshot, without waiting, names them
in a class attribute ``keeps_turn`` (e.g. ``frozenset({"get_job", "list_jobs"})``): those
calls keep the turn and skip the hand-over. Such a hook that must wait after all (a refresh)
lends the turn itself: ``with gateway.turns.current_turns().waiting(): ...``.
"""
import pluggy

hookspec = pluggy.HookspecMarker("gateway")
hookimpl = pluggy.HookimplMarker("gateway")


@hookspec(firstresult=True)
def submit_job(user, spec):
    """Submit a JobSpec as ``user``; return the new job's id (str)."""


@hookspec(firstresult=True)
def list_jobs(user, query):
    """Return the Jobs matching a JobQuery (the core has already narrowed query.user)."""


@hookspec(firstresult=True)
def get_job(user, job_id):
    """Return one Job, or raise NotFound."""


@hookspec(firstresult=True)
def job_state(user, job_id):
    """Optional: the job's JobState from what the plugin already holds (a listing it keeps
    for every caller), or None when it cannot tell without asking the scheduler about this
    one job. A long poll watches for a change with it and calls get_job only for its answer;
    without it, every look of a long poll is a get_job. Called only for a job the user was
    just allowed to see (get_job answered first)."""


@hookspec(firstresult=True)
def control_job(user, job_id, action):
    """Apply action (kill, suspend, resume, requeue, hold, release); Conflict if invalid now."""


@hookspec(firstresult=True)
def modify_job(user, job_id, change):
    """Change a job's name, queue or time limit (a JobChange): ``change.checked(job, ...)`` on a fresh look first."""


@hookspec(firstresult=True)
def job_output(user, job_id, stream, offset, limit):
    """Return a JobOutput slice of the job's stdout or stderr."""


@hookspec(firstresult=True)
def list_hosts():
    """Return the cluster's Hosts."""


@hookspec(firstresult=True)
def control_host(user, host, action):
    """Open or close a host (admin only; the core checks the role)."""


@hookspec(firstresult=True)
def list_queues():
    """Return the cluster's Queues."""


@hookspec(firstresult=True)
def control_queue(user, queue, action):
    """Open, close, activate or inactivate a queue (admin only)."""


@hookspec(firstresult=True)
def list_users():
    """Return UserInfo for the users with jobs (or known to the scheduler)."""


@hookspec(firstresult=True)
def cluster_info():
    """Return a ClusterInfo summary."""


@hookspec(firstresult=True)
def submit_vis_job(user, spec):
    """Submit a visualization JobSpec (its script runs the VNC launcher); return its id."""


@hookspec(firstresult=True)
def vis_session(user, job_id):
    """Return the VisSession of a running vis job, or None while it is starting."""


@hookspec(firstresult=True)
def read_user_file(user, path, limit):
    """Return up to ``limit`` bytes of a file read as the account ``user``'s jobs run as (``~/`` is its home), or None if absent."""


@hookspec(firstresult=True)
def health():
    """Return Health: whether the scheduler answers, and how fast."""


@hookspec(firstresult=True)
def file_transport(user):
    """Return (transport, as_user[, home]) that runs ``user``'s file operations, or None."""
