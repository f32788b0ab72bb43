"""Start pending jobs while slots are free: called after every submit, release, job end."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time

from . import db as jobdb

FINAL = ("COMPLETED", "FAILED", "CANCELLED")


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of a process: tells a live runner from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def dependency_jobs(dependency: str):
    """(kind, job id as written, its job number) for each job a dependency names
    (``afterok:12:13_2?afterany:14+1``; singleton names none)."""
    for clause in dependency.replace("?", ",").split(","):
        kind, *ids = clause.split(":")
        if kind == "singleton":
            continue
        for jid in ids:
            yield kind, jid, jid.split("_")[0].split("+")[0]


def _dependency_ready(db, dependency: str | None) -> bool | None:
    """True when satisfied, False while waiting, None when it can never be satisfied."""
    if not dependency:
        return True
    for kind, _, number in dependency_jobs(dependency):
        row = db.execute("SELECT state FROM jobs WHERE id=?", (int(number),)).fetchone()
        state = row["state"] if row else "COMPLETED"     # unknown (purged) jobs count as done
        if kind == "after" and state in ("PENDING", "HELD"):
            return False
        if kind == "afterany" and state not in FINAL:
            return False
        if kind == "afterok":
            if state in ("FAILED", "CANCELLED"):
                return None
            if state != "COMPLETED":
                return False
        if kind == "afternotok":
            if state == "COMPLETED":
                return None
            if state not in FINAL:
                return False
    return True


def reap_lost(db) -> None:
    """A RUNNING job whose runner is gone (host reboot, kill -9) ends as FAILED, not RUNNING forever."""
    rows = db.execute("SELECT id, runner_pid, runner_start, start_time FROM jobs "
                      "WHERE state IN ('STARTING','RUNNING','SUSPENDED')").fetchall()
    for row in rows:
        if row["runner_pid"] is None:
            if row["start_time"] and time.time() - row["start_time"] > 30:
                lost = True
            else:
                continue
        else:
            lost = process_start_time(row["runner_pid"]) != row["runner_start"]
        if lost:
            db.execute("UPDATE jobs SET state='FAILED', native_state='EXIT', reason='Lost: its runner ended "
                       "unexpectedly', end_time=? WHERE id=? AND state IN ('STARTING','RUNNING','SUSPENDED')",
                       (time.time(), row["id"]))


def dispatch(db, db_path: str, slots: int | None = None) -> list[int]:
    if slots is None:
        slots = int(jobdb.setting(db, "slots", "4"))
    started = []
    with jobdb.transaction(db):
        if db.execute("SELECT 1 FROM hosts WHERE closed=1").fetchone():
            # Why they wait (LSF: "Closed by LSF administrator"), rather than no reason at all.
            db.execute("UPDATE jobs SET reason='HostClosed' WHERE state='PENDING'")
            return []
        # Reasons of the last pass that no longer hold (the host reopened, a queue activated),
        # also when no slot is free below.
        db.execute("UPDATE jobs SET reason=NULL WHERE state='PENDING' AND reason IN ('HostClosed','QueueInactive')")
        db.execute("UPDATE jobs SET reason='QueueInactive' WHERE state='PENDING' AND queue IN "
                   "(SELECT name FROM queues WHERE active=0)")
        used = db.execute("SELECT COALESCE(SUM(cpus),0) FROM jobs "
                          "WHERE state IN ('STARTING','RUNNING','SUSPENDED')").fetchone()[0]
        free = slots - used
        if free <= 0:
            return []
        pending = db.execute(
            "SELECT j.id, j.cpus, j.dependency FROM jobs j LEFT JOIN queues q ON q.name=j.queue "
            "WHERE j.state='PENDING' AND COALESCE(q.active,1)=1 ORDER BY j.id").fetchall()
        now = time.time()
        for row in pending:
            ready = _dependency_ready(db, row["dependency"])
            if ready is None:
                db.execute("UPDATE jobs SET reason='DependencyNeverSatisfied' WHERE id=?", (row["id"],))
                continue
            if not ready:
                db.execute("UPDATE jobs SET reason='Dependency' WHERE id=?", (row["id"],))
                continue
            cpus = row["cpus"] or 1
            if cpus > free:
                db.execute("UPDATE jobs SET reason='Resources' WHERE id=?", (row["id"],))
                continue
            free -= cpus
            # STARTING (shown as PENDING) until the runner has the job's pid: only then can
            # it be signalled, so only then is it RUNNING.
            db.execute("UPDATE jobs SET state='STARTING', reason='Starting', start_time=?, "
                       "runner_pid=NULL, runner_start=NULL WHERE id=?", (now, row["id"]))
            started.append(row["id"])
    for job_id in started:
        spawn_runner(db_path, job_id)
    return started


SETSID = shutil.which("setsid")


def spawn_runner(db_path: str, job_id: int) -> None:
    runner = [sys.executable, "-m", "gateway_mock.runner"]
    # util-linux's `setsid --fork` forks and exits at once: the wait below takes a millisecond,
    # not the runner's interpreter start-up, and the runner is reparented (no zombie).
    argv = [SETSID, "--fork", *runner] if SETSID else [*runner, "--detach"]
    proc = subprocess.Popen([*argv, db_path, str(job_id)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            close_fds=True, start_new_session=True)
    proc.wait()
