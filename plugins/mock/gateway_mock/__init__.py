"""The ``mock`` scheduler plugin: a local executor that really runs jobs.

Jobs run as subprocesses of this host, in their own process groups, with their work dir,
environment and stdout/stderr files; they go PENDING -> RUNNING -> COMPLETED/FAILED with the
real exit code, queue when the configured slots are taken, and are killed, suspended
(SIGSTOP), resumed (SIGCONT), held, released, requeued and changed (name, queue, time limit)
for real. State lives in one SQLite file, so every gunicorn worker and a restarted gateway
see the same jobs, and a running job survives the worker that started it (each job has a
detached runner process).
"""
from __future__ import annotations

import json
import logging
import os
import pwd
import signal
import socket
import stat
import subprocess
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone

from marshmallow import Schema, ValidationError, fields, validate

from gateway import scriptfile
from gateway.errors import ConfigError, Conflict, Forbidden, GatewayError, InvalidInput, NotFound
from gateway.hookspecs import hookimpl
from gateway.models import (ClusterInfo, Health, Host, Job, JobOutput, JobState, Queue, User, UserInfo,
                            expand_home)

from . import db as jobdb
from .dispatch import FINAL, dependency_jobs, dispatch, reap_lost
from .runner import KILL_GRACE

log = logging.getLogger(__name__)

__version__ = "0.1.0"


class QueueOptions(Schema):
    name = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9_.-]{1,64}$"))
    priority = fields.Integer(load_default=30)
    default = fields.Boolean(load_default=False)
    time_limit_minutes = fields.Integer(load_default=None, allow_none=True)


def _default_state_dir() -> str:
    from gateway.config import default_work_dir
    return os.path.join(default_work_dir(), "mock")


class MockOptions(Schema):
    state_dir = fields.String(load_default=None, allow_none=True)
    slots = fields.Integer(load_default=4, validate=validate.Range(min=1, max=4096))
    host_name = fields.String(load_default=None, allow_none=True)
    cluster_name = fields.String(load_default="mock")
    run_as = fields.String(load_default="service", validate=validate.OneOf(["service", "sudo"]))
    queues = fields.List(fields.Nested(QueueOptions), load_default=lambda: [
        {"name": "normal", "priority": 30, "default": True, "time_limit_minutes": None},
        {"name": "short", "priority": 50, "default": False, "time_limit_minutes": 60},
        {"name": "vnc", "priority": 40, "default": False, "time_limit_minutes": None},
    ])
    users = fields.List(fields.String(), load_default=list)
    native_options = fields.List(fields.String(), load_default=list)
    # The most one GET /jobs/{id}/output returns (as slurm_ssm's max_output_bytes): the
    # answer is JSON text, where binary output grows up to 6x (\ufffd per byte).
    max_output_bytes = fields.Integer(load_default=1024 * 1024, validate=validate.Range(min=1))


def _ts(value):
    return datetime.fromtimestamp(value, tz=timezone.utc) if value else None


def _job_id(job_id: str) -> int:
    if not job_id.isdigit() or len(job_id) > 18:
        raise NotFound(f"no such job: {job_id}")
    return int(job_id)


