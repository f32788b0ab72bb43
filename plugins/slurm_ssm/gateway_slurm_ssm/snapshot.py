"""One shared view of the queue, so polling clients never reach slurmctld directly.

Every listing, job detail and long poll of every thread and every gunicorn worker on this
host reads the same snapshot file; it is refreshed (one ``squeue``, one REQUEST_JOB_INFO
RPC) at most once per ``interval`` however many clients poll:

- ``snapshot.json`` in the cache dir, written atomically (temp file + rename); its mtime
  is set to the moment the squeue started.
- ``snapshot.lock``: whoever finds the snapshot stale takes this flock and re-checks; only
  the holder runs squeue, the others wait and then read what it wrote.
- ``snapshot.dirty``: touched when this gateway changes a job (submit, kill...). A
  snapshot whose squeue started before the last touch is stale at once, so a client sees
  its own change on the next read.

A refresh that fails (controller down, timeout) is recorded too, so the other readers of
that interval get the same 503 at once instead of each waiting for squeue to fail.

Jobs in a final state are carried over from one snapshot to the next after they leave
squeue (Slurm forgets them MinJobAge after the end when there is no accounting database),
for ``retention`` seconds and at most ``keep`` of them, so a finished job keeps answering
with its final state and exit code.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
import threading
import time
from dataclasses import fields
from datetime import datetime, timezone
from typing import Callable

from gateway import errors as gw_errors
from gateway.errors import GatewayError, SchedulerUnavailable
from gateway.models import Job, JobState

Record = tuple[Job, dict]          # (job, extra: id, array_job_id, array_task_id, array_tasks)
_JOB_FIELD_NAMES = tuple(f.name for f in fields(Job))
_JOB_FIELDS = frozenset(_JOB_FIELD_NAMES)


def record_to_dict(rec: Record) -> dict:
    job, extra = rec
    d = {name: getattr(job, name) for name in _JOB_FIELD_NAMES}   # not asdict(): 10x slower
    d["state"] = job.state.value
    d["hosts"] = list(job.hosts)
    for key in ("submit_time", "start_time", "end_time"):
        value = d[key]
        d[key] = value.timestamp() if value is not None else None
    d["_extra"] = extra
    return d


def record_from_dict(d: dict) -> Record:
    d = dict(d)
    extra = d.pop("_extra", {}) or {}
    kw = {k: v for k, v in d.items() if k in _JOB_FIELDS}
    kw["state"] = JobState(kw.get("state", "UNKNOWN"))
    for key in ("submit_time", "start_time", "end_time"):
        if kw.get(key) is not None:
            kw[key] = datetime.fromtimestamp(kw[key], tz=timezone.utc)
    kw["hosts"] = list(kw.get("hosts") or [])
    return Job(**kw), extra


class View:
    """One loaded snapshot: the records plus the indexes lookups need."""

    def __init__(self, taken_at: float, records: list[Record], error: dict | None = None):
        self.taken_at = taken_at
        self.records = records
        self.error = error
        self.by_display: dict[str, Record] = {}
        self.by_id: dict[str, Record] = {}
        self.arrays: dict[str, list[Record]] = {}
        for rec in records:
            job, extra = rec
            self.by_display[job.job_id] = rec
            if extra.get("id"):
                self.by_id[extra["id"]] = rec
            if extra.get("array_job_id"):
                self.arrays.setdefault(extra["array_job_id"], []).append(rec)

    @property
    def jobs(self) -> list[Job]:
        return [job for job, _ in self.records]

    def raise_error(self) -> None:
        if self.error:
            cls = getattr(gw_errors, self.error.get("type", ""), None)
            if not (isinstance(cls, type) and issubclass(cls, GatewayError)):
                cls = SchedulerUnavailable
            raise cls(self.error.get("msg"))


class SharedSnapshot:
    def __init__(self, cache_dir: str, interval: float,
                 fetch: Callable[[dict[str, Record], dict | None], list[Record]],
                 retention: float = 7 * 86400, keep: int = 20000):
        self.cache_dir = cache_dir
        self.interval_ns = int(interval * 1e9)
        self.fetch = fetch
        self.retention = retention
        self.keep = keep
        self.path = os.path.join(cache_dir, "snapshot.json")
        self.lock_path = os.path.join(cache_dir, "snapshot.lock")
        self.dirty_path = os.path.join(cache_dir, "snapshot.dirty")
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._view: View | None = None
        self._view_key = None
        self.refreshes = 0            # squeue runs by this process (for tests and bench)

    # ------------------------------------------------------------ freshness
    def _stat(self):
        try:
            return os.stat(self.path)
        except FileNotFoundError:
            return None

    def _dirty_ns(self) -> int:
        try:
            return os.stat(self.dirty_path).st_mtime_ns
        except FileNotFoundError:
            return 0

    def _fresh(self, st, max_age_ns: int | None = None) -> bool:
        if st is None or st.st_mtime_ns <= self._dirty_ns():
            return False
        age = time.time_ns() - st.st_mtime_ns
        return age < (self.interval_ns if max_age_ns is None else max_age_ns)

    def _load(self, st) -> View:
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._view is not None and self._view_key == key:
            return self._view
        with open(self.path, "rb") as fh:
            doc = json.load(fh)
        view = View(doc.get("taken_at", st.st_mtime_ns / 1e9),
                    [record_from_dict(d) for d in doc.get("jobs", [])], doc.get("error"))
        self._view, self._view_key = view, key
        return view

    # ------------------------------------------------------------ public
    def get(self, max_age: float | None = None) -> View:
        """The current view (refreshing it if stale); raises the refresh's error if it failed.
        ``max_age``: accept no snapshot older than this many seconds (default: the interval)."""
        max_age_ns = None if max_age is None else int(max_age * 1e9)
        with self._lock:
            st = self._stat()
            if not self._fresh(st, max_age_ns):
                with _flock(self.lock_path):
                    st = self._stat()
                    if not self._fresh(st, max_age_ns):
                        self._refresh(st)
                        st = self._stat()
            view = self._load(st)
        view.raise_error()
        return view

    def invalidate(self) -> None:
        """This gateway changed a job: the next read runs squeue again."""
        now = time.time_ns()
        fd = os.open(self.dirty_path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
        os.utime(self.dirty_path, ns=(now, now))

    # ------------------------------------------------------------ refresh
    def _previous(self, st) -> View | None:
        if st is None:
            return None
        try:
            return self._load(st)
        except (OSError, ValueError):
            return None

    def _refresh(self, st) -> None:
        taken_ns = time.time_ns()
        prev = self._previous(st)
        prev_records = {extra["id"]: (job, extra) for job, extra in (prev.records if prev else [])
                        if extra.get("id")}
        error = None
        try:
            records = self.fetch(prev_records, prev.error if prev else None)
        except GatewayError as exc:
            error = {"type": type(exc).__name__, "msg": exc.msg}
            records = list(prev_records.values())
        else:
            records = self._merge(records, prev_records, taken_ns / 1e9)
        self.refreshes += 1
        doc = {"taken_at": taken_ns / 1e9, "error": error,
               "jobs": [record_to_dict(r) for r in records]}
        fd, tmp = tempfile.mkstemp(prefix=".snapshot.", dir=self.cache_dir)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(doc, separators=(",", ":")))   # dumps: the C encoder
            os.utime(tmp, ns=(taken_ns, taken_ns))
            os.replace(tmp, self.path)
            st = os.stat(self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        # This process has the records already: no need to read back what it wrote.
        self._view = View(taken_ns / 1e9, records, error)
        self._view_key = (st.st_ino, st.st_mtime_ns, st.st_size)

    def _merge(self, records: list[Record], prev: dict[str, Record], now: float) -> list[Record]:
        """The fresh records plus finished jobs that have since left squeue."""
        seen = {extra.get("id") for _, extra in records}
        carried = []
        horizon = now - self.retention
        for rec_id, (job, extra) in prev.items():
            if rec_id in seen or not job.state.is_final:
                continue
            ended = job.end_time.timestamp() if job.end_time else now
            if ended >= horizon:
                carried.append((job, dict(extra, gone=True)))
        if len(carried) > self.keep:
            carried.sort(key=lambda r: r[0].end_time.timestamp() if r[0].end_time else 0, reverse=True)
            carried = carried[:self.keep]
        return list(records) + carried


class _flock:
    """An exclusive flock on ``path``, blocking (the holder is refreshing the snapshot)."""

    def __init__(self, path: str):
        self.path = path
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX)
                return self
            except OSError as exc:  # pragma: no cover - EINTR
                if exc.errno != errno.EINTR:
                    os.close(self.fd)
                    raise

    def __exit__(self, *exc):
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
        return False

