"""The AIP plugin's hooks: every operation is one or two scheduler commands, built by
``commands`` and read by ``parse``, carried by a gateway transport (local or SSH)."""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from gateway import scriptfile
from gateway.errors import (Conflict, GatewayError, InvalidInput, NotFound, SchedulerRefused,
                            SchedulerUnavailable)
from gateway.hookspecs import hookimpl
from gateway.models import (WAITING_STATES, ClusterInfo, Health, Job, JobOutput, JobState, UserInfo, expand_home,
                            has_home_paths)
from gateway.s3scripts import S3ScriptSource
from gateway.transports import check_not_the_gateways_account, make_transport, run_command

from . import commands as C
from . import parse as P
from .options import load_options

log = logging.getLogger(__name__)

# Variables the env_file comparison ignores: they describe the shell, not the scheduler.
_ENV_NOISE = {"_", "SHLVL", "PWD", "OLDPWD", "BASHOPTS", "SHELLOPTS", "BASH_EXECUTION_STRING",
              "BASH_ARGC", "BASH_ARGV", "BASH_LINENO", "BASH_SOURCE", "BASH_VERSINFO",
              "BASH_VERSION", "BASHPID", "PPID", "RANDOM", "SECONDS", "LINENO", "HISTCMD"}

_STATE_ORDER = [JobState.RUNNING, JobState.SUSPENDED, JobState.PENDING, JobState.HELD,
                JobState.UNKNOWN, JobState.CANCELLED, JobState.FAILED, JobState.COMPLETED]


