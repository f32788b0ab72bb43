"""The Slurm scheduler plugin: every hook of the contract but visualization.

Commands are built in commands.py, their output parsed in parse.py; this module decides who
runs what and where, through one transport (local, SSH or SSM):

- ``run_as: sudo``: commands acting for a user (submit, kill, hold, reading output) run as
  that Unix user (the job's owner for actions on an existing job, which the core has already
  authorized); ``service``: everything runs as ``service_user``, and each job carries the
  gateway user it was submitted for as its comment (``--comment=hpc-gateway:alice``): a job
  of the service account with that tag is alice's.
- The queue snapshot, hosts, queues and health run as the service account, operator actions
  (host/queue open/close, suspend/resume, which Slurm allows operators only) as
  ``admin_run_as``.
- Listings and details come from the shared snapshot (snapshot.py), never from a squeue per
  request.
"""
from __future__ import annotations

import logging
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace

from gateway import scriptfile
from gateway.errors import (Conflict, Forbidden, GatewayError, InvalidInput, NotFound,
                            NotImplementedByPlugin, SchedulerRefused, SchedulerUnavailable)
from gateway.hookspecs import hookimpl
from gateway.models import (FINAL_STATES, ClusterInfo, Health, Job, JobOutput, JobState, UserInfo, expand_home,
                            has_home_paths)
from gateway.s3scripts import S3ScriptSource
from gateway.transports import CommandResult, check_not_the_gateways_account, make_transport, run_command

try:                                          # the core's Prometheus figures, when it has them
    from gateway.metrics import command_timer, set_snapshot_time
except ImportError:                           # pragma: no cover
    command_timer = set_snapshot_time = None

from . import commands, parse
from .options import load_options
from .snapshot import Record, SharedSnapshot, View

log = logging.getLogger(__name__)

PLUGIN = "slurm_ssm"
ACTIVE = (JobState.PENDING, JobState.HELD, JobState.RUNNING, JobState.SUSPENDED)
# The states in which Slurm accepts each action; anything else is a 409 before we ask.
_VALID_FOR = {
    "suspend": {JobState.RUNNING},
    "resume": {JobState.SUSPENDED},
    "hold": {JobState.PENDING, JobState.HELD},
    "release": {JobState.HELD},
    "requeue": {JobState.RUNNING, JobState.SUSPENDED, JobState.COMPLETED, JobState.FAILED,
                JobState.CANCELLED},
    "kill": {JobState.PENDING, JobState.HELD, JobState.RUNNING, JobState.SUSPENDED},
}
# At most this many `scontrol show job` per refresh to learn exit codes (format path only).
_EXIT_CODE_LOOKUPS = 20


