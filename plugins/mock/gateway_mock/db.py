"""The mock scheduler's state: one SQLite file shared by every gateway worker and runner."""
from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT, user TEXT NOT NULL, queue TEXT NOT NULL,
    state TEXT NOT NULL, native_state TEXT NOT NULL, reason TEXT,
    exit_code INTEGER, submit_time REAL NOT NULL, start_time REAL, end_time REAL,
    cpus INTEGER, nodes INTEGER, memory_mb INTEGER, time_limit INTEGER,
    work_dir TEXT, stdout_path TEXT, stderr_path TEXT, command TEXT,
    script_path TEXT NOT NULL, environment TEXT NOT NULL DEFAULT '{}', dependency TEXT,
    pid INTEGER, runner_pid INTEGER, runner_start TEXT,
    cancel_at REAL, requeue INTEGER NOT NULL DEFAULT 0, restarts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_user ON jobs(user);
CREATE TABLE IF NOT EXISTS hosts(name TEXT PRIMARY KEY, closed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS settings(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queues(name TEXT PRIMARY KEY, open INTEGER NOT NULL DEFAULT 1,
                                  active INTEGER NOT NULL DEFAULT 1);
"""


def connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA busy_timeout=30000")
    # Turning a new database to WAL needs it to itself, and SQLite answers "locked" at once
    # instead of waiting: gunicorn workers starting together on a fresh state_dir failed to
    # boot. Retry within the busy timeout (once in WAL, the pragma changes nothing).
    deadline = time.monotonic() + 30
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                db.close()
                raise
            time.sleep(0.05)
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def init(path: str) -> None:
    """Create the schema; processes starting together take turns (an flock beside the file)."""
    import fcntl
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".init-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        db = connect(path)
        try:
            db.executescript(SCHEMA)
        finally:
            db.close()


@contextmanager
def transaction(db: sqlite3.Connection):
    """An exclusive write transaction (BEGIN IMMEDIATE): one dispatcher at a time."""
    for attempt in range(50):
        try:
            db.execute("BEGIN IMMEDIATE")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 49:
                raise
            time.sleep(0.05)
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def setting(db: sqlite3.Connection, key: str, default: str | None = None) -> str | None:
    row = db.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
    return row[0] if row else default
