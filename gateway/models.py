"""The normalized model every plugin speaks: jobs, job specs, users, hosts, queues.

Plugins build these from their scheduler's output and always keep the scheduler's own
words too (``native_state``, ``reason``). Times are timezone-aware UTC datetimes.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from datetime import datetime


class JobState(str, enum.Enum):
    PENDING = "PENDING"
    HELD = "HELD"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    COMPLETED = "COMPLETED"   # exit code 0 only
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    def __str__(self) -> str:  # so f-strings print "RUNNING", not "JobState.RUNNING"
        return self.value


FINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
WAITING_STATES = frozenset({JobState.PENDING, JobState.HELD})

JOB_ACTIONS = ("kill", "suspend", "resume", "requeue", "hold", "release")
HOST_ACTIONS = ("open", "close")
QUEUE_ACTIONS = ("open", "close", "activate", "inactivate")
OUTPUT_STREAMS = ("stdout", "stderr")


@dataclass(frozen=True)
class User:
    """The authenticated identity handed to plugins."""
    name: str
    is_admin: bool = False
    uid: int | None = None


@dataclass
class JobSpec:
    """What a client asks to run. Exactly one of script, command, script_location."""
    script: str | None = None
    command: str | None = None
    script_location: str | None = None
    name: str | None = None
    queue: str | None = None
    nodes: int | None = None
    cpus: int | None = None
    cpus_per_task: int | None = None
    memory_mb: int | None = None
    time_limit_minutes: int | None = None
    work_dir: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    stdout: str | None = None
    stderr: str | None = None
    array: str | None = None
    dependency: str | None = None
    hold: bool = False
    native_options: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class JobChange:
    """What a client asks to change in a submitted job (PATCH /jobs/{id}); None: unchanged.

    The core has checked that the job is the caller's (or the caller an administrator). The
    plugin applies :meth:`checked` to a fresh look at the job (not a snapshot a moment old)
    with its queue's limit, then makes what is left of the change, the lot or nothing, and
    raises what the scheduler refused."""
    name: str | None = None
    queue: str | None = None
    time_limit_minutes: int | None = None

    def given(self) -> dict:
        """The fields to change, by name."""
        return {k: v for k, v in (("name", self.name), ("queue", self.queue),
                                  ("time_limit_minutes", self.time_limit_minutes)) if v is not None}

    def raises_limit(self, job: "Job") -> bool:
        """Whether the change sets a time limit above the job's. A job without one runs
        unlimited (every plugin reads the limit the scheduler applies): any limit lowers it."""
        return (self.time_limit_minutes is not None and job.time_limit_minutes is not None
                and self.time_limit_minutes > job.time_limit_minutes)

    def checked(self, job: "Job", *, is_admin: bool, queue_limit: int | None = None) -> "JobChange":
        """What is left of this change to make to ``job``, or the refusal (gateway.errors):
        the rules every backend keeps, applied by the plugin to a fresh look at the job. An
        ended job does not change (409); a queue it is already in is no move, and only a
        waiting job moves (409); a started job's limit is raised by an administrator only
        (403: Slurm's rule, kept on every backend, whatever rights a shared service account
        has); ``queue_limit``, the longest the (new) queue allows, binds everybody but
        administrators (422): the limit a user raises, and the limit a job moves with (a job
        without one moves into a limited queue only with a limit given)."""
        from .errors import Conflict, Forbidden, InvalidInput
        if job.state in FINAL_STATES:
            raise Conflict(f"job {job.job_id} has already finished ({job.state.value}): it cannot change")
        change = self
        if change.queue is not None and change.queue == job.queue:
            change = replace(change, queue=None)
        if change.queue is not None and job.state not in WAITING_STATES:
            raise Conflict(f"job {job.job_id} is {job.state.value}: only a waiting (PENDING or HELD) "
                           "job can move to another queue")
        if not is_admin and change.raises_limit(job) and job.state not in WAITING_STATES:
            raise Forbidden(f"job {job.job_id} is {job.state.value} with a time limit of "
                            f"{job.time_limit_minutes} minutes: only an administrator may raise "
                            "the limit of a job that has started (you may lower it)")
        if not is_admin and queue_limit is not None:
            queue = change.queue or job.queue
            if change.queue is not None:
                # A move takes the job's limit along: it must fit the new queue too.
                limit = change.time_limit_minutes or job.time_limit_minutes
                over = limit is None or limit > queue_limit
            else:                      # lowering a limit set beyond the queue's is allowed
                new, now = change.time_limit_minutes, job.time_limit_minutes
                over = new is not None and new > queue_limit and (now is None or new > now)
            if over:
                raise InvalidInput(f"queue {queue} allows at most {queue_limit} minutes"
                                   + ("; give timeLimitMinutes with the move" if change.queue and
                                      change.time_limit_minutes is None else ""),
                                   errors={"timeLimitMinutes": [f"more than queue {queue} allows ({queue_limit})"]})
        return change


# The paths of a job spec that may start with "~": the user's directory on the cluster, the
# same place "~" is in the files API (their home, or their own directory under a shared
# service account), for every plugin.
HOME_PATH_FIELDS = ("work_dir", "script_location", "stdout", "stderr")


def has_home_paths(spec: JobSpec) -> bool:
    return any(_tilde(getattr(spec, f)) for f in HOME_PATH_FIELDS)


def expand_home(spec: JobSpec, home: str) -> JobSpec:
    """``spec`` with a leading ``~`` or ``~/`` of its paths replaced by ``home``."""
    base = home.rstrip("/")                 # "" for a home of "/"
    changes = {}
    for name in HOME_PATH_FIELDS:
        value = getattr(spec, name)
        if _tilde(value):
            changes[name] = base + value[1:] if value != "~" else base or "/"
    return replace(spec, **changes) if changes else spec


def _tilde(value) -> bool:
    return isinstance(value, str) and (value == "~" or value.startswith("~/"))


@dataclass
class Job:
    job_id: str
    name: str | None = None
    user_name: str | None = None
    queue: str | None = None
    state: JobState = JobState.UNKNOWN
    native_state: str | None = None
    reason: str | None = None
    exit_code: int | None = None
    submit_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    hosts: list[str] = field(default_factory=list)
    nodes: int | None = None
    cpus: int | None = None
    memory_mb: int | None = None
    time_limit_minutes: int | None = None
    work_dir: str | None = None
    stdout_path: str | None = None
    stderr_path: str | None = None
    command: str | None = None


@dataclass
class JobQuery:
    """Filters for list_jobs; None means 'any'. ``user`` is already authorized by the core."""
    user: str | None = None
    states: list[JobState] | None = None
    queue: str | None = None
    name: str | None = None


@dataclass
class JobOutput:
    """A slice of a job's stdout or stderr."""
    data: bytes
    offset: int
    size: int | None = None          # the file's whole size when known
    path: str | None = None