class SlurmScheduler:
    # Answered from the shared snapshot; the snapshot itself lends the turn away whenever it
    # has to wait (for squeue, or for another thread's or process's refresh).
    keeps_turn = frozenset({"get_job", "list_jobs"})
    def __init__(self, options: dict | None):
        self.opts = load_options(options)
        self.transport = make_transport(dict(self.opts["transport"]))
        if self.opts["run_as"] == "service":
            check_not_the_gateways_account(self.transport, self.opts["service_user"], "slurm_ssm",
                                           self.opts["allow_gateway_account"])
        self.timeout = self.opts["command_timeout"]
        self.service = self.opts["run_as"] == "service"
        self.allowed_native = commands.DEFAULT_NATIVE_OPTIONS | set(self.opts["allowed_native_options"])
        if self.service:
            if "--comment" in self.opts["allowed_native_options"]:
                log.warning("slurm_ssm: --comment in allowed_native_options is ignored with run_as: "
                            "service (the comment carries the gateway user a job belongs to)")
            self.allowed_native -= {"--comment"}        # the comment carries the gateway user
        self._format_fields = commands.SERVICE_FORMAT_FIELDS if self.service else commands.FORMAT_FIELDS
        self._own_name: str | None = None               # the service account's Unix name
        self._made_dirs: set[str] = set()
        self.snapshot = SharedSnapshot(self.opts["cache_dir"], self.opts["snapshot_interval"], self._fetch,
                                       retention=self.opts["finished_retention"], keep=self.opts["finished_max"],
                                       stale_grace=self.opts["snapshot_stale_grace"])
        self._json_mode = self.opts["json"]
        if self.service and self._json_mode == "no":
            # Under run_as: service a job's comment makes it a gateway user's, and a job name
            # holding squeue's separators can forge whole records that parse cleanly (another
            # job's id, with the comment of the name's owner): a job of one user could make
            # another's its own. squeue --json cannot be fooled so; format strings only
            # where --json is missing (before 21.08), with a warning.
            log.info("slurm_ssm: run_as: service reads squeue --json (format strings could be forged "
                     "by a job name); json: \"no\" applies to run_as: sudo only")
            self._json_mode = "auto"
        self._json_forced = self._json_mode != self.opts["json"]
        self._json: bool | None = {"yes": True, "no": False}.get(self._json_mode)
        self._homes: dict[str | None, str | None] = {}
        # (id, end time) of failed jobs whose scontrol text was ambiguous
        self._exit_unknown: set[tuple[str, object]] = set()
        self._config: tuple[float, dict] | None = None
        self.s3_scripts = S3ScriptSource(self.opts["s3"])
        self._reported_snapshot = None
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid: int | None = None
        self._controller_down = False
        self._down_until = 0.0
        self._down_words = ""
        self._closed = threading.Event()
        self._watch_pid: int | None = None
        self._start_watch()

    def close(self) -> None:
        self._closed.set()
        self.transport.close()

    def _start_watch(self) -> None:
        """The background refresh (watch_seconds), once per process: threads do not survive
        a fork (gunicorn's workers), so a worker starts its own on its first read."""
        if self.opts["watch_seconds"] <= 0 or self._watch_pid == os.getpid() or self._closed.is_set():
            return
        self._watch_pid = os.getpid()
        threading.Thread(target=_watch, name="slurm-snapshot-watch", daemon=True,
                         args=(weakref.ref(self), self._closed, self.opts["watch_seconds"])).start()

    # ------------------------------------------------------------ accounts
    @property
    def service_account(self) -> str | None:
        return self.opts["service_user"]

    @property
    def admin_account(self) -> str | None:
        return self.opts["admin_run_as"] or self.opts["service_user"]

    def _account_for(self, user_name: str | None) -> str | None:
        """Who runs a command acting for ``user_name``."""
        if self.service:
            return self.service_account
        if not user_name:
            raise Forbidden("no user to run the command as")
        if user_name in self.opts["deny_users"]:
            raise Forbidden(f"commands are never run as {user_name} through the gateway")
        return user_name

    # ------------------------------------------------------------ running commands
    def _run(self, argv: list[str], *, as_user: str | None = None, stdin: bytes | None = None,
             timeout: float | None = None, private: bool = False) -> CommandResult:
        """``private``: the output is a secret, kept out of SSM's command history."""
        if command_timer is None:
            return self._run_bare(argv, as_user=as_user, stdin=stdin, timeout=timeout, private=private)
        with command_timer(PLUGIN, _program(argv)) as timing:
            result = self._run_bare(argv, as_user=as_user, stdin=stdin, timeout=timeout, private=private)
            timing.ok = result.returncode == 0
        return result

    def _run_bare(self, argv, *, as_user, stdin, timeout, private=False) -> CommandResult:
        if _program(argv) not in CONTROLLER_COMMANDS or argv == commands.ping():
            return self._run_transport(argv, as_user=as_user, stdin=stdin, timeout=timeout, private=private)
        return self._run_controller_command(argv, as_user=as_user, stdin=stdin, timeout=timeout)

    def _run_transport(self, argv, *, as_user, stdin, timeout, private=False) -> CommandResult:
        try:
            return run_command(self.transport, argv, private=private, stdin=stdin, as_user=as_user,
                               timeout=self.timeout if timeout is None else timeout,
                               retry_safe=_read_only(argv))
        except ValueError as exc:          # e.g. an embedded NUL the checks let through
            raise InvalidInput(f"cannot run {argv[0]}: {exc}") from exc

    def _run_controller_command(self, argv, *, as_user, stdin, timeout) -> CommandResult:
        """Fail fast when slurmctld is down.

        Slurm's clients retry an unreachable controller for MessageTimeout (about 10 s) before
        failing, while `scontrol ping` says DOWN in milliseconds. So a read-only command that has not
        answered within ``down_probe_after`` seconds races a ping, again every
        ``down_probe_after`` seconds: a DOWN answers 503 at once (the command is left to end by
        itself, bounded by its timeout). Once DOWN was seen, this process pings before every
        controller command (at most once per ``down_hold`` seconds, answering 503 in between)
        until the controller is back. A controller that is up but slow, or a transport that
        hangs (the ping hangs too), just waits for the command.
        """
        if self._controller_down:
            # Nothing has been sent yet: refusing now is safe for every command.
            if time.monotonic() < self._down_until or self._ping_up()[0] is False:
                raise SchedulerUnavailable(f"the Slurm controller does not answer: {self._down_words}")
        if not _read_only(argv):
            # sbatch, scancel, scontrol update...: once started, only the command itself knows
            # whether it acted (sbatch may still submit when the controller returns), so never
            # answer before it ends.
            return self._run_transport(argv, as_user=as_user, stdin=stdin, timeout=timeout)
        if self._pool is None or self._pool_pid != os.getpid():
            self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="slurm-cmd")
            self._pool_pid = os.getpid()
        future = self._pool.submit(self._run_transport, argv, as_user=as_user, stdin=stdin, timeout=timeout)
        while True:
            try:
                return future.result(timeout=self.opts["down_probe_after"])
            except FutureTimeout:
                pass
            up = self._ping_up()[0]
            if up is None:                 # the transport itself is slow: the command decides
                return future.result()
            if not up:
                raise SchedulerUnavailable(f"the Slurm controller does not answer: {self._down_words}")

    def _ping_up(self, timeout: float = 1.0) -> tuple[bool | None, str]:
        """``_ping``, with the transport's own failure as (None, its words): a ping that fails
        or is slow tells nothing about the controller. The fail-fast paths' default of 1 s: a
        ping answers in milliseconds when the transport works, and a slow one must not delay
        the command's own answer much."""
        try:
            return self._ping(min(self.timeout, timeout))
        except GatewayError as exc:
            return None, exc.msg

    def _ping(self, timeout: float) -> tuple[bool | None, str]:
        """`scontrol ping`, however this plugin asks (the fail-fast paths, the snapshot after an
        outage, /health, a refusal to tell apart): (True, words) for UP, (False, words) for an
        explicit DOWN, (None, words) for any other answer (sudo's refusal, words this plugin
        does not read), which says nothing about the controller. Raises the transport's
        GatewayError.

        UP and DOWN update what this process believes: an UP ends the hold at once, so no
        request is refused on an old DOWN after a ping has seen the controller back; a DOWN
        refuses controller commands for down_hold seconds. Nothing else puts a hold."""
        res = self._run(commands.ping(), as_user=self.service_account, timeout=timeout)
        up, words = parse.parse_ping(res.out or res.err)
        if up:
            self._controller_down = False
            return True, words
        if not parse.says_down(words):
            return None, words
        self._controller_down = True
        self._down_until = time.monotonic() + self.opts["down_hold"]
        self._down_words = words
        return False, words

    def _check(self, result: CommandResult, *, input_errors: bool = False) -> CommandResult:
        if result.returncode != 0:
            raise self._refused(result, parse.refusal(result.out, result.err, input_errors=input_errors))
        return result

    def _refused(self, result: CommandResult, err: GatewayError) -> GatewayError:
        """``err``, unless the controller is down. 22.05's scontrol answers a job action (hold,
        release, requeue, suspend, resume, update JobId=...) with 'Unexpected message received
        for job N' after MessageTimeout when slurmctld is down (measured: 9 s), the words it also
        has for suspending or resuming a job it does not know. A ping tells the two apart: an
        explicit DOWN is a 503 (try again later: the action was not done); UP, a ping that
        fails or says something else keep ``err``. Not a hot path (scontrol has spent its 9 s),
        so the ping may take as long as a health check's (an SSM round trip is over 1 s)."""
        if isinstance(err, SchedulerUnavailable) or not parse.unexpected_message(result.out, result.err):
            return err
        up, words = self._ping_up(5.0)
        if up is False:
            return SchedulerUnavailable(f"{parse.scheduler_words(result.out, result.err)} "
                                        f"(the Slurm controller does not answer: {words})")
        return err

    def _service(self, argv: list[str], timeout: float | None = None) -> CommandResult:
        return self._check(self._run(argv, as_user=self.service_account, timeout=timeout))

    # ------------------------------------------------------------ the snapshot
    def _use_json(self) -> bool:
        if self._json is None:
            res = self._run(commands.version(), as_user=self.service_account)
            ver = parse.parse_version(res.out) if res.returncode == 0 else None
            # squeue --json appeared in 21.08; an unknown version tries JSON first.
            self._json = ver is None or ver >= (21, 8)
            log.info("slurm_ssm: Slurm %s, squeue %s", ver, "--json" if self._json else "format strings")
        return self._json

    def _fetch(self, previous: Mapping[str, Record], previous_error: dict | None) -> list[Record]:
        """One squeue of every job (runs under the snapshot's lock, once per interval)."""
        records = self._owned(self._fetch_records(previous, previous_error))
        # squeue read the queue (its parsers refuse slurmctld's "down" answers): the controller
        # answers, whatever the last ping said. Without this, a DOWN followed only by pings
        # that say nothing (sudo's refusal) made every controller command ping first.
        self._controller_down = False
        return records

    def _owned(self, records: list[Record]) -> list[Record]:
        """run_as: service: a job of the service account tagged for a gateway user is that
        user's (commands.OWNER_TAG); a tag on anybody else's job means nothing."""
        if not any("owner_tag" in extra for _, extra in records):
            return records
        own = None
        if self.service:
            own = self._service_unix_name()
            if own is None:
                # Unmapped, every tagged job would read as the service account's (and a job
                # that ends meanwhile would be kept so for finished_retention): fail this
                # refresh instead; the snapshot keeps the previous records and retries.
                raise SchedulerUnavailable("cannot tell the service account's name (id -un failed): "
                                           "set the slurm_ssm option service_user")
        out = []
        for job, extra in records:
            tagged = extra.pop("owner_tag", None)
            if tagged and own and job.user_name == own:
                job = replace(job, user_name=tagged)
            out.append((job, extra))
        return out

    def _service_unix_name(self) -> str | None:
        """The Unix account the service account's jobs belong to: service_user, else the
        transport's own login (asked once)."""
        if self._own_name is None:
            if self.service_account:
                self._own_name = self.service_account
            else:
                res = self._run(["id", "-un"], as_user=None)
                if res.returncode == 0 and res.out.strip():
                    self._own_name = res.out.strip()
        return self._own_name

    def _fetch_records(self, previous: Mapping[str, Record], previous_error: dict | None) -> list[Record]:
        if previous_error and previous_error.get("type") in ("SchedulerUnavailable", "SchedulerTimeout"):
            # The controller was down: `scontrol ping` says so at once, where squeue would
            # retry for seconds.
            # A ping that fails otherwise (None, or the transport's error: an SSM round trip
            # may take over 5 s) leaves it to squeue, or a slow transport would never get
            # past this ping.
            up, words = self._ping_up(5.0)
            if up is False:
                raise SchedulerUnavailable(f"the Slurm controller does not answer: {words}")
        if self._use_json():
            res = self._run(commands.squeue_json(), as_user=self.service_account)
            if res.returncode != 0 and not res.stdout.strip().startswith(b"{"):
                if b"unrecognized option" in res.stderr and self._json_mode == "auto":
                    self._json = False
                    if self.service:
                        log.warning("slurm_ssm: this squeue has no --json: with run_as: service, a job "
                                    "name holding squeue's separators could forge another job's record")
                    return self._fetch_records(previous, None)
                raise parse.refusal(res.out, res.err)
            try:
                return parse.parse_squeue_json(res.out)
            except SchedulerRefused as exc:
                if not self._json_forced:
                    raise
                # A --json layout this plugin does not read (23.02+), where the operator asked
                # for format strings: those, with the forgery risk said once.
                log.warning("slurm_ssm: %s; reading squeue's format strings instead (with run_as: "
                            "service, a job name holding squeue's separators could forge another "
                            "job's record)", exc.msg)
                self._json = False
                return self._fetch_records(previous, None)
        res = self._service(commands.squeue_format(self._format_fields))
        records, problems = parse.read_squeue_format(res.out, self._format_fields)
        if problems:
            # Separators in a user's free text (a job name...) left records out or forged
            # some: JSON cannot be fooled that way, so this refresh reads it (when it can).
            log.warning("slurm_ssm: squeue's format output is ambiguous (%s): reading squeue --json "
                        "for this refresh", "; ".join(problems[:3]))
            res = self._run(commands.squeue_json(), as_user=self.service_account)
            why = "not available"
            if res.returncode == 0 and res.stdout.strip().startswith(b"{"):
                try:
                    return parse.parse_squeue_json(res.out)
                except SchedulerRefused as exc:
                    # A layout this plugin does not read (23.02+): the records that did parse
                    # are still worth more than a failed refresh.
                    why = f"not readable ({exc.msg})"
            if not records:
                raise SchedulerRefused(f"squeue printed {len(problems)} records and none could be "
                                       f"read, and squeue --json is {why}")
            log.warning("slurm_ssm: squeue --json is %s: listing only the unambiguous records", why)
        return self._add_exit_codes(records, previous)

    def _add_exit_codes(self, records: list[Record], previous: dict[str, Record]) -> list[Record]:
        """squeue's format strings have no exit code: ask scontrol once per failed job (once
        per end: a requeued job that fails again has a new end time and a new exit code)."""
        out, lookups = [], 0
        for job, extra in records:
            if job.state is JobState.FAILED and job.exit_code is None:
                prev = previous.get(extra.get("id"))
                key = (extra["id"], job.end_time)
                if prev is not None and prev[0].exit_code is not None and prev[0].end_time == job.end_time:
                    job = replace(job, exit_code=prev[0].exit_code)
                elif key not in self._exit_unknown and lookups < _EXIT_CODE_LOOKUPS:
                    lookups += 1
                    res = self._run(commands.show_job(extra["id"]), as_user=self.service_account)
                    if res.returncode == 0:
                        code = parse.parse_show_job_exit_code(res.out, name=job.name)
                        if code is not None:
                            job = replace(job, exit_code=code,
                                          state=parse.normalize_state(job.native_state, job.reason, code))
                        else:
                            # Its own text makes it ambiguous: asking again would not help, and
                            # every refresh would cost slurmctld one more RPC.
                            if len(self._exit_unknown) > 10000:
                                self._exit_unknown.clear()
                            self._exit_unknown.add(key)
            out.append((job, extra))
        return out

    def _view(self, max_age: float | None = None) -> View:
        self._start_watch()
        view = self.snapshot.get(max_age=max_age)
        if set_snapshot_time is not None and view.taken_at != self._reported_snapshot:
            self._reported_snapshot = view.taken_at
            set_snapshot_time(PLUGIN, view.taken_at)
        return view

    def _find(self, view: View, job_id: str) -> Job | None:
        rec = view.by_display.get(job_id)
        if rec is not None:
            return rec[0]
        members = view.arrays.get(job_id)
        if members:
            return _aggregate(job_id, members)
        rec = view.by_id.get(job_id)
        if rec is not None:
            return rec[0]
        base, sep, task = job_id.partition("_")
        if sep and task.isdigit():
            for job, extra in view.arrays.get(base, []):
                if extra.get("array_tasks") and parse.array_spec_contains(extra["array_tasks"], int(task)):
                    return replace(job, job_id=job_id)
        return None

    def _job(self, job_id: str, max_age: float | None = None) -> Job:
        if not commands.valid_job_id(job_id or ""):
            raise NotFound(f"no such job: {job_id}")
        job = self._find(self._view(max_age), job_id)
        if job is None:
            raise NotFound(f"no such job: {job_id}")
        return job

    # ------------------------------------------------------------ jobs
    @hookimpl
    def get_job(self, user, job_id):
        return self._job(job_id)

    @hookimpl
    def list_jobs(self, user, query):
        view = self._view()
        if query is None:
            return view.jobs
        jobs = view.jobs if query.user is None else view.jobs_of(query.user)
        states = set(query.states) if query.states else None
        return [j for j in jobs
                if (query.user is None or j.user_name == query.user)
                and (states is None or j.state in states)
                and (query.queue is None or j.queue == query.queue)
                and (query.name is None or j.name == query.name)]

    @hookimpl
    def submit_job(self, user, spec):
        account = self._account_for(user.name)
        if has_home_paths(spec):
            home = self._user_dir(user.name)
            if not home:
                raise SchedulerUnavailable(f"the home directory of {account or 'the service account'} on "
                                           "the cluster is unknown (getent passwd failed): give absolute paths")
            spec = expand_home(spec, home)
        # Every check before anything runs (on the cluster or in S3).
        env_vars = commands.check_environment(spec.environment) if spec.environment else None
        location = spec.script_location
        from_s3 = location is not None and location.startswith("s3://")
        if location is not None and not from_s3 and not location.startswith("/"):
            raise InvalidInput("scriptLocation must be an absolute path on the cluster or s3://bucket/key",
                               errors={"scriptLocation": ["not an absolute path or s3:// URL"]})
        if from_s3:
            self.s3_scripts.check(location, user.name)
        script_path = location if location is not None and not from_s3 else None
        build = dict(allowed_native=self.allowed_native, script_path=script_path,
                     owner=user.name if self.service else None)
        commands.sbatch(spec, default_work_dir="/", **build)
        stdin = None
        if spec.script is not None:
            stdin = spec.script.encode("utf-8", "surrogateescape")
        elif from_s3:
            stdin = self.s3_scripts.fetch(location, user.name)
        elif script_path is not None:
            # sbatch reads the file itself: a device or a FIFO would hold it (and fill memory
            # on the cluster's host) until the command timeout.
            st = self._run(scriptfile.stat_argv(script_path), as_user=account)
            scriptfile.check(script_path, st.returncode, st.out, st.err)
        build["default_work_dir"] = spec.work_dir or self._default_work_dir(user.name)
        env_file = None
        try:
            if env_vars is not None:
                base = self._check(self._run(commands.print_environment(), as_user=account)).stdout
                data = commands.export_file(base, env_vars, commands.default_job_name(spec))
                env_file = self._check(self._run(commands.make_temp_file(), as_user=account)).out.strip()
                self._check(self._run(commands.write_file(env_file), as_user=account, stdin=data))
            argv = commands.sbatch(spec, export_file=env_file, **build)
            res = self._run(argv, as_user=account, stdin=stdin if stdin is not None else b"")
        finally:
            if env_file:
                try:
                    self._run(commands.remove_file(env_file), as_user=account)
                except GatewayError:
                    log.warning("could not remove %s on the cluster", env_file)
        self.snapshot.invalidate()
        if res.returncode != 0:
            raise parse.refusal(res.out, res.err, input_errors=True)
        return parse.parse_sbatch(res.out)

    def _home_of(self, account: str | None) -> str | None:
        """The home directory of ``account`` (None: the transport's own) on the cluster."""
        if account not in self._homes:
            name = account
            if name is None:
                name = self._service_unix_name()
            home = None
            if name:
                res = self._run(commands.getent_passwd(name), as_user=self.service_account)
                home = parse.parse_getent_home(res.out) if res.returncode == 0 else None
            if home is None and not self.service and account is not None:
                raise Forbidden(f"user {account} has no Unix account on the cluster")
            if home is None:
                return None                      # not kept: asked again next time
            self._homes[account] = home
        return self._homes[account]

    def _default_work_dir(self, user_name: str) -> str:
        return self.opts["default_work_dir"] or self._user_dir(user_name) or "/tmp"

    def _user_dir(self, user_name: str) -> str | None:
        """Where a user's jobs start (without a workDir) and their files live: their home
        (run_as: sudo), or ``<service account's home>/hpc-gateway/<user>`` (run_as: service,
        created once), so that users sharing one account do not share one directory."""
        account = self._account_for(user_name)
        base = self._home_of(account)
        if not self.service:
            return base
        if not base:
            raise SchedulerUnavailable(f"the home directory of {account or 'the service account'} on "
                                       "the cluster is unknown (getent passwd failed)")
        if not commands.OWNER_NAME.match(user_name or ""):
            raise Forbidden(f"the user name {user_name!r} cannot name a directory on the cluster")
        path = f"{base.rstrip('/')}/hpc-gateway/{user_name}"
        if path not in self._made_dirs:
            res = self._run(["mkdir", "-p", "--", path], as_user=account)
            if res.returncode != 0:
                raise SchedulerRefused(f"cannot create {path}: {parse.scheduler_words(res.out, res.err)}")
            self._made_dirs.add(path)
        return path

    @hookimpl
    def control_job(self, user, job_id, action):
        if action not in _VALID_FOR:
            raise InvalidInput(f"unknown action {action!r}")
        job = self._job(job_id)
        if job.state not in _VALID_FOR[action]:
            # The snapshot may be up to an interval old: look again before saying no.
            job = self._job(job_id, max_age=0)
            if job.state not in _VALID_FOR[action]:
                raise Conflict(f"cannot {action} job {job_id}: it is {job.state.value}"
                               + (f" ({job.reason})" if job.reason else ""))
        if action in ("suspend", "resume"):
            account = self.admin_account
        else:
            account = self._account_for(job.user_name or user.name)
        try:
            if action == "suspend" and not user.is_admin:
                self._owner_suspend(job_id)
            elif action == "suspend" and (tasks := self._running_tasks(job_id)):
                # An array: its running tasks one by one (the array's id fails on its pending
                # tasks, after suspending the others).
                self._suspend_tasks(job_id, tasks, account)
            elif action == "resume":
                self._resume(user, job_id)
            else:
                # The job ends: its AdminComment goes to accounting without the owner's mark
                # (put back if Slurm refuses, so the owner can still resume).
                removed = (self._unmark(job_id) if job.state is JobState.SUSPENDED
                           and action in ("kill", "requeue") else [])
                try:
                    if action == "kill":
                        res = self._run(commands.scancel(job_id), as_user=account)
                        err = parse.scancel_error(res.out, res.err)
                        if err is not None:
                            raise err
                        self._check(res)
                    else:
                        self._check(self._run(commands.job_action(action, job_id), as_user=account))
                except GatewayError as exc:
                    self._set_comments(removed)
                    if isinstance(exc, NotFound) and action == "requeue" and job.state in FINAL_STATES:
                        # A finished job the snapshot carries after slurmctld forgot it
                        # (MinJobAge): GET shows it, so "no such job" would contradict it.
                        raise Conflict(f"cannot requeue job {job_id}: it has ended ({job.state.value}) and "
                                       "Slurm no longer holds it (it forgets finished jobs after MinJobAge); "
                                       "submit it again") from None
                    raise
        finally:
            self.snapshot.invalidate()
        return None

    @hookimpl
    def modify_job(self, user, job_id, change):
        if not commands.valid_job_id(job_id):
            raise NotFound(f"no such job: {job_id}")
        job = self._job(job_id, max_age=0)           # the rules apply to the job as it is now
        limit = None
        if (change.time_limit_minutes is not None or change.queue is not None) and not user.is_admin:
            # The partition's MaxTime binds users, also a job moving in with its limit; Slurm
            # would not apply it to a service account that is an operator (or root, as SSM
            # runs by default).
            limit = self._partition_max_time(change.queue or job.queue)
        if change.time_limit_minutes is not None:
            # Also for an administrator: whether the change raises a started task's limit
            # decides the account it runs as.
            job = self._as_started_tasks_limit(job_id, job)
        change = change.checked(job, is_admin=user.is_admin, queue_limit=limit)
        if not change.given():
            return None
        # A job's owner acts as the account their jobs run as, within Slurm's rules for users,
        # as control_job does; an administrator's raise needs an operator: admin_run_as.
        as_admin = user.is_admin and change.raises_limit(job)
        account = self.admin_account if as_admin else self._account_for(job.user_name or user.name)
        try:
            res = self._run(commands.update_job(job_id, change), as_user=account)
            if res.returncode != 0:
                raise self._update_refused(user, job_id, change, res, as_admin=as_admin, account=account)
        finally:
            self.snapshot.invalidate()
        return None

    def _as_started_tasks_limit(self, job_id: str, job: Job) -> Job:
        """``job`` as a new time limit is judged (whether it raises a started job's, for the
        rule on users and for the account an administrator's change runs as): an array's
        tasks may have limits of their own (a task changed alone), so against the least of
        its started tasks', not the first task's (the array's summary)."""
        started = [j.time_limit_minutes for j, _ in self._view().arrays.get(job_id, [])
                   if j.state in (JobState.RUNNING, JobState.SUSPENDED) and j.time_limit_minutes]
        if started and (job.time_limit_minutes is None or min(started) < job.time_limit_minutes):
            return replace(job, time_limit_minutes=min(started), state=JobState.RUNNING)
        return job

    def _update_refused(self, user, job_id, change, res, *, as_admin: bool, account: str | None):
        """The error for a refused ``scontrol update``. Slurm says 'Access/permission denied'
        for every rule it keeps on limits; two of those are not the client's input:
        - an administrator's raise of the time limit (and a new name), run as
          ``admin_run_as``: that account is no Slurm operator, a configuration fault (502).
          (With a move too, the partition may refuse operators as well, RootOnly: Slurm's
          words stay.)
        - a user's change to a job that has started since the look (seconds earlier over
          SSM): the gateway's own rule answers, as it would have on a fresh look (403 for
          a raise, 409 for a move). A look that fails leaves Slurm's refusal as it is: it is
          final, and a 503 would invite the client to send it again."""
        err = self._refused(res, parse.update_refusal(res.out, res.err,
                                                      time_limit=change.time_limit_minutes is not None))
        words = parse.scheduler_words(res.out, res.err)
        if not parse.denied(words):
            return err
        if as_admin:
            if change.queue is None:
                return SchedulerRefused(f"{words}: an administrator's raise of a time limit runs as admin_run_as "
                                        f"({account or 'the transport login'}), which must be a Slurm operator "
                                        "(AdminLevel=Operator in sacctmgr, or SlurmUser)")
            # Not the owner's limits (update_refusal's hint): Slurm's own words, a 403.
            return parse.update_refusal(res.out, res.err)
        try:
            now = self._job(job_id, max_age=0)
            if change.time_limit_minutes is not None:
                now = self._as_started_tasks_limit(job_id, now)
        except GatewayError:
            return err
        try:
            change.checked(now, is_admin=user.is_admin)
        except (Conflict, Forbidden) as exc:
            return exc
        return err

    def _partition_max_time(self, partition: str | None) -> int | None:
        """MaxTime of ``partition`` in minutes; None when unlimited or unknown. A pending job
        listed in several partitions (a,b) may run in any: the least of their MaxTimes."""
        if not partition:
            return None
        names = set(partition.split(","))
        limits = [q.time_limit_minutes for q in parse.parse_partitions(self._service(commands.show_partitions()).out)
                  if q.name in names and q.time_limit_minutes is not None]
        return min(limits) if limits else None

    # ------------------------------------------------------------ owners' suspensions
    # Slurm lets operators alone suspend and resume. The gateway does both for a job's owner
    # too (as admin_run_as), but an owner may resume only a suspension of their own, never one
    # of an administrator or of Slurm's preemption: each task the owner suspends is marked in
    # its AdminComment (commands.USER_SUSPEND_MARK), which only Slurm administrators can set,
    # bound to that suspension's time. Only squeue --json shows AdminComment.
    def _records_of(self, job_id: str) -> list[Record]:
        """Every record ``job_id`` names (a job, an array task, an array's tasks), afresh."""
        res = self._run(commands.squeue_json(), as_user=self.service_account)
        if res.returncode != 0 and b"unrecognized option" in res.stderr:
            raise NotImplementedByPlugin("owners' suspensions need squeue --json (Slurm 21.08 or later): "
                                         "an administrator can suspend and resume this job")
        if res.returncode != 0 or not res.stdout.strip().startswith(b"{"):
            raise SchedulerRefused("cannot read squeue --json: " + parse.scheduler_words(res.out, res.err))
        try:
            records = parse.parse_squeue_json(res.out)
        except SchedulerRefused as exc:          # a JSON layout the plugin does not know
            raise NotImplementedByPlugin(f"owners' suspensions need squeue --json in a layout this "
                                         f"plugin reads ({exc.msg}): an administrator can suspend "
                                         "and resume this job") from exc
        return [(job, extra) for job, extra in records
                if job_id in (job.job_id, extra.get("id"), extra.get("array_job_id"))]

    def _suspended_records(self, job_id: str) -> list[Record]:
        return [r for r in self._records_of(job_id) if r[0].state is JobState.SUSPENDED]

    def _running_tasks(self, job_id: str) -> list[str]:
        """An array's running tasks, afresh, as <array>_<task>; [] for other jobs. Never by
        their raw ids: the last task to start runs under the array's own id, which scontrol
        reads as the whole array. Afresh: a snapshot up to an interval old would miss the
        tasks started since and name some that have ended."""
        if not self._view().arrays.get(job_id):
            return []
        members = self._view(max_age=0).arrays.get(job_id) or []
        return [job.job_id for job, _ in members if job.state is JobState.RUNNING]

    def _suspend_task(self, task: str, account: str | None) -> bool:
        """Suspend one task (as ``account``); False when it has ended since the look (Slurm:
        '<id>: Job/step already completing or completed'): passed over. Any other refusal
        raises, and Slurm did nothing to the task."""
        try:
            self._check(self._run(commands.job_action("suspend", task), as_user=account))
        except Conflict as exc:
            if parse.ended_since(exc.msg):
                return False
            raise
        return True

    @staticmethod
    def _none_running(job_id: str, tasks: list[str]) -> Conflict:
        return Conflict(f"cannot suspend job {job_id}: its tasks {', '.join(tasks)} are no longer running")

    def _suspend_tasks(self, job_id: str, tasks: list[str], account: str | None) -> None:
        """An administrator's suspension of an array's running tasks. A task that has ended
        since the look is passed over; any other refusal stops, and the answer names the
        tasks already suspended."""
        done = []
        for task in tasks:
            try:
                if self._suspend_task(task, account):
                    done.append(task)
            except GatewayError as exc:
                if done:                         # any other refusal stops, and says so
                    raise type(exc)(f"{exc.msg}; suspended before that: {', '.join(done)}") from exc
                raise
        if not done:
            raise self._none_running(job_id, tasks)

    def _owner_suspend(self, job_id: str) -> None:
        before = self._records_of(job_id)
        if any(job.state is JobState.SUSPENDED for job, _ in before):
            # Suspending again would succeed and keep the earlier suspension's time: the
            # owner would then hold (and could resume) someone else's suspension.
            raise Conflict(f"cannot suspend job {job_id}: it (or a task of it) is already suspended")
        # Tasks by <array>_<task> (see _running_tasks), one by one: pending ones fail the lot.
        running = [job.job_id for job, _ in before if job.state is JobState.RUNNING]
        if not running:
            raise Conflict(f"cannot suspend job {job_id}: nothing of it is running")
        suspended, marked, in_flight = [], {}, None
        try:
            for task in running:
                in_flight = task
                try:
                    acted = self._suspend_task(task, self.admin_account)
                except Conflict:
                    in_flight = None             # refused: Slurm did nothing to it
                    raise
                in_flight = None
                if acted:
                    suspended.append(task)
            if not suspended:
                raise self._none_running(job_id, running)
            now = {job.job_id: extra for job, extra in self._suspended_records(job_id)}
            for task in suspended:
                extra = now.get(task)
                if extra is None or not extra["suspend_time"]:
                    raise SchedulerRefused(f"job {task} does not show as suspended")
                before_comment = extra["admin_comment"]
                mark = commands.user_suspend_mark(extra["suspend_time"], before_comment)
                res = self._run(commands.set_admin_comment(task, mark), as_user=self.admin_account)
                if res.returncode != 0:
                    raise SchedulerRefused(
                        f"its suspension could not be recorded as its owner's ({parse.scheduler_words(res.out, res.err)}): "
                        "admin_run_as must be a Slurm administrator to set AdminComment")
                marked[task] = before_comment
        except GatewayError as exc:
            if not suspended and in_flight is None:
                raise
            # What was suspended is resumed again: an owner's suspension left unmarked could
            # never be resumed by them. (A suspend that failed or timed out may have acted.)
            left = []
            for task in suspended + ([in_flight] if in_flight else []):
                try:
                    self._check(self._run(commands.job_action("resume", task), as_user=self.admin_account))
                except GatewayError as undo:
                    if task != in_flight:
                        left.append(task)
                        log.warning("slurm_ssm: could not resume job %s again: %s", task, undo)
            self._set_comments([(task, comment) for task, comment in marked.items()])
            msg = f"job {job_id} was not suspended: {exc.msg}"
            if left:
                msg += f"; still suspended (an administrator can resume): {', '.join(left)}"
            raise type(exc)(msg) from exc

    def _resume(self, user, job_id: str) -> None:
        if user.is_admin:
            try:
                records = self._suspended_records(job_id)
            except GatewayError:                 # an administrator resumes whatever it says
                records = []
            if not records:
                self._check(self._run(commands.job_action("resume", job_id), as_user=self.admin_account))
                return
        else:
            records = self._suspended_records(job_id)
            if not records:
                raise Conflict(f"cannot resume job {job_id}: it is not suspended")
            if not all(parse.user_suspension(e["admin_comment"], e["suspend_time"])[0] for _, e in records):
                raise Forbidden(f"job {job_id} was suspended by an administrator or by Slurm, not "
                                "through the gateway by its owner: only an administrator may resume it")
        for job, extra in records:               # one by one, by <array>_<task> (_running_tasks)
            self._check(self._run(commands.job_action("resume", job.job_id), as_user=self.admin_account))
            self._set_comments(_given_back([(job, extra)]))

    def _set_comments(self, comments: list[tuple[str, str]]) -> None:
        """Set AdminComments (best effort: a failure is logged)."""
        for task, comment in comments:
            try:
                self._check(self._run(commands.set_admin_comment(task, comment), as_user=self.admin_account))
            except GatewayError as exc:
                log.warning("slurm_ssm: could not set job %s's AdminComment back: %s", task, exc)

    def _unmark(self, job_id: str) -> list[tuple[str, str]]:
        """Give back the admin comments of job_id's marked suspensions; what was removed."""
        try:
            marked = [r for r in self._suspended_records(job_id)
                      if r[1]["admin_comment"].startswith(commands.USER_SUSPEND_MARK)]
        except GatewayError as exc:
            log.warning("slurm_ssm: could not read job %s's suspension marks: %s", job_id, exc)
            return []
        self._set_comments(_given_back(marked))
        return [(job.job_id, extra["admin_comment"]) for job, extra in marked]

    @hookimpl
    def job_output(self, user, job_id, stream, offset, limit):
        job = self._job(job_id)
        path = job.stderr_path if stream == "stderr" else job.stdout_path
        offset = max(int(offset or 0), 0)
        limit = self.opts["max_output_bytes"] if limit is None else min(int(limit), self.opts["max_output_bytes"])
        if not path:
            return JobOutput(data=b"", offset=offset, size=None, path=None)
        account = self._account_for(job.user_name or user.name)
        res = self._run(commands.stat_size(path), as_user=account)
        if res.returncode != 0:
            if "No such file" in res.err:
                return JobOutput(data=b"", offset=offset, size=0, path=path)
            if "Permission denied" in res.err:
                raise Forbidden(parse.scheduler_words(res.out, res.err))
            raise parse.refusal(res.out, res.err)
        try:
            size = int(res.out.strip())
        except ValueError:
            size = None
        if limit <= 0 or (size is not None and offset >= size):
            return JobOutput(data=b"", offset=offset, size=size, path=path)
        res = self._run(commands.read_bytes(path, offset, limit), as_user=account)
        if res.returncode != 0:
            if "No such file" in res.err:
                return JobOutput(data=b"", offset=offset, size=0, path=path)
            raise parse.refusal(res.out, res.err)
        return JobOutput(data=res.stdout, offset=offset, size=size, path=path)

    # ------------------------------------------------------------ files (docs/files.md, docs/vis.md)
    @hookimpl
    def file_transport(self, user):
        """The files feature runs its tools through our transport, as the account this
        user's other commands run as, from the user's directory (see _user_dir)."""
        if self.service:
            return self.transport, self._account_for(user.name), self._user_dir(user.name)
        return self.transport, self._account_for(user.name)

    @hookimpl
    def read_user_file(self, user, path, limit):
        """A small file (a vis session file) read as the account the user's jobs run as."""
        account = self._account_for(user.name)
        if path.startswith("~/"):
            home = self._home_of(account)
            if home is None:
                raise Forbidden(f"{account or 'the service account'} has no home directory on the cluster")
            path = home.rstrip("/") + path[1:]
        if not path.startswith("/") or "\x00" in path:
            raise InvalidInput(f"not an absolute path: {path!r}")
        # private: the session file holds the desktop's VNC password.
        res = self._run(commands.read_bytes(path, 0, int(limit)), as_user=account, private=True)
        if res.returncode != 0:
            if "No such file" in res.err:
                return None
            if "Permission denied" in res.err:
                raise Forbidden(parse.scheduler_words(res.out, res.err))
            raise parse.refusal(res.out, res.err)
        return res.stdout or None

    # ------------------------------------------------------------ hosts and queues
    def _job_counts_by_host(self) -> dict[str, Counter]:
        counts: dict[str, Counter] = {}
        try:
            jobs = self._view().jobs
        except GatewayError:
            return counts
        for job in jobs:
            if job.state in (JobState.RUNNING, JobState.SUSPENDED):
                for host in job.hosts:
                    counts.setdefault(host, Counter())[job.state] += 1
        return counts

    @hookimpl
    def list_hosts(self):
        # The operator's json choice (not the squeue one run_as: service forces): sinfo's
        # --json layout differs again on newer Slurm.
        if not self._json_forced and self._use_json():
            hosts = parse.parse_sinfo_json(self._service(commands.sinfo_json()).out)
        else:
            hosts = parse.parse_nodes_oneliner(self._service(commands.show_nodes()).out)
        counts = self._job_counts_by_host()
        for host in hosts:
            c = counts.get(host.name, Counter())
            host.running, host.suspended = c[JobState.RUNNING], c[JobState.SUSPENDED]
            host.njobs = host.running + host.suspended
        return hosts

    @hookimpl
    def control_host(self, user, host, action):
        if action not in ("open", "close"):
            raise InvalidInput(f"unknown host action {action!r}")
        known = {h.name: h for h in self.list_hosts()}
        if host not in known or not commands.NODE_NAME.match(host):
            raise NotFound(f"no such host: {host}")
        reason = f"closed by {user.name} through hpc-gateway"
        res = self._run(commands.update_node(host, action, reason=reason), as_user=self.admin_account)
        if res.returncode != 0:
            if action == "open" and "Invalid node state" in res.err and known[host].state == "ok":
                return None                      # already open
            raise parse.refusal(res.out, res.err)
        return None

    @hookimpl
    def list_queues(self):
        queues = parse.parse_partitions(self._service(commands.show_partitions()).out)
        try:
            jobs = self._view().jobs
        except GatewayError:
            jobs = []
        by_queue: dict[str, Counter] = {}
        for job in jobs:
            if job.state in ACTIVE and job.queue:
                for q in job.queue.split(","):
                    by_queue.setdefault(q, Counter())[job.state] += 1
        for q in queues:
            c = by_queue.get(q.name, Counter())
            q.pending = c[JobState.PENDING] + c[JobState.HELD]
            q.running, q.suspended = c[JobState.RUNNING], c[JobState.SUSPENDED]
            q.njobs = q.pending + q.running + q.suspended
        return queues

    @hookimpl
    def control_queue(self, user, queue, action):
        if action not in ("open", "close", "activate", "inactivate"):
            raise InvalidInput(f"unknown queue action {action!r}")
        known = {q.name: q for q in parse.parse_partitions(self._service(commands.show_partitions()).out)}
        if queue not in known or not commands.PARTITION_NAME.match(queue):
            raise NotFound(f"no such queue: {queue}")
        q = known[queue]
        open_, active = q.open, q.active
        if action in ("open", "close"):
            open_ = action == "open"
        else:
            active = action == "activate"
        state = parse.partition_state_for(open_, active)
        self._check(self._run(commands.update_partition(queue, state), as_user=self.admin_account))
        return None

    # ------------------------------------------------------------ users, cluster, health
    @hookimpl
    def list_users(self):
        users: dict[str, UserInfo] = {}
        for job in self._view().jobs:
            if not job.user_name:
                continue
            info = users.setdefault(job.user_name, UserInfo(name=job.user_name))
            if job.state in (JobState.PENDING, JobState.HELD):
                info.pending += 1
            elif job.state is JobState.RUNNING:
                info.running += 1
            elif job.state is JobState.SUSPENDED:
                info.suspended += 1
        for info in users.values():
            info.njobs = info.pending + info.running + info.suspended
        return sorted(users.values(), key=lambda u: u.name)

    def _slurm_config(self) -> dict:
        now = time.monotonic()
        if self._config is None or now - self._config[0] > 300:
            self._config = (now, parse.parse_config(self._service(commands.show_config()).out))
        return self._config[1]

    @hookimpl
    def cluster_info(self):
        config = self._slurm_config()
        hosts = self.list_hosts()
        queues = parse.parse_partitions(self._service(commands.show_partitions()).out)
        counts = Counter(job.state.value for job in self._view().jobs)
        master = (config.get("SlurmctldHost[0]") or config.get("ControlMachine") or "").split("(")[0] or None
        return ClusterInfo(
            name=config.get("ClusterName") or "slurm", scheduler="slurm",
            version=config.get("SLURM_VERSION"), master=master, hosts=len(hosts),
            cpus=sum(h.cpus or 0 for h in hosts), queues=len(queues), jobs=dict(counts))

    @hookimpl
    def health(self):
        start = time.monotonic()
        try:
            up, words = self._ping(min(self.timeout, 5.0))
        except GatewayError as exc:
            return Health(ok=False, latency_ms=None, detail=exc.msg)
        latency = (time.monotonic() - start) * 1000
        return Health(ok=up is True, latency_ms=round(latency, 1), detail=words)