_PEEK_SLACK = 4096                 # bpeek's section titles on top of max_output_bytes
_OUTPUT_WINDOW = 1 << 20           # the first and last MiB of a large output file (its report)
# Commands that only read: a connection lost while one ran is an outage to retry (503), not
# an unknown outcome (504) as for bsub, bkill and the like.
_READ_ONLY = frozenset({"bjobs", "bhist", "bhosts", "bqueues", "busers", "bpeek", "bparams", "lsid"})
_DIR_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}\Z")


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class AipScheduler:
    """Scheduler plugin for SkyForm AIP and LSF-style schedulers (see docs/aip.md)."""

    def __init__(self, options: dict):
        self.o = load_options(options)
        # (output path, job id) -> (where the job's own output starts, the file's size then):
        # found once by grep on the cluster for a large file with LSF's reports (_read_output).
        self._body_starts: dict[tuple[str, str], tuple[int, int]] = {}
        self._body_starts_lock = threading.Lock()
        self.service = self.o["run_as"] == "service"
        self.cmds = C.CommandSet(self.o["commands"], dict(self.o["commands_override"]),
                                 self.o["bindir"])
        topts = dict(self.o["transport"])
        topts.setdefault("timeout", self.o["timeout"])
        # Commands run as a user start in "/": the transport's own working directory (an ssh
        # login's home such as /root, the gateway's state directory) is often one that user
        # cannot enter, and tools such as find fail when they cannot return to it.
        topts.setdefault("sudo", ["env", "-C", "/", "sudo", "-n"])
        self.transport = make_transport(topts)
        if self.service:
            check_not_the_gateways_account(self.transport, None, "aip", self.o["allow_gateway_account"])
        self.tz = ZoneInfo(self.o["timezone"])
        self.listing_mode = self.o["listing"]
        if self.service and self.listing_mode == "wide":
            self.listing_mode = "long"
        self.native_allow = dict(self.o["native_options"])
        if self.service:
            self.native_allow.pop("-P", None)      # the project carries the gateway user
        self.s3_scripts = S3ScriptSource(self.o["s3"])
        self._lock = threading.Lock()
        self._env: dict | None = None
        self._homes: dict[str, str] = {}
        self._made_dirs: set[str] = set()
        self._account: str | None = None
        self._snapshot: tuple[float, list[Job]] | None = None
        # id -> (end or submit time, (exit_code, killed, reason)) of EXIT jobs, looked up once
        self._final: dict[str, tuple] = {}
        self._killed_here: set[str] = set()
        self._default_queues: tuple[float, list[str]] | None = None
        self._queue_limits: tuple[float, dict[str, int | None]] | None = None

    # ================================================================ running commands
    def base_env(self) -> dict[str, str]:
        """LSB_NTRIES=1 (fail fast when the daemons are down), what env_file sets, and the
        configured variables. Computed once."""
        with self._lock:
            if self._env is not None:
                return self._env
        env = {"LSB_NTRIES": "1"}
        if self.o["env_file"]:
            env.update(self._load_env_file(self.o["env_file"]))
        env.update(self.o["env"])
        with self._lock:
            self._env = env
        return env

    def _load_env_file(self, path: str) -> dict[str, str]:
        # The path comes from the configuration only; no client input reaches this shell.
        script = ('[ -r "$1" ] || { echo "cannot read $1" >&2; exit 3; }; '
                  '. "$1" >/dev/null 2>&1 </dev/null; env -0')
        before = self.transport.run(["env", "-0"], timeout=self.o["timeout"])
        after = self.transport.run(["bash", "-c", script, "gateway-env", path],
                                   timeout=self.o["timeout"])
        if after.returncode != 0:
            raise SchedulerUnavailable(f"cannot load env_file {path}: "
                                       f"{(after.err or after.out).strip() or after.returncode}")

        def split(data: bytes) -> dict:
            out = {}
            for item in data.split(b"\0"):
                name, sep, value = item.decode("utf-8", "replace").partition("=")
                if sep and C.ENV_NAME.match(name):
                    out[name] = value
            return out
        old, new = split(before.stdout), split(after.stdout)
        return {k: v for k, v in new.items() if k not in _ENV_NOISE and old.get(k) != v}

    def _run(self, name: str, args: list[str], *, what: str, as_user: str | None = None,
             stdin: bytes | None = None, chdir: str | None = None,
             env: dict[str, str] | None = None) -> str:
        """Run one scheduler command; return its stdout and stderr as one text."""
        cmd = self.cmds.need(name, what)
        full_env = {**self.base_env(), **(env or {})}
        argv = C.env_prefix(full_env, chdir) + [cmd, *args]
        res = run_command(self.transport, argv, stdin=stdin, timeout=self.o["timeout"], as_user=as_user,
                          retry_safe=name in _READ_ONLY)
        text = res.out + res.err
        if res.returncode in (125, 126, 127) and text.startswith("env: "):
            line = text.strip().splitlines()[0]
            if chdir and "cannot change directory" in line:
                raise InvalidInput(f"workDir {chdir}: {line}", errors={"workDir": [line]})
            raise SchedulerUnavailable(f"cannot run {cmd}: {line}")
        if res.returncode != 0 and text.startswith("sudo: "):
            raise SchedulerRefused(f"cannot run {name} as {as_user}: {text.strip().splitlines()[0]}")
        return text

    def _run_plain(self, argv: list[str], as_user: str | None = None,
                   stdin: bytes | None = None, private: bool = False):
        """A non-scheduler helper (getent, id, head, mkdir -p) on the scheduler's host: each
        is safe to repeat. ``private``: its output is a secret, kept out of SSM's command
        history."""
        return run_command(self.transport, argv, private=private, stdin=stdin, timeout=self.o["timeout"],
                           as_user=as_user, retry_safe=True)

    def account(self) -> str:
        """The transport's own account (the service account with run_as: service)."""
        if self._account is None:
            res = self._run_plain(["id", "-un"])
            name = res.out.strip()
            if res.returncode != 0 or not name:
                raise SchedulerUnavailable(f"cannot tell the service account: {res.err.strip()}")
            self._account = name
        return self._account

    def home_of(self, user: str) -> str | None:
        if user in self._homes:
            return self._homes[user]
        res = self._run_plain(["getent", "passwd", user])
        fields = res.out.strip().split(":")
        home = fields[5] if res.returncode == 0 and len(fields) >= 7 else None
        if home:
            self._homes[user] = home
        return home

    def user_home(self, user) -> str | None:
        """Where a user's jobs start and files live: the Unix home (run_as: sudo), or
        ``<service account home>/hpc-gateway/<user>`` (run_as: service), created once."""
        if not self.service:
            return self.home_of(user.name)
        if not _DIR_NAME.match(user.name or ""):
            raise InvalidInput(f"user name {user.name!r} cannot name a directory")
        base = self.home_of(self.account())
        if not base:
            return None
        path = f"{base.rstrip('/')}/hpc-gateway/{user.name}"
        if path not in self._made_dirs:
            res = self._run_plain(["mkdir", "-p", "--", path])
            if res.returncode != 0:
                raise SchedulerRefused(f"cannot create {path}: {res.err.strip()}")
            self._made_dirs.add(path)
        return path

    def _as(self, user) -> str | None:
        return None if self.service else user.name

    def _as_for_job(self, user, job: Job) -> str | None:
        if self.service:
            return None
        if job.user_name == user.name or not user.is_admin:
            return user.name
        return self.o["admin_account"] or user.name

    def _as_admin(self, user) -> str | None:
        if self.service:
            return None
        return self.o["admin_account"] or user.name

    def _invalidate(self) -> None:
        with self._lock:
            self._snapshot = None

    # ================================================================ reading jobs
    def _owner(self, native_user: str | None, project: str | None) -> str | None:
        """The gateway user a job belongs to. Under run_as: service, its project (-P), but
        only for a job of the service account itself: anyone on the cluster may submit with
        -P alice, and that job must not become alice's (nor be hers to kill)."""
        if self.service:
            if project and project != "default" and native_user and native_user == self.account():
                return project
            return native_user
        return native_user

    def _job_from_detail(self, d: P.JobDetail, home_hint: str | None = None) -> Job:
        state = P.map_state(d.status or "", killed=d.killed)
        home = d.exec_home or home_hint or (self.home_of(d.user) if d.user else None)
        cwd = d.exec_cwd or d.cwd
        if cwd and home:
            cwd = cwd.replace("$HOME", home)
        stdout = P.resolve_output_path(d.output_file, d.job_id, d.cwd, home) if d.output_file else None
        stderr = P.resolve_output_path(d.error_file, d.job_id, d.cwd, home) if d.error_file else stdout
        reason = None
        if d.pending_reasons:
            reason = "; ".join(d.pending_reasons)
        elif d.suspend_reason and state is JobState.SUSPENDED:
            reason = d.suspend_reason
        elif d.term_reason:
            reason = d.term_reason
        exit_code = d.exit_code
        if state is JobState.COMPLETED:
            exit_code = 0
        return Job(job_id=d.job_id, name=d.name, user_name=self._owner(d.user, d.project),
                   queue=d.queue, state=state, native_state=d.status, reason=reason,
                   exit_code=exit_code, submit_time=d.submit_time, start_time=d.start_time,
                   end_time=d.end_time, hosts=list(d.hosts), nodes=len(d.hosts) or None,
                   cpus=d.processors or 1, memory_mb=d.mem_limit_mb,
                   time_limit_minutes=d.run_limit_minutes, work_dir=cwd if cwd and cwd.startswith("/") else None,
                   stdout_path=stdout, stderr_path=stderr, command=d.command)

    def _details(self, ids: list[str]) -> tuple[list[P.JobDetail], list[str]]:
        if not ids:
            return [], []
        text = self._run("bjobs", C.bjobs_long_args(ids), what="job details")
        return P.parse_bjobs_long(text, _utcnow(), self.tz)

    def _killed_by_history(self, ids: list[str]) -> dict[str, bool]:
        """Whether each EXIT job was killed (``Signal <KILL> requested`` in bhist -l)."""
        out = {i: (i in self._killed_here) for i in ids}
        todo = [i for i in ids if not out[i]]
        if not todo or not self.cmds.has("bhist"):
            return out
        try:
            text = self._run("bhist", C.bhist_long_args(todo), what="job history")
        except (SchedulerRefused, NotFound):
            return out
        for jid, d in P.parse_bhist_long(text, _utcnow(), self.tz).items():
            if d.killed:
                out[jid] = True
        return out

    def _settle_exits(self, jobs: list[Job], details: dict[str, P.JobDetail] | None = None) -> None:
        """Exit codes and cancellation of finished EXIT jobs, looked up once per job: cached by
        its end time, or its submit time where the listing has none (bjobs -w), and dropped
        when the job is seen in another state (requeued). Before, a wide listing re-ran
        bjobs -l and bhist -l (the event log) for every recent EXIT job at every refresh."""
        pending = []
        for job in jobs:
            if job.native_state != "EXIT":
                if self._final:
                    self._final.pop(job.job_id, None)
                continue
            hit = self._final.get(job.job_id)
            if hit is not None and hit[0] == _final_marker(job):
                code, killed, reason = hit[1]
                self._apply_final(job, code, killed, reason)
            else:
                pending.append(job)
        if not pending:
            return
        details = dict(details or {})
        need = [j.job_id for j in pending if j.job_id not in details]
        for chunk in _chunks(need, 200):
            for d in self._details(chunk)[0]:
                details[d.job_id] = d
        unknown = [j.job_id for j in pending if not (details.get(j.job_id) and details[j.job_id].killed)]
        killed_hist = {}
        for chunk in _chunks(unknown, 200):
            killed_hist.update(self._killed_by_history(chunk))
        for job in pending:
            d = details.get(job.job_id)
            code = d.exit_code if d else job.exit_code
            killed = bool((d and d.killed) or killed_hist.get(job.job_id) or job.job_id in self._killed_here)
            reason = d.term_reason if d else None
            marker = _final_marker(job)
            if marker is not None and len(self._final) < 100_000:
                self._final[job.job_id] = (marker, (code, killed, reason))
            self._apply_final(job, code, killed, reason)

    @staticmethod
    def _apply_final(job: Job, code, killed: bool, reason) -> None:
        job.exit_code = code
        job.state = JobState.CANCELLED if killed else JobState.FAILED
        if reason and not job.reason:
            job.reason = reason

    def _listing(self) -> list[Job]:
        """Every job the scheduler lists (all users, recently finished included); one
        snapshot serves all callers for ``cache_seconds``. The Jobs are the snapshot's own:
        read them; a hook that hands them out copies the ones it returns (list_jobs)."""
        now = time.monotonic()
        with self._lock:
            snap = self._snapshot
        if snap and now - snap[0] < self.o["cache_seconds"]:
            return snap[1]
        utc = _utcnow()
        details_by_id = {}
        if self.listing_mode == "json":
            text = self._run("bjobs", C.bjobs_json_args(self.o["json_fields"], None), what="job listing")
            recs = P.parse_bjobs_json(text).records
            jobs = [self._record_job(r, utc) for r in recs]
        elif self.listing_mode == "wide":
            text = self._run("bjobs", C.bjobs_wide_args(None), what="job listing")
            jobs = [self._record_job(r, utc) for r in P.parse_bjobs_wide(text).records]
        else:
            text = self._run("bjobs", ["-l", "-a", "-u", "all"], what="job listing")
            details, _ = P.parse_bjobs_long(text, utc, self.tz)
            jobs = [self._job_from_detail(d) for d in details]
            details_by_id = {d.job_id: d for d in details}
        self._settle_exits(jobs, details_by_id)
        with self._lock:
            self._snapshot = (time.monotonic(), jobs)
        return jobs

    def _record_job(self, rec: dict, utc: datetime) -> Job:
        job = P.record_to_job(rec, utc, self.tz)
        job.user_name = self._owner(rec.get("USER"), rec.get("PROJ_NAME"))
        return job

    def _job(self, job_id: str) -> Job:
        return self._job_and_elements(job_id)[0]

    def _job_and_elements(self, job_id: str) -> tuple[Job, list[Job]]:
        """The job as bjobs -l shows it now, and what it is made of: itself, or an array's
        elements (the Job is then their sum, native state ``ARRAY``)."""
        ids = P.split_job_id(job_id)
        if ids is None:
            raise NotFound(f"no such job: {job_id}")
        details, missing = self._details([job_id])
        if not details:
            raise NotFound(f"no such job: {job_id}")
        jobs = [self._job_from_detail(d) for d in details]
        self._settle_exits(jobs, {d.job_id: d for d in details})
        if len(jobs) == 1 and jobs[0].job_id == job_id:
            return jobs[0], jobs
        return _aggregate(job_id, jobs), jobs

    # ================================================================ jobs
    @hookimpl
    def submit_job(self, user, spec):
        if has_home_paths(spec):
            home = self.user_home(user)
            if not home:
                raise SchedulerUnavailable(f"the home directory of {user.name} on the cluster is unknown "
                                           "(getent passwd failed): give absolute paths")
            spec = expand_home(spec, home)
        script_text = None
        if spec.script_location:
            script_text = self._read_script(user, spec.script_location)
        if spec.work_dir is not None and not spec.work_dir.startswith("/"):
            raise InvalidInput("workDir must be an absolute path", errors={"workDir": ["not absolute"]})
        project = user.name if self.service else None
        sub = C.submit_args(spec, native_allow=self.native_allow, memory_unit=self.o["memory_unit"],
                            cwd_flag=self.o["cwd_flag"], default_stdout=self.o["default_stdout"],
                            default_stderr=self.o["default_stderr"], project=project,
                            script_text=script_text)
        chdir = sub.chdir
        if chdir is None and not (spec.work_dir and self.o["cwd_flag"]):
            # bsub's own directory becomes the job's: the user's home, not the gateway's cwd
            # (with one service account: a directory of the user's own under its home)
            chdir = self.user_home(user)
        text = self._run("bsub", sub.args, what="job submission", as_user=self._as(user),
                         stdin=sub.stdin, chdir=chdir, env=sub.env)
        job_id, _queue = _submit_result(text)
        self._invalidate()
        return job_id

    def _read_script(self, user, location: str) -> str:
        if location.startswith("s3://"):
            return self.s3_scripts.fetch(location, user.name).decode("utf-8", "replace")
        if not location.startswith("/"):
            raise InvalidInput("scriptLocation must be an absolute path on the cluster or s3://bucket/key",
                               errors={"scriptLocation": ["not absolute"]})
        st = self._run_plain(scriptfile.stat_argv(location), as_user=self._as(user))
        scriptfile.check(location, st.returncode, st.out, st.err)
        res = self._run_plain(scriptfile.head_argv(location), as_user=self._as(user))
        return scriptfile.content(location, res.returncode, res.stdout, res.err).decode("utf-8", "replace")

    @hookimpl
    def list_jobs(self, user, query):
        jobs = self._listing()
        out = []
        for j in jobs:
            if query.user and j.user_name != query.user:
                continue
            if query.states and j.state not in query.states:
                continue
            if query.queue and j.queue != query.queue:
                continue
            if query.name and j.name != query.name and _base_name(j.name) != query.name:
                continue
            out.append(_copy(j))
        return out

    @hookimpl
    def get_job(self, user, job_id):
        return self._job(str(job_id))

    @hookimpl
    def job_state(self, user, job_id):
        """From the listing every caller shares (cache_seconds): a long poll's looks cost
        the scheduler no ``bjobs -l`` each. None for a job the listing does not hold (then
        the core asks get_job)."""
        ids = P.split_job_id(str(job_id))
        if ids is None:
            return None
        base, index = ids
        jobs = self._listing()
        if index is not None:
            wanted = f"{base}[{index}]"
            return next((j.state for j in jobs if j.job_id == wanted), None)
        elements = [j for j in jobs if j.job_id.startswith(base + "[")]
        if elements:                               # an array: as get_job sums it up
            return _aggregate(base, elements).state
        return next((j.state for j in jobs if j.job_id == base), None)

    @hookimpl
    def control_job(self, user, job_id, action):
        job, elements = self._job_and_elements(str(job_id))
        state = job.state
        why = None
        if action == "kill" and state.is_final:
            why = f"it has already finished ({state})"
        elif action == "suspend" and state is not JobState.RUNNING:
            why = f"it is {state}, not RUNNING"
        elif action == "resume" and state is not JobState.SUSPENDED:
            why = f"it is {state}, not SUSPENDED"
        elif action == "hold" and state is not JobState.PENDING:
            why = f"it is {state}; only a PENDING job can be held"
        elif action == "release" and state is not JobState.HELD:
            why = f"it is {state}, not HELD"
        elif action == "requeue" and state in (JobState.PENDING, JobState.HELD):
            why = f"it is {state}: it has not started"
        if why:
            raise Conflict(f"cannot {action} job {job_id}: {why}")
        name, extra = C.ACTION_COMMANDS[action]
        filtered = []
        if action == "requeue":
            # -d for a job seen DONE, -e for one seen EXIT, nothing for a running or suspended
            # one (brequeue's default; it refuses a finished job): see C.requeue_args.
            filtered = C.requeue_args([e.native_state or "" for e in elements])
            extra = [*extra, *filtered]
        text = self._run(name, [*extra, C.job_id_arg(job.job_id)], what=f"{action} of a job",
                         as_user=self._as_for_job(user, job))
        try:
            P.parse_action(text, job.job_id)
        except SchedulerRefused as exc:
            if filtered and "Bad or invalid action specification" in exc.msg:
                # -d met a job that is EXIT by now, or -e one that is DONE (OpenLava's
                # LSBE_EXCEPT_ACTION): it was requeued, and ended again, in between.
                raise Conflict(f"cannot requeue job {job_id}: it was {state.value} a moment ago and "
                               f"has changed since; look at it again ({exc.msg})") from None
            raise
        except NotFound:
            if action == "requeue" and state.is_final:
                # A finished job bjobs -l showed a moment ago that mbatchd has since cleaned
                # (CLEAN_PERIOD; an LSF query mbatchd may also answer bjobs from an older
                # snapshot): the job exists for the client, so "no such job" would contradict
                # the GET it just made. Only requeue reaches the scheduler for an ended job.
                raise Conflict(f"cannot requeue job {job_id}: it has ended ({state.value}) and the "
                               "scheduler no longer holds it (mbatchd forgets finished jobs after "
                               "CLEAN_PERIOD); submit it again") from None
            raise
        if action == "kill":
            with self._lock:
                self._killed_here.add(job.job_id)
                if len(self._killed_here) > 100_000:
                    self._killed_here.clear()
        self._invalidate()

    @hookimpl
    def modify_job(self, user, job_id, change):
        """A new queue, name and run limit with one ``bmod [-q queue] [-J name] [-W minutes]
        <id>``: LSF makes all of it or none, so no half-made change is left to undo (and a
        bmod that timed out may have acted: nothing is undone after it).
        What the client sent is checked before anything runs; then the core's rules
        (JobChange.checked) on a fresh look at the job, as bjobs -l has it now, with the
        (new) queue's run limit from bqueues -l when a user sets a limit; a field already as
        asked is left alone. Run as the account control_job uses for the job: LSF lets a
        job's owner change a started job's run limit (LSB_MOD_ALL_JOBS), and only an
        administrator may raise it here (checked), so the owner's account serves an
        administrator's own job too, and admin_account anyone else's. No account passes a
        queue's hard limit: OpenLava's mbatchd refuses it to administrators too."""
        # The client's input first: nothing runs for a bad name, queue or limit.
        if change.name is not None:
            C.check_job_name(change.name)
        if change.queue is not None:
            C.queue_arg(change.queue)
        if change.time_limit_minutes is not None:
            C.check_time_limit(change.time_limit_minutes)
        job = self._job(str(job_id))
        limit, queue = None, change.queue or job.queue
        if ((change.time_limit_minutes is not None or change.queue is not None) and not user.is_admin
                and queue and not job.state.is_final):
            # The (new) queue's hard RUNLIMIT, read now (one bqueues -l): a limit above it, or
            # a job moving in with one, is refused before anything runs. Unknown (None): LSF
            # refuses it itself, "RUNLIMIT: Cannot exceed queue's hard limit(s)", a 422 as well.
            hard, default = self._run_limits(queue)
            limit = hard.get(queue)
            if job.time_limit_minutes is None and job.state not in WAITING_STATES and queue == job.queue:
                # bjobs -l shows the job's own -W only: without it the queue's default binds
                # it, else the queue's maximum (a started job has not moved: same queue).
                bound = default.get(queue) or limit
                if bound is not None:
                    job = replace(job, time_limit_minutes=bound)
        change = change.checked(job, is_admin=user.is_admin, queue_limit=limit)
        name, minutes = change.name, change.time_limit_minutes
        if name is not None and name == job.name:
            name = None
        if minutes is not None and minutes == job.time_limit_minutes:
            minutes = None
        if name is not None and ("[" in job.job_id or job.native_state == "ARRAY"):
            # LSF: "Change job name is not allowed for job array"; an element's index is its name's.
            raise InvalidInput(f"job {job_id} is (part of) a job array: its name cannot change",
                               errors={"name": ["a job array's name cannot change"]})
        jid = C.job_id_arg(job.job_id)
        args = C.bmod_args(jid, queue=change.queue, name=name, time_limit_minutes=minutes)
        if not args:
            return
        try:
            P.parse_modify(self._run("bmod", args, what="changing a job", as_user=self._as_for_job(user, job)),
                           jid)
        finally:
            # Also after a failure: a bmod that did not answer in time may have acted.
            self._invalidate()

    @hookimpl
    def job_output(self, user, job_id, stream, offset, limit):
        job = self._job(str(job_id))
        if P.split_job_id(job.job_id)[1] is None and job.native_state == "ARRAY":
            raise InvalidInput(f"job {job_id} is an array: ask for one element, e.g. {job_id}[1]")
        path = job.stdout_path if stream == "stdout" else job.stderr_path
        merged = stream == "stderr" and job.stderr_path == job.stdout_path
        if job.state in (JobState.PENDING, JobState.HELD):
            return JobOutput(b"", offset, 0, path)
        if job.state in (JobState.RUNNING, JobState.SUSPENDED) and self.cmds.has("bpeek"):
            text_bytes = self._peek(user, job)
            if text_bytes is not None:
                out, err = text_bytes
                data = out if (stream == "stdout" or merged) else err
                return JobOutput(data[offset:offset + limit], offset, len(data), path)
        if not path:
            return JobOutput(b"", offset, 0, None)
        data, size = self._read_output(user, job, path, offset, limit,
                                       report=stream == "stdout" or merged)
        return JobOutput(data, offset, size, path)

    def _peek(self, user, job: Job) -> tuple[bytes, bytes] | None:
        cmd = self.cmds.need("bpeek", "reading a running job's output")
        # bpeek prints the whole output so far: at most max_output_bytes (and its section
        # titles) reach the gateway's memory, through a fixed script (the arguments are
        # positional parameters, never part of the script).
        # `env` first: under run_as: sudo, sudoers lets the gateway run /usr/bin/env (docs/aip.md).
        cap = self.o["max_output_bytes"] + _PEEK_SLACK
        as_user = self._as_for_job(user, job)
        argv = ((C.env_prefix(self.base_env()) or ["env"])
                + ["sh", "-c", 'cap=$1; shift; "$@" | head -c "$cap"', "sh", str(cap),
                   cmd, C.job_id_arg(job.job_id)])
        res = run_command(self.transport, argv, timeout=self.o["timeout"], as_user=as_user, retry_safe=True)
        if res.returncode != 0 and res.err.startswith("sudo: "):
            raise SchedulerRefused(f"cannot run bpeek as {as_user}: {res.err.strip().splitlines()[0]}")
        failure = P.scheduler_failure(res.err)
        if failure:
            raise failure
        parsed = P.parse_bpeek(res.stdout)
        if parsed is None and len(res.stdout) >= cap:
            # Cut before bpeek's section titles: they come after the stdout text when stdout
            # is not a terminal (parse.parse_bpeek), so all of this is stdout.
            return res.stdout, b""
        # None: "Not yet started" / "Already finished": the state moved on; read the files
        return parsed

    def _read_output(self, user, job: Job, path: str, offset: int, limit: int, *,
                     report: bool) -> tuple[bytes, int]:
        """At most ``limit`` bytes from ``offset`` of the output in ``path`` (without LSF's
        report around it when ``report``), and the output's size. A file of up to two
        windows is read whole; of a larger one, only its first and last windows (for the
        report) and the range asked for: every byte of it can be reached, and a poll costs
        no more than that, however large the file."""
        window = min(_OUTPUT_WINDOW, self.o["max_output_bytes"] // 2)
        as_user = self._as_for_job(user, job)
        known = self._body_starts.get((path, job.job_id)) if report else None
        res = self._run_plain(C.output_windows(path, window, known[1] if known else None, scan=report),
                              as_user=as_user)
        self._check_read(res, path)
        if res.returncode != 0:
            return b"", 0
        first, _, data = res.stdout.partition(b"\n")
        try:
            size, *found = first.split()
            size = int(size)
            report_at, follows_at = (int(x) if x.isdigit() else None for x in (found + [b"-", b"-"])[:2])
        except ValueError:
            raise SchedulerRefused(f"cannot read {path}: no size in {first[:80]!r}") from None
        if size <= 2 * window or len(data) < 2 * window:      # all of it
            body = P.strip_job_report(data) if report else data
            return body[offset:offset + limit], len(body)
        head, tail = data[:window], data[window:]
        body_start = None
        if report_at is not None and follows_at is not None:
            # The last report's output, found on the cluster: kept for this job's next reads
            # while the file keeps this size (it grows with a requeue's or another job's run).
            body_start = report_at + follows_at + P.REPORT_FOLLOWS_LEN
            with self._body_starts_lock:
                if len(self._body_starts) >= 1024:
                    self._body_starts.pop(next(iter(self._body_starts)))
                self._body_starts[(path, job.job_id)] = (body_start, size)
        elif known is not None and known[1] == size:
            body_start = known[0]
        start, end = P.job_report_bounds(head, tail, size, body_start) if report else (0, size)
        total = max(end - start, 0)
        count = min(limit, total - offset, self.o["max_output_bytes"])
        if count <= 0:
            return b"", total
        at, tail_at = start + offset, size - len(tail)
        if at + count <= len(head):
            return head[at:at + count], total
        if at >= tail_at:
            return tail[at - tail_at:at - tail_at + count], total
        res = self._run_plain(C.read_range(path, at, count), as_user=as_user)
        self._check_read(res, path)
        return res.stdout[:count], total

    @staticmethod
    def _check_read(res, path: str) -> None:
        """A failed read: a missing file is no output yet (returncode stays non-zero),
        anything else the scheduler host's refusal."""
        if res.returncode != 0 and "No such file" not in res.err:
            raise SchedulerRefused(f"cannot read {path}: {res.err.strip() or res.returncode}")

    # ================================================================ cluster
    @hookimpl
    def list_hosts(self):
        return P.parse_bhosts(self._run("bhosts", ["-w"], what="listing hosts"))

    @hookimpl
    def control_host(self, user, host, action):
        try:
            name = C.name_arg(host, "host")
        except InvalidInput:
            raise NotFound(f"no such host: {host}") from None
        text = self._run("badmin", [C.HOST_ACTIONS[action], name], what=f"{action} of a host",
                         as_user=self._as_admin(user))
        P.parse_badmin_host(text, name)

    def _defaults(self) -> list[str]:
        if self.o["default_queue"]:
            return [self.o["default_queue"]]
        if not self.cmds.has("bparams"):
            return []
        now = time.monotonic()
        if self._default_queues and now - self._default_queues[0] < 60:
            return self._default_queues[1]
        try:
            names = P.parse_bparams_default_queues(self._run("bparams", [], what="default queue"))
        except SchedulerRefused:
            names = []
        self._default_queues = (now, names)
        return names

    def _run_limits(self, queue: str | None = None) -> tuple[dict[str, int | None], dict[str, int | None]]:
        """Queues' hard and default run limits (minutes) from ``bqueues -l`` (``-w`` has
        none): all of them, kept for a minute as the default queues are (also when they
        cannot be read: a listing does not fail for them), or one queue's, read afresh. {}
        when the scheduler will not tell (an unknown queue, a c-set without -l): LSF keeps
        its limits itself."""
        now = time.monotonic()
        if queue is None and self._queue_limits and now - self._queue_limits[0] < 60:
            return self._queue_limits[1]
        try:
            text = self._run("bqueues", ["-l"] + ([C.name_arg(queue, "queue")] if queue else []),
                             what="queue limits")
            limits = (P.parse_bqueues_run_limits(text), P.parse_bqueues_run_limits(text, which="default"))
        except (SchedulerRefused, InvalidInput, NotFound):
            limits = ({}, {})
        except GatewayError as exc:
            if queue is not None:
                raise
            log.warning("queue run limits left out of the listing: bqueues -l: %s", exc.msg)
            limits = ({}, {})
        if queue is None:
            self._queue_limits = (now, limits)
        return limits

    @hookimpl
    def list_queues(self):
        text = self._run("bqueues", ["-w"], what="listing queues")
        queues = P.parse_bqueues(text, self._defaults())
        limits, _ = self._run_limits()
        for q in queues:
            q.time_limit_minutes = limits.get(q.name)
        return queues

    @hookimpl
    def control_queue(self, user, queue, action):
        try:
            name = C.name_arg(queue, "queue")
        except InvalidInput:
            raise NotFound(f"no such queue: {queue}") from None
        text = self._run("badmin", [C.QUEUE_ACTIONS[action], name], what=f"{action} of a queue",
                         as_user=self._as_admin(user))
        P.parse_badmin_queue(text, name)

    @hookimpl
    def list_users(self):
        if self.cmds.has("busers") and not self.service:
            return P.parse_busers(self._run("busers", ["all"], what="listing users"))
        # No busers (AIP's c-commands), or one service account running every job: count
        # from the job listing.
        counts: dict[str, UserInfo] = {}
        for j in self._listing():
            if not j.user_name:
                continue
            u = counts.setdefault(j.user_name, UserInfo(name=j.user_name))
            if j.state in (JobState.PENDING, JobState.HELD):
                u.pending += 1
            elif j.state is JobState.RUNNING:
                u.running += 1
            elif j.state is JobState.SUSPENDED:
                u.suspended += 1
            else:
                continue
            u.njobs += 1
        return sorted(counts.values(), key=lambda u: u.name)

    @hookimpl
    def cluster_info(self):
        name, version, master = self.o["cluster_name"] or "lsf", None, None
        if self.cmds.has("lsid"):
            info = P.parse_lsid(self._run("lsid", [], what="cluster information"))
            name = self.o["cluster_name"] or info["cluster"]
            version, master = info["version"], info["master"]
        hosts = self.list_hosts()
        queues = self.list_queues()
        by_state: dict[str, int] = {}
        for j in self._listing():
            by_state[j.state.value] = by_state.get(j.state.value, 0) + 1
        return ClusterInfo(name=name, scheduler="aip" if self.o["commands"] == "c" else "lsf",
                           version=version, master=master or (hosts[0].name if hosts else None),
                           hosts=len(hosts), cpus=sum(h.max_slots or 0 for h in hosts),
                           queues=len(queues), jobs=by_state)

    @hookimpl
    def health(self):
        t0 = time.perf_counter()
        try:
            queues = P.parse_bqueues(self._run("bqueues", [], what="health check"))
        except GatewayError as exc:
            return Health(ok=False, latency_ms=(time.perf_counter() - t0) * 1000, detail=exc.msg)
        return Health(ok=True, latency_ms=(time.perf_counter() - t0) * 1000,
                      detail=f"{len(queues)} queues answer through {self.cmds.get('bqueues')}")

    @hookimpl
    def read_user_file(self, user, path, limit):
        """A small file (a vis session file) read as the account the user's jobs run as;
        ``~/`` is that account's home. None when the file does not exist."""
        account = self.account() if self.service else user.name
        if path.startswith("~/"):
            home = self.home_of(account)
            if not home:
                raise InvalidInput(f"no home directory for {account}")
            path = home.rstrip("/") + path[1:]
        if not path.startswith("/"):
            raise InvalidInput(f"not an absolute path: {path}")
        res = self._run_plain(["head", "-c", str(int(limit)), "--", path], as_user=self._as(user),
                              private=True)     # the session file holds the VNC password
        if res.returncode != 0:
            if "No such file" in res.err:
                return None
            raise SchedulerRefused(f"cannot read {path}: {res.err.strip() or res.returncode}")
        return res.stdout

    @hookimpl
    def file_transport(self, user):
        """The files feature (and the vis session file) go through the same transport, as
        the user (run_as: sudo) or as the service account in the user's own directory."""
        if self.service:
            return self.transport, None, self.user_home(user)
        return self.transport, user.name

    def close(self):
        self.transport.close()


# ==================================================================== helpers

def _submit_result(text: str) -> tuple[str, str | None]:
    try:
        return P.parse_submit(text)
    except SchedulerRefused as exc:
        if "Queue has been closed" in exc.msg or "not accepting" in exc.msg:
            raise Conflict(exc.msg) from None
        raise


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _copy(job: Job) -> Job:
    from dataclasses import replace
    return replace(job, hosts=list(job.hosts))


def _base_name(name: str | None) -> str | None:
    if not name:
        return name
    m = P._NAME_INDEX.match(name)
    return m.group("base") if m else name


def _aggregate(job_id: str, elements: list[Job]) -> Job:
    """One Job for a whole array: the most active element state wins."""
    states = [e.state for e in elements]
    state = next(s for s in _STATE_ORDER if s in states)
    if all(s is JobState.COMPLETED for s in states):
        state = JobState.COMPLETED
    first = elements[0]
    finals = [e for e in elements if e.state.is_final]
    codes = [e.exit_code for e in finals if e.exit_code is not None]
    return Job(job_id=job_id, name=_base_name(first.name), user_name=first.user_name,
               queue=first.queue, state=state, native_state="ARRAY",
               reason=f"{len(elements)} elements: " + ", ".join(
                   f"{sum(1 for s in states if s is st)} {st.value}" for st in _STATE_ORDER if st in states),
               exit_code=max(codes) if state.is_final and codes else None,
               submit_time=min((e.submit_time for e in elements if e.submit_time), default=None),
               start_time=min((e.start_time for e in elements if e.start_time), default=None),
               end_time=max((e.end_time for e in elements if e.end_time), default=None)
               if len(finals) == len(elements) else None,
               hosts=sorted({h for e in elements for h in e.hosts}), cpus=first.cpus,
               memory_mb=first.memory_mb, time_limit_minutes=first.time_limit_minutes,
               work_dir=first.work_dir, command=first.command)


def _final_marker(job: Job):
    """What tells this EXIT apart from an earlier one of the same id (a reused or requeued id)."""
    return job.end_time or job.submit_time
