"""One detached process per running job: starts the job, waits for it, records how it ended.

Started as ``setsid --fork python -m gateway_mock.runner DB JOB_ID`` (or with ``--detach``, where
it double-forks itself), so that it outlives the gateway worker that dispatched the job, is
never left a zombie, and the dispatcher does not wait for Python to start. The job itself runs in
its own process group (kill = signal the group; suspend/resume = SIGSTOP/SIGCONT), as the job's
user when the gateway runs as root with ``run_as: sudo`` (never as root instead), with its work
dir entered and stdout/stderr opened *as that user* so a job cannot write, or learn, what its
user could not.
"""
from __future__ import annotations

import errno
import json
import os
import pwd
import signal
import stat
import subprocess
import sys
import time

from . import db as jobdb
from .dispatch import dispatch, process_start_time

KILL_GRACE = 5.0
TICK = 0.25


def _prepare(work_dir: str | None, stdout_path: str, stderr_path: str, append: bool, report_fd: int):
    def preexec():
        # Runs in the child after setuid (Popen user=...), before exec: the work dir is
        # entered and the output files opened with the job user's rights (a chdir done by
        # Popen's cwd= would be root's, and tell the user what lies in directories they cannot
        # open). Outputs are truncated on the first run (like sbatch), appended after a
        # requeue. What failed goes to report_fd: Popen itself only says "preexec_fn".
        step = f"enter its work dir {work_dir}"
        try:
            if work_dir:
                os.chdir(work_dir)
            step = f"write its output files {stdout_path} / {stderr_path}"
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
            out = os.open(stdout_path, flags, 0o644)
            err = out if stderr_path == stdout_path else os.open(stderr_path, flags, 0o644)
        except OSError as exc:
            os.write(report_fd, f"{step}: {exc.strerror}".encode()[:400])
            raise
        os.dup2(out, 1)
        os.dup2(err, 2)
    return preexec


def _fail(db, db_path: str, job_id: int, reason: str) -> None:
    """The job cannot start: FAILED with 127, as a shell says of a command it cannot run."""
    with jobdb.transaction(db):
        db.execute("UPDATE jobs SET state='FAILED', native_state='EXIT', exit_code=127, end_time=?, "
                   "reason=? WHERE id=? AND state='STARTING'", (time.time(), reason, job_id))
    dispatch(db, db_path)


def _job_env(job, user_entry) -> dict:
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "LANG": "C.UTF-8"}
    if user_entry is not None:
        env.update(HOME=user_entry.pw_dir, USER=user_entry.pw_name, LOGNAME=user_entry.pw_name,
                   SHELL=user_entry.pw_shell or "/bin/sh")
    else:
        for key in ("HOME", "USER", "LOGNAME", "SHELL"):
            if key in os.environ:
                env[key] = os.environ[key]
    env.update(json.loads(job["environment"] or "{}"))
    env.update(GATEWAY_JOB_ID=str(job["id"]), GATEWAY_JOB_NAME=job["name"] or "",
               GATEWAY_QUEUE=job["queue"], GATEWAY_SUBMIT_DIR=job["work_dir"] or "")
    return env