class MockScheduler:
    # Answered from the local SQLite database: these keep the request's turn (gateway/turns.py).
    keeps_turn = frozenset({"get_job", "list_jobs"})
    def __init__(self, options: dict):
        try:
            opts = MockOptions().load(options)
        except ValidationError as exc:
            raise ConfigError(f"mock backend options: {exc.messages}") from exc
        if opts["run_as"] == "sudo" and os.geteuid() != 0:
            raise ConfigError("mock backend: run_as: sudo needs the gateway to run as root")
        defaults = [q for q in opts["queues"] if q["default"]]
        if len(defaults) != 1:
            raise ConfigError("mock backend: exactly one queue must have default: true")
        if opts["run_as"] == "service" and os.geteuid() == 0:
            log.warning("mock backend, run_as: service, and the gateway runs as ROOT: every user's jobs "
                        "run as root, so every account is root on this host (a job can rewrite /etc/passwd). "
                        "Run the gateway as an ordinary account, or use run_as: sudo (jobs as the users' "
                        "own Unix accounts, never root); give accounts here only to people who may be root")
        elif opts["run_as"] == "service":
            log.warning("mock backend, run_as: service: every user's jobs run as the gateway's own "
                        "account and can read its secret key and users file; give accounts only to "
                        "people you would make administrators (run_as: sudo keeps users apart)")
        self.opts = opts
        self.state_dir = os.path.abspath(opts["state_dir"] or _default_state_dir())
        self.jobs_dir = os.path.join(self.state_dir, "jobs")
        os.makedirs(self.jobs_dir, mode=0o700, exist_ok=True)
        os.chmod(self.jobs_dir, 0o700)      # 0711 before: jobs' scripts go to them as descriptors
        self.db_path = os.path.join(self.state_dir, "jobs.sqlite")
        jobdb.init(self.db_path)
        self.host = opts["host_name"] or socket.gethostname()
        self.queues = {q["name"]: q for q in opts["queues"]}
        self.default_queue = defaults[0]["name"]
        self._local = threading.local()
        db = self.db
        with jobdb.transaction(db):
            db.execute("INSERT OR REPLACE INTO settings VALUES ('slots', ?)", (str(opts["slots"]),))
            db.execute("INSERT OR REPLACE INTO settings VALUES ('run_as', ?)", (opts["run_as"],))
            db.execute("INSERT OR IGNORE INTO hosts(name) VALUES (?)", (self.host,))
            for name in self.queues:
                db.execute("INSERT OR IGNORE INTO queues(name) VALUES (?)", (name,))

    @property
    def db(self):
        # One connection per process (gunicorn forks after create_app in --preload setups).
        # ... and one per thread: gunicorn's gthread workers serve requests in threads, and a
        # sqlite3 connection holds one transaction at a time.
        local = self._local
        if getattr(local, "db", None) is None or local.pid != os.getpid():
            local.db, local.pid = jobdb.connect(self.db_path), os.getpid()
        return local.db

    # ---------------------------------------------------------------- helpers
    def _row(self, job_id: str):
        row = self.db.execute("SELECT * FROM jobs WHERE id=?", (_job_id(job_id),)).fetchone()
        if row is None:
            raise NotFound(f"no such job: {job_id}")
        return row

    def _check_dependency(self, dependency: str | None) -> None:
        """As Slurm ("Job dependency problem"): a dependency on a job the scheduler does not
        know is refused, not taken as satisfied (the job would start at once)."""
        if not dependency:
            return
        unknown = [jid for _, jid, number in dependency_jobs(dependency)
                   if not number.isdigit()
                   or self.db.execute("SELECT 1 FROM jobs WHERE id=?", (int(number),)).fetchone() is None]
        if unknown:
            raise InvalidInput(f"Job dependency problem: no such job {', '.join(unknown)}",
                               errors={"dependency": [f"no such job: {', '.join(unknown)}"]})

    def _closed(self, queue: str) -> bool:
        """Whether ``queue`` takes no new jobs (an administrator closed it)."""
        row = self.db.execute("SELECT open FROM queues WHERE name=?", (queue,)).fetchone()
        return row is not None and not row["open"]

    def _job(self, row) -> Job:
        return Job(
            job_id=str(row["id"]), name=row["name"], user_name=row["user"], queue=row["queue"],
            state=JobState("PENDING" if row["state"] == "STARTING" else row["state"]), native_state=row["native_state"], reason=row["reason"],
            exit_code=row["exit_code"], submit_time=_ts(row["submit_time"]), start_time=_ts(row["start_time"]),
            end_time=_ts(row["end_time"]), hosts=[self.host] if row["start_time"] else [],
            nodes=row["nodes"] or 1, cpus=row["cpus"], memory_mb=row["memory_mb"],
            time_limit_minutes=row["time_limit"], work_dir=row["work_dir"], stdout_path=row["stdout_path"],
            stderr_path=row["stderr_path"], command=row["command"])

    def _account(self, name: str, missing: type[GatewayError]):
        """run_as: sudo: ``name``'s passwd entry (``missing`` when it has none), never root's."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise missing(f"user {name} has no Unix account on {self.host}") from None
        if entry.pw_uid == 0:
            raise Forbidden(f"{name} is root: the mock backend runs no job or command as root")
        return entry

    def _as_user(self, user) -> dict:
        """Popen arguments that run a helper as the job's user (run_as: sudo)."""
        if self.opts["run_as"] != "sudo":
            return {}
        entry = self._account(user.name, Conflict)
        return {"user": entry.pw_uid, "group": entry.pw_gid,
                "extra_groups": os.getgrouplist(entry.pw_name, entry.pw_gid)}

    def _user_entry(self, user):
        if self.opts["run_as"] == "sudo":
            return self._account(user.name, InvalidInput)
        try:
            return pwd.getpwnam(user.name)
        except KeyError:
            return None

    def _read_script(self, user, path: str) -> bytes:
        """A scriptLocation, read as the account jobs run as, once gateway.scriptfile found a
        regular file small enough (a device or a FIFO would fill or hold the worker)."""
        if not os.path.isabs(path):
            raise InvalidInput("scriptLocation must be an absolute path", errors={"scriptLocation": ["not absolute"]})
        as_user = self._as_user(user)
        try:
            st = subprocess.run(scriptfile.stat_argv(path), capture_output=True, timeout=10, **as_user)
            scriptfile.check(path, st.returncode, st.stdout.decode(errors="replace"), st.stderr.decode(errors="replace"))
            proc = subprocess.run(scriptfile.head_argv(path), capture_output=True, timeout=10, **as_user)
        except subprocess.TimeoutExpired:
            raise InvalidInput(f"{path} could not be read within 10 s", errors={"scriptLocation": ["too slow"]}) from None
        return scriptfile.content(path, proc.returncode, proc.stdout, proc.stderr.decode(errors="replace"))

    # ---------------------------------------------------------------- jobs
    @hookimpl
    def submit_job(self, user, spec):
        entry = self._user_entry(user)
        queue = spec.queue or self.default_queue
        if queue not in self.queues:
            raise InvalidInput(f"{queue}: No such queue. Job not submitted.", errors={"queue": ["no such queue"]})
        if self._closed(queue):
            raise Conflict(f"queue {queue} is closed: it accepts no new jobs")
        if spec.array:
            raise InvalidInput("job arrays are not supported by the mock backend", errors={"array": ["not supported"]})
        bad = [o for o in spec.native_options if o.split("=", 1)[0] not in self.opts["native_options"]]
        if bad:
            raise InvalidInput(f"native option(s) not allowed by the mock backend: {', '.join(bad)}",
                               errors={"nativeOptions": [f"not allowed: {o}" for o in bad]})
        most = self.queues[queue]["time_limit_minutes"]
        if most and spec.time_limit_minutes and spec.time_limit_minutes > most and not user.is_admin:
            # As a Slurm partition's MaxTime and an LSF queue's RUNLIMIT (and as PATCH here).
            raise InvalidInput(f"queue {queue} allows at most {most} minutes",
                               errors={"timeLimitMinutes": [f"more than queue {queue} allows ({most})"]})
        if (spec.nodes or 1) > 1:            # as Slurm: "Requested node configuration is not available"
            raise InvalidInput(f"{spec.nodes} nodes requested but the mock cluster has one host ({self.host})",
                               errors={"nodes": ["more than the cluster has"]})
        # As slurm_ssm: cpus is the job's total (ntasks x cpusPerTask, so a multiple of it);
        # cpusPerTask alone is one task of that many.
        if spec.cpus and spec.cpus_per_task and spec.cpus % spec.cpus_per_task:
            raise InvalidInput("invalid job: cpus: must be a multiple of cpusPerTask",
                               errors={"cpus": ["must be a multiple of cpusPerTask"]})
        cpus = spec.cpus or spec.cpus_per_task or 1
        if cpus > self.opts["slots"]:
            raise InvalidInput(f"{cpus} CPUs requested but the host has {self.opts['slots']} slots",
                               errors={"cpus" if spec.cpus else "cpusPerTask": ["more than the cluster has"]})
        self._check_dependency(spec.dependency)
        if self.opts["run_as"] == "sudo":
            home = entry.pw_dir
        else:
            # Jobs run as the service account: their default place is the service's, not the
            # user's home (files the user could not remove would pile up there).
            home = os.path.join(self.state_dir, "home", user.name)
            os.makedirs(home, mode=0o755, exist_ok=True)
        spec = expand_home(spec, home)             # "~" as in the files API
        if spec.script is not None:
            script, command = spec.script.encode(), None
        elif spec.command is not None:
            script, command = f"#!/bin/sh\n{spec.command}\n".encode(), spec.command
        else:
            if spec.script_location.startswith("s3://"):
                raise InvalidInput("s3:// script locations are not supported by the mock backend")
            script, command = self._read_script(user, spec.script_location), spec.script_location
        work_dir = spec.work_dir or home
        if not os.path.isabs(work_dir):
            raise InvalidInput("workDir must be an absolute path", errors={"workDir": ["not absolute"]})
        now = time.time()
        db = self.db
        with jobdb.transaction(db):
            cur = db.execute(
                "INSERT INTO jobs(name, user, queue, state, native_state, reason, submit_time, cpus, nodes, "
                "memory_mb, time_limit, work_dir, command, script_path, environment, dependency) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (spec.name or (os.path.basename(spec.script_location) if spec.script_location else "job"),
                 user.name, queue, "HELD" if spec.hold else "PENDING", "PSUSP" if spec.hold else "PEND",
                 "Held by the user" if spec.hold else None, now, cpus, spec.nodes or 1,
                 spec.memory_mb, spec.time_limit_minutes or self.queues[queue]["time_limit_minutes"],
                 work_dir, command, "", json.dumps(spec.environment), spec.dependency))
            job_id = cur.lastrowid
            job_dir = os.path.join(self.jobs_dir, str(job_id))
            os.makedirs(job_dir, mode=0o700, exist_ok=True)
            script_path = os.path.join(job_dir, "script")
            with open(script_path, "wb") as fh:
                fh.write(script)
            # The gateway's own file in its own 0700 directory: the runner hands it to the job
            # as an open descriptor, so the user needs to read and run it (0755) but never gets a
            # path to it (a user-owned one could be swapped for a link to any file root reads).
            os.chmod(script_path, 0o755 if self.opts["run_as"] == "sudo" else 0o700)
            out = self._output_path(spec.stdout, work_dir, job_id, "out")
            err = self._output_path(spec.stderr, work_dir, job_id, "err") if spec.stderr or not spec.stdout else out
            db.execute("UPDATE jobs SET script_path=?, stdout_path=?, stderr_path=? WHERE id=?",
                       (script_path, out, err, job_id))
        dispatch(db, self.db_path)
        return str(job_id)

    @staticmethod
    def _output_path(given, work_dir, job_id, suffix) -> str:
        path = (given or f"mock-%j.{suffix}").replace("%j", str(job_id)).replace("%J", str(job_id))
        return path if os.path.isabs(path) else os.path.join(work_dir, path)

    def _refresh(self):
        """Catch up on anything that changed without a gateway call: lost runners, free slots."""
        with jobdb.transaction(self.db):
            reap_lost(self.db)
        dispatch(self.db, self.db_path)

    @hookimpl
    def list_jobs(self, user, query):
        sql, args = "SELECT * FROM jobs WHERE 1=1", []
        if query.user:
            sql += " AND user=?"
            args.append(query.user)
        if query.states:
            sql += f" AND state IN ({','.join('?' * len(query.states))})"
            args += [s.value for s in query.states]
            if "PENDING" in args:
                sql = sql.replace("state IN (", "state IN ('STARTING',", 1)
        if query.queue:
            sql += " AND queue=?"
            args.append(query.queue)
        if query.name:
            sql += " AND name=?"
            args.append(query.name)
        return [self._job(r) for r in self.db.execute(sql, args).fetchall()]

    @hookimpl
    def get_job(self, user, job_id):
        row = self._row(job_id)
        if row["state"] in ("RUNNING", "SUSPENDED") and row["runner_pid"] is not None:
            from .dispatch import process_start_time
            if process_start_time(row["runner_pid"]) != row["runner_start"]:
                self._refresh()
                row = self._row(job_id)
        return self._job(row)

    @hookimpl
    def control_job(self, user, job_id, action):
        db = self.db
        jid = _job_id(job_id)
        with jobdb.transaction(db):
            row = self._row(job_id)
            state = row["state"]

            def refuse(why):
                raise Conflict(f"cannot {action} job {job_id}: {why}")

            if row["cancel_at"] and state not in FINAL:
                # Killed, and ending (SIGTERM sent, SIGKILL after the grace): nothing else now.
                refuse("it is being killed")
            if action == "kill":
                if state in FINAL:
                    refuse(f"it has already finished ({state})")
                if state in ("PENDING", "HELD", "STARTING"):
                    db.execute("UPDATE jobs SET state='CANCELLED', native_state='EXIT', reason='Killed by request', "
                               "end_time=? WHERE id=?", (time.time(), jid))
                else:
                    db.execute("UPDATE jobs SET cancel_at=?, reason=? WHERE id=?",
                               (time.time(), f"Being killed by request (SIGTERM; SIGKILL after {KILL_GRACE:g} s)", jid))
                    self._signal(row, signal.SIGTERM, cont=True)
            elif action == "suspend":
                if state == "STARTING":
                    refuse("it is still starting: try again in a moment")
                if state != "RUNNING":
                    refuse(f"it is {state}, not RUNNING")
                self._signal(row, signal.SIGSTOP)
                # As LSF: an administrator's suspension (SSUSP here) is theirs to resume.
                native, why = (("SSUSP", "Suspended by an administrator") if user.is_admin
                               else ("USUSP", "Suspended by request"))
                db.execute("UPDATE jobs SET state='SUSPENDED', native_state=?, reason=? WHERE id=?",
                           (native, why, jid))
            elif action == "resume":
                if state != "SUSPENDED":
                    refuse(f"it is {state}, not SUSPENDED")
                if row["native_state"] == "SSUSP" and not user.is_admin:
                    raise Forbidden(f"job {job_id} was suspended by an administrator: only an "
                                    "administrator may resume it")
                self._signal(row, signal.SIGCONT)
                db.execute("UPDATE jobs SET state='RUNNING', native_state='RUN', reason=NULL WHERE id=?", (jid,))
            elif action == "hold":
                if state == "STARTING":
                    refuse("it is starting")
                if state != "PENDING":
                    refuse(f"it is {state}; only a PENDING job can be held")
                db.execute("UPDATE jobs SET state='HELD', native_state='PSUSP', reason='Held by request' "
                           "WHERE id=?", (jid,))
            elif action == "release":
                if state != "HELD":
                    refuse(f"it is {state}, not HELD")
                db.execute("UPDATE jobs SET state='PENDING', native_state='PEND', reason=NULL WHERE id=?", (jid,))
            elif action == "requeue":
                if state in ("PENDING", "HELD", "STARTING"):
                    refuse("it has not started")
                if state in FINAL:
                    db.execute("UPDATE jobs SET state='PENDING', native_state='PEND', reason='Requeued', "
                               "exit_code=NULL, start_time=NULL, end_time=NULL, cancel_at=NULL, "
                               "restarts=restarts+1 WHERE id=?", (jid,))
                else:
                    db.execute("UPDATE jobs SET requeue=1 WHERE id=?", (jid,))
                    self._signal(row, signal.SIGKILL, cont=True)
            else:  # the core only passes known actions
                refuse("unknown action")
        dispatch(db, self.db_path)

    @hookimpl
    def modify_job(self, user, job_id, change):
        db = self.db
        jid = _job_id(job_id)
        with jobdb.transaction(db):
            row = self._row(job_id)
            if row["cancel_at"] and row["state"] not in FINAL:
                raise Conflict(f"cannot change job {job_id}: it is being killed")
            if change.queue is not None and change.queue not in self.queues:
                raise InvalidInput(f"{change.queue}: No such queue", errors={"queue": ["no such queue"]})
            job = self._job(row)
            if row["state"] == "STARTING":       # shown as PENDING, but it has left the queue
                job = replace(job, state=JobState.RUNNING)
            queue = change.queue or row["queue"]
            change = change.checked(job, is_admin=user.is_admin,
                                    queue_limit=self.queues.get(queue, {}).get("time_limit_minutes"))
            sets, args = [], []
            if change.queue is not None:
                if self._closed(change.queue):
                    raise Conflict(f"cannot change job {job_id}: queue {change.queue} is closed: "
                                   "it accepts no new jobs")
                sets.append("queue=?")
                args.append(change.queue)
            if change.name is not None:
                sets.append("name=?")
                args.append(change.name)
            if change.time_limit_minutes is not None:
                # The job's runner reads its limit again every tick: a running job keeps to it.
                sets.append("time_limit=?")
                args.append(change.time_limit_minutes)
            if sets:
                db.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id=?", (*args, jid))
        dispatch(db, self.db_path)               # a job moved to an active queue may start

    def _signal(self, row, sig, cont=False):
        if row["pid"] is None:
            raise Conflict(f"job {row['id']} is still starting: try again in a moment")
        try:
            if cont:
                os.killpg(row["pid"], signal.SIGCONT)
            os.killpg(row["pid"], sig)
        except ProcessLookupError:
            pass

    @hookimpl
    def job_output(self, user, job_id, stream, offset, limit):
        cap = self.opts["max_output_bytes"]
        limit = cap if limit is None else min(int(limit), cap)
        row = self._row(job_id)
        path = row["stdout_path"] if stream == "stdout" else row["stderr_path"]
        if self.opts["run_as"] == "sudo":
            # As the job's owner (an admin reading it may have no account, or other rights).
            return self._read_slice_as(User(name=row["user"]), path, offset, limit)
        try:
            # Non-blocking: a FIFO given as the job's stdout must not hold the worker.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return JobOutput(b"", offset, 0, path)
        except OSError as exc:
            raise Conflict(f"cannot read {path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise Conflict(f"{path} is not a regular file")
            fh.seek(offset)
            data = fh.read(limit)
        return JobOutput(data, offset, st.st_size, path)

    def _read_slice_as(self, user, path, offset, limit):
        """Read as the job's user, so Unix permissions decide (coreutils, no shell)."""
        as_user = self._as_user(user)
        size = subprocess.run(["stat", "-L", "-c", "%s", "--", path], capture_output=True, timeout=30, **as_user)
        if size.returncode != 0:
            if b"No such file" in size.stderr:
                return JobOutput(b"", offset, 0, path)
            raise Conflict(f"cannot read {path}: {size.stderr.decode(errors='replace').strip()[-300:]}")
        if offset >= int(size.stdout):
            return JobOutput(b"", offset, int(size.stdout), path)
        data = subprocess.run(["dd", f"if={path}", "iflag=skip_bytes,count_bytes", f"skip={offset}",
                               f"count={limit}", "status=none"], capture_output=True, timeout=30, **as_user)
        if data.returncode != 0:
            raise Conflict(f"cannot read {path}: {data.stderr.decode(errors='replace').strip()[-300:]}")
        return JobOutput(data.stdout, offset, int(size.stdout), path)

    @hookimpl
    def read_user_file(self, user, path, limit):
        """A small file (e.g. a vis session file) read as the account the user's jobs run as."""
        if self.opts["run_as"] == "sudo":
            home = self._user_entry(user).pw_dir
        else:
            home = pwd.getpwuid(os.getuid()).pw_dir
        if path.startswith("~/"):
            path = os.path.join(home, path[2:])
        if not os.path.isabs(path):
            raise InvalidInput(f"not an absolute path: {path}")
        if self.opts["run_as"] == "sudo":
            out = self._read_slice_as(user, path, 0, limit)
            return out.data if out.size else None
        try:
            with open(path, "rb") as fh:
                return fh.read(limit)
        except FileNotFoundError:
            return None

    # ---------------------------------------------------------------- cluster
    def _counts(self, column=None):
        sql = "SELECT {col} AS k, state, COUNT(*) AS n, SUM(cpus) AS c FROM jobs WHERE state NOT IN " \
              "('COMPLETED','FAILED','CANCELLED') GROUP BY {col}, state"
        rows = self.db.execute(sql.format(col=column or "'all'")).fetchall()
        out: dict = {}
        for r in rows:
            d = out.setdefault(r["k"], {"njobs": 0, "pending": 0, "running": 0, "suspended": 0, "slots": 0})
            d["njobs"] += r["n"]
            key = {"PENDING": "pending", "HELD": "pending", "STARTING": "pending", "RUNNING": "running", "SUSPENDED": "suspended"}[r["state"]]
            d[key] += r["n"]
            if r["state"] in ("RUNNING", "SUSPENDED"):
                d["slots"] += r["c"] or 0
        return out

    @hookimpl
    def list_hosts(self):
        self._refresh()
        closed = self.db.execute("SELECT closed FROM hosts WHERE name=?", (self.host,)).fetchone()["closed"]
        c = self._counts().get("all", {})
        return [Host(name=self.host, state="closed" if closed else "ok",
                     native_state="closed_Adm" if closed else "ok", cpus=os.cpu_count(),
                     max_slots=self.opts["slots"], njobs=c.get("running", 0) + c.get("suspended", 0),
                     running=c.get("running", 0), suspended=c.get("suspended", 0),
                     memory_mb=(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // (1024 * 1024))]

    @hookimpl
    def control_host(self, user, host, action):
        if host != self.host:
            raise NotFound(f"no such host: {host}")
        with jobdb.transaction(self.db):
            self.db.execute("UPDATE hosts SET closed=? WHERE name=?", (1 if action == "close" else 0, host))
        dispatch(self.db, self.db_path)

    @hookimpl
    def list_queues(self):
        counts = self._counts("queue")
        rows = {r["name"]: r for r in self.db.execute("SELECT * FROM queues").fetchall()}
        out = []
        for name, q in self.queues.items():
            r, c = rows.get(name), counts.get(name, {})
            is_open, active = bool(r["open"]) if r else True, bool(r["active"]) if r else True
            out.append(Queue(name=name, open=is_open, active=active,
                             native_state=f"{'Open' if is_open else 'Closed'}:{'Active' if active else 'Inact'}",
                             priority=q["priority"], is_default=q["default"], max_slots=self.opts["slots"],
                             time_limit_minutes=q["time_limit_minutes"], hosts=[self.host],
                             njobs=c.get("njobs", 0), pending=c.get("pending", 0), running=c.get("running", 0),
                             suspended=c.get("suspended", 0)))
        return out

    @hookimpl
    def control_queue(self, user, queue, action):
        if queue not in self.queues:
            raise NotFound(f"no such queue: {queue}")
        column, value = {"open": ("open", 1), "close": ("open", 0),
                         "activate": ("active", 1), "inactivate": ("active", 0)}[action]
        with jobdb.transaction(self.db):
            self.db.execute(f"UPDATE queues SET {column}=? WHERE name=?", (value, queue))
        dispatch(self.db, self.db_path)

    @hookimpl
    def list_users(self):
        counts = self._counts("user")
        names = set(self.opts["users"]) | set(counts) | {
            r[0] for r in self.db.execute("SELECT DISTINCT user FROM jobs").fetchall()}
        return [UserInfo(name=n, njobs=counts.get(n, {}).get("njobs", 0), pending=counts.get(n, {}).get("pending", 0),
                         running=counts.get(n, {}).get("running", 0),
                         suspended=counts.get(n, {}).get("suspended", 0)) for n in sorted(names)]

    @hookimpl
    def cluster_info(self):
        by_state = {r[0]: r[1] for r in self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")}
        return ClusterInfo(name=self.opts["cluster_name"], scheduler="mock", version=__version__, master=self.host,
                           hosts=1, cpus=self.opts["slots"], queues=len(self.queues), jobs=by_state)

    @hookimpl
    def health(self):
        t0 = time.perf_counter()
        self.db.execute("SELECT COUNT(*) FROM jobs WHERE state='RUNNING'").fetchone()
        return Health(ok=True, latency_ms=(time.perf_counter() - t0) * 1000, detail=f"mock executor on {self.host}")

    @hookimpl
    def file_transport(self, user):
        """File operations on this host: as the user (run_as: sudo), else as the service
        account in the user's mock home (where its jobs run by default)."""
        from gateway.transports.local import LocalTransport
        if self.opts["run_as"] == "sudo":
            self._user_entry(user)
            return LocalTransport(), user.name
        if not user.name or "/" in user.name or user.name.startswith("."):
            return None
        home = os.path.join(self.state_dir, "home", user.name)
        os.makedirs(home, mode=0o755, exist_ok=True)
        return LocalTransport(), None, home

    def close(self):
        if getattr(self._local, "db", None) is not None:
            self._local.db.close()
            self._local.db = None


def make_scheduler(options: dict) -> MockScheduler:
    return MockScheduler(options)