@dataclass
class Host:
    name: str
    state: str = "ok"                 # ok | closed | down | unknown
    native_state: str | None = None
    cpus: int | None = None
    max_slots: int | None = None
    njobs: int = 0
    running: int = 0
    suspended: int = 0
    memory_mb: int | None = None
    reason: str | None = None


@dataclass
class Queue:
    name: str
    open: bool = True                 # accepts submissions
    active: bool = True               # dispatches jobs
    native_state: str | None = None
    priority: int | None = None
    is_default: bool = False
    max_slots: int | None = None
    time_limit_minutes: int | None = None
    hosts: list[str] = field(default_factory=list)
    njobs: int = 0
    pending: int = 0
    running: int = 0
    suspended: int = 0


@dataclass
class UserInfo:
    name: str
    njobs: int = 0
    pending: int = 0
    running: int = 0
    suspended: int = 0
    max_jobs: int | None = None


@dataclass
class ClusterInfo:
    name: str
    scheduler: str
    version: str | None = None
    master: str | None = None
    hosts: int = 0
    cpus: int = 0
    queues: int = 0
    jobs: dict[str, int] = field(default_factory=dict)   # state -> count


@dataclass
class VisSession:
    """Where a running visualization job's desktop can be reached."""
    host: str
    port: int
    password: str
    display: int
    exec_host: str | None = None
    # websockify's token for this desktop (launcher.sh: a fresh random key per session): its
    # websockify lets through only a websocket that names it (?token=), so an address and
    # port alone, which a user can put in a session file of their own, open nothing. None:
    # a launcher or plugin that gives none (websockify then has no token plugin).
    key: str | None = None


@dataclass
class Health:
    ok: bool
    latency_ms: float | None = None
    detail: str | None = None