# Commands that talk to slurmctld (and so wait out its MessageTimeout when it is down).
CONTROLLER_COMMANDS = frozenset({"squeue", "sbatch", "scontrol", "scancel", "sinfo", "sdiag", "sprio"})


def _given_back(records: list[Record]) -> list[tuple[str, str]]:
    """(task, admin comment without the owner's mark) for the marked ones of ``records``."""
    out = []
    for job, extra in records:
        if extra["admin_comment"].startswith(commands.USER_SUSPEND_MARK):
            out.append((job.job_id, parse.user_suspension(extra["admin_comment"], extra["suspend_time"])[1]))
    return out


def _read_only(argv: list[str]) -> bool:
    """A command that only reads from slurmctld (safe to abandon while it retries)."""
    prog = _program(argv)
    if prog in ("squeue", "sinfo", "sdiag", "sprio"):
        return True
    if prog == "scontrol":
        words = [a for a in argv[argv.index("scontrol") + 1:] if not a.startswith("-")]
        return bool(words) and words[0] in ("show", "ping", "version")
    return False


def _program(argv: list[str]) -> str:
    """The program an argv runs: ``squeue`` for ``env SLURM_TIME_FORMAT=%s squeue ...``."""
    if argv[0] != "env":
        return argv[0]
    rest = [a for a in argv[1:] if "=" not in a and not a.startswith("-")]
    return rest[0] if rest else "env"