def run(db_path: str, job_id: int) -> None:
    db = jobdb.connect(db_path)
    job = db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
    if job is None or job["state"] != "STARTING":
        return
    as_root = os.geteuid() == 0
    user_entry = None
    try:
        user_entry = pwd.getpwnam(job["user"])
    except KeyError:
        pass
    run_as_user = as_root and jobdb.setting(db, "run_as", "service") == "sudo"
    if run_as_user and (user_entry is None or user_entry.pw_uid == 0):
        # Checked at submission too, but the account may be gone since (userdel, a directory
        # outage): never fall back to running the job as root.
        _fail(db, db_path, job_id, f"cannot start the job: user {job['user']} has no Unix account "
                                   "on this host (jobs never run as root)")
        return
    # The script is handed over as an open descriptor (like fexecve): the job's user needs no
    # path into the gateway's private state directory. It must be the file the gateway wrote
    # (no link, owned by this process's user), not one put in its place.
    try:
        script_fd = os.open(job["script_path"], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        st = os.fstat(script_fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            os.close(script_fd)
            raise OSError(errno.EPERM, "it is not the file the gateway wrote")
    except OSError as exc:
        _fail(db, db_path, job_id, f"cannot start the job: its script {job['script_path']}: {exc.strerror}")
        return
    head = os.pread(script_fd, 2, 0)
    script = f"/dev/fd/{script_fd}"
    argv = [script] if head == b"#!" else ["/bin/sh", script]
    me = f"{os.getpid()}"
    report_r, report_w = os.pipe()
    try:
        proc = subprocess.Popen(
            argv, env=_job_env(job, user_entry),
            stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True, pass_fds=(script_fd,),
            user=user_entry.pw_uid if run_as_user else None,
            group=user_entry.pw_gid if run_as_user else None,
            extra_groups=os.getgrouplist(user_entry.pw_name, user_entry.pw_gid) if run_as_user else None,
            preexec_fn=_prepare(job["work_dir"] or None, job["stdout_path"], job["stderr_path"],
                                job["restarts"] > 0, report_w))
    except (OSError, subprocess.SubprocessError) as exc:
        os.close(report_w)
        why = os.read(report_r, 500).decode("utf-8", "replace")
        os.close(report_r)
        _fail(db, db_path, job_id, f"cannot start the job: {why or exc}")
        return
    os.close(report_w)
    os.close(report_r)
    with jobdb.transaction(db):
        still = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()["state"]
        if still == "STARTING":
            db.execute("UPDATE jobs SET state='RUNNING', native_state='RUN', reason=NULL, pid=?, runner_pid=?, "
                       "runner_start=? WHERE id=?", (proc.pid, int(me), process_start_time(int(me)), job_id))
    if still != "STARTING":          # killed while it was starting: it never runs
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        dispatch(db, db_path)
        return
    limit = job["time_limit"]
    deadline = job["start_time"] + limit * 60 if limit else None
    timed_out = False
    killed_hard = False
    while True:
        try:
            rc = proc.wait(timeout=TICK)
            break
        except subprocess.TimeoutExpired:
            pass
        row = db.execute("SELECT cancel_at, requeue, time_limit FROM jobs WHERE id=?", (job_id,)).fetchone()
        now = time.time()
        if not timed_out and row["time_limit"] != limit:     # changed (PATCH) while it runs
            limit = row["time_limit"]
            deadline = job["start_time"] + limit * 60 if limit else None
        if deadline and now > deadline and not timed_out:
            timed_out = True
            _signal_group(proc.pid, signal.SIGCONT)
            _signal_group(proc.pid, signal.SIGTERM)
            deadline = now + KILL_GRACE
        elif timed_out and now > deadline and not killed_hard:
            killed_hard = True
            _signal_group(proc.pid, signal.SIGKILL)
        if row["cancel_at"] and now > row["cancel_at"] + KILL_GRACE and not killed_hard:
            killed_hard = True
            _signal_group(proc.pid, signal.SIGKILL)
    # Whatever the job left in its group goes with it.
    _signal_group(proc.pid, signal.SIGKILL)
    exit_code = rc if rc >= 0 else 128 - rc
    now = time.time()
    with jobdb.transaction(db):
        row = db.execute("SELECT cancel_at, requeue FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row["requeue"] and not row["cancel_at"]:     # a kill after a requeue wins
            db.execute("UPDATE jobs SET state='PENDING', native_state='PEND', reason='Requeued', pid=NULL, "
                       "runner_pid=NULL, start_time=NULL, requeue=0, cancel_at=NULL, restarts=restarts+1 "
                       "WHERE id=?", (job_id,))
        else:
            if row["cancel_at"]:
                state, native, reason = "CANCELLED", "EXIT", "Killed by request"
            elif timed_out:
                state, native, reason = "FAILED", "EXIT", "TimeLimit"
            elif exit_code == 0:
                state, native, reason = "COMPLETED", "DONE", None
            else:
                state, native, reason = "FAILED", "EXIT", "NonZeroExitCode"
            db.execute("UPDATE jobs SET state=?, native_state=?, reason=?, exit_code=?, end_time=?, pid=NULL "
                       "WHERE id=?", (state, native, reason, exit_code, now, job_id))
    dispatch(db, db_path)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main() -> None:
    args = sys.argv[1:]
    detach = args[:1] == ["--detach"]
    if detach:
        args = args[1:]
        # Detach: the first child exits at once (its parent reaps it), the grandchild runs.
        if os.fork() > 0:
            os._exit(0)
        os.setsid()      # its own session: signals to the job's group never reach the runner
    db_path, job_id = args[0], int(args[1])
    try:
        run(db_path, job_id)
    finally:
        os._exit(0)


if __name__ == "__main__":
    main()