def _aggregate(array_id: str, members: list[Record]) -> Job:
    """An array job as one Job: the state of its tasks taken together."""
    jobs = [job for job, _ in members]
    states = Counter(job.state for job in jobs)
    if states[JobState.RUNNING]:
        state = JobState.RUNNING
    elif states[JobState.SUSPENDED]:
        state = JobState.SUSPENDED
    elif states[JobState.PENDING]:
        state = JobState.PENDING
    elif states[JobState.HELD]:
        state = JobState.HELD
    elif states[JobState.UNKNOWN]:
        state = JobState.UNKNOWN
    elif states[JobState.FAILED]:
        state = JobState.FAILED
    elif states[JobState.CANCELLED]:
        state = JobState.CANCELLED
    else:
        state = JobState.COMPLETED
    first = min(jobs, key=lambda j: j.submit_time.timestamp() if j.submit_time else 0)
    codes = [j.exit_code for j in jobs if j.exit_code is not None]
    natives = Counter(j.native_state or "UNKNOWN" for j in jobs)
    hosts = sorted({h for j in jobs for h in j.hosts})
    starts = [j.start_time for j in jobs if j.start_time]
    ends = [j.end_time for j in jobs if j.end_time]
    return replace(
        first, job_id=array_id, state=state,
        native_state=",".join(f"{k}:{v}" for k, v in sorted(natives.items())),
        reason=f"job array with {len(jobs)} record(s)", exit_code=max(codes) if codes and state.is_final else None,
        start_time=min(starts) if starts else None, end_time=max(ends) if ends and state.is_final else None,
        hosts=hosts, stdout_path=None, stderr_path=None)


def _watch(ref, closed: threading.Event, max_age: float) -> None:
    """Keep the shared snapshot no older than ``max_age`` while the scheduler lives: wakes
    every max_age/2 and refreshes only if no read (of any process) did (the flock'd file)."""
    while not closed.wait(max_age / 2):
        sched = ref()
        if sched is None:
            return
        try:
            sched.snapshot.get(max_age=max_age)
        except Exception as exc:  # noqa: BLE001 - an outage: the next round tries again
            log.debug("background snapshot refresh: %s", exc)
        del sched
