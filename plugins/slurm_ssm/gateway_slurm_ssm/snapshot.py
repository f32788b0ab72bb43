"""One shared view of the queue, so polling clients never reach slurmctld directly.

Every listing, job detail and long poll of every thread and every gunicorn worker on this
host reads the same snapshot file; it is refreshed (one ``squeue``, one REQUEST_JOB_INFO
RPC) at most once per ``interval`` however many clients poll:

- ``snapshot-rows.json`` in the cache dir, written atomically (temp file + rename); its
  mtime is set to the moment the squeue started. (The first releases wrote
  ``snapshot.json``, one object per job; its own name keeps a worker of that release, during
  a rolling upgrade, from reading a file it cannot parse. A new release takes that file's
  finished jobs over on its first refresh.)
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
from collections.abc import Mapping
from dataclasses import fields
from datetime import datetime, timezone
from typing import Callable

from gateway import errors as gw_errors
from gateway.errors import GatewayError, SchedulerUnavailable
from gateway.models import Job, JobState

try:                                  # the core's turns (gateway/turns.py), when it has them
    from gateway.turns import current_turns

    def _lend_turn():
        return current_turns().waiting()
except ImportError:                   # pragma: no cover - an older core
    from contextlib import nullcontext as _lend_turn

Record = tuple[Job, dict]          # (job, extra: id, array_job_id, array_task_id, array_tasks)
_JOB_FIELD_NAMES = tuple(f.name for f in fields(Job))
_JOB_FIELDS = frozenset(_JOB_FIELD_NAMES)


_STATE = _JOB_FIELD_NAMES.index("state")
_HOSTS = _JOB_FIELD_NAMES.index("hosts")
_TIMES = tuple(_JOB_FIELD_NAMES.index(k) for k in ("submit_time", "start_time", "end_time"))
_JOB_ID, _USER = _JOB_FIELD_NAMES.index("job_id"), _JOB_FIELD_NAMES.index("user_name")


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


def record_to_row(rec: Record) -> list:
    """The snapshot file's form of a record: the Job's fields in order, then ``extra``
    (a JSON array parses several times faster than an object with the names repeated)."""
    job, extra = rec
    row = [getattr(job, name) for name in _JOB_FIELD_NAMES]
    row[_STATE] = job.state.value
    row[_HOSTS] = list(job.hosts)
    for i in _TIMES:
        if row[i] is not None:
            row[i] = row[i].timestamp()
    row.append(extra)
    return row


def record_from_row(row: list) -> Record:
    row = list(row)
    extra = row.pop() or {}
    row[_STATE] = JobState(row[_STATE])
    row[_HOSTS] = list(row[_HOSTS] or [])
    for i in _TIMES:
        if row[i] is not None:
            row[i] = datetime.fromtimestamp(row[i], tz=timezone.utc)
    return Job(*row), extra


class _Records(Mapping):
    """key -> Record, building each record from its row on first use."""

    def __init__(self, view: "View", index: dict):
        self._view, self._index = view, index

    def __getitem__(self, key) -> Record:
        i = self._index[key]
        return self._view._built[i] or self._view.record(i)

    def get(self, key, default=None):
        i = self._index.get(key)
        return default if i is None else (self._view._built[i] or self._view.record(i))

    def __contains__(self, key) -> bool:
        return key in self._index

    def __iter__(self):
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


class _RecordLists(_Records):
    def __getitem__(self, key) -> list[Record]:
        return [self._view.record(i) for i in self._index[key]]

    def get(self, key, default=None):
        return self[key] if key in self._index else default


class View:
    """One loaded snapshot: the records plus the indexes lookups need.

    Made either from the records (the process that ran squeue) or from the rows of the
    snapshot file; then a record is built from its row when first asked for, so a worker
    that loads a fresh snapshot pays for the jobs its clients look at, not for the queue."""

    def __init__(self, taken_at: float, records: list[Record] | None = None, error: dict | None = None,
                 *, rows: list[list] | None = None):
        self.taken_at = taken_at
        self.error = error
        if rows is not None:
            self._rows, self._built = rows, [None] * len(rows)
            keys = [(row[_JOB_ID], row[_USER], row[-1] or {}) for row in rows]
        else:
            records = list(records or ())
            self._rows, self._built = None, records
            keys = [(job.job_id, job.user_name, extra) for job, extra in records]
        display: dict[str, int] = {}
        ids: dict[str, int] = {}
        arrays: dict[str, list[int]] = {}
        users: dict[str | None, list[int]] = {}
        for i, (job_id, user, extra) in enumerate(keys):
            display[job_id] = i
            users.setdefault(user, []).append(i)
            if extra.get("id"):
                ids[extra["id"]] = i
            if extra.get("array_job_id"):
                arrays.setdefault(extra["array_job_id"], []).append(i)
        self._users = users
        self.by_display = _Records(self, display)
        self.by_id = _Records(self, ids)
        self.arrays = _RecordLists(self, arrays)

    def record(self, i: int) -> Record:
        rec = self._built[i]
        if rec is None:                  # a race builds it twice: equal records, no harm
            rec = self._built[i] = record_from_row(self._rows[i])
        return rec

    @property
    def records(self) -> list[Record]:
        built = self._built
        return [built[i] or self.record(i) for i in range(len(built))]

    @property
    def jobs(self) -> list[Job]:
        return [rec[0] for rec in self.records]

    def jobs_of(self, user: str | None) -> list[Job]:
        built = self._built
        return [(built[i] or self.record(i))[0] for i in self._users.get(user, ())]

    def raise_error(self) -> None:
        if self.error:
            cls = getattr(gw_errors, self.error.get("type", ""), None)
            if not (isinstance(cls, type) and issubclass(cls, GatewayError)):
                cls = SchedulerUnavailable
            raise cls(self.error.get("msg"))


# A dirty mark further ahead of the clock than this was set before the clock stepped back.
DIRTY_FUTURE_SLACK_NS = 1_000_000_000


class SharedSnapshot:
    def __init__(self, cache_dir: str, interval: float,
                 fetch: Callable[[Mapping[str, Record], dict | None], list[Record]],
                 retention: float = 7 * 86400, keep: int = 20000, stale_grace: float = 2.0):
        self.cache_dir = cache_dir
        self.interval_ns = int(interval * 1e9)
        self.fetch = fetch
        self.retention = retention
        self.keep = keep
        self.path = os.path.join(cache_dir, "snapshot-rows.json")
        self.legacy_path = os.path.join(cache_dir, "snapshot.json")
        self.lock_path = os.path.join(cache_dir, "snapshot.lock")
        self.dirty_path = os.path.join(cache_dir, "snapshot.dirty")
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        # interval 0 means "a squeue for every read": no stale answers either.
        self.stale_grace_ns = int(stale_grace * 1e9) if interval > 0 else 0
        self._lock = threading.Lock()            # one refresher / loader per process
        self._current: tuple[tuple, View] | None = None   # (file key, view), replaced whole
        self.refreshes = 0            # squeue runs by this process (for tests and bench)

    # ------------------------------------------------------------ freshness
    def _stat(self):
        try:
            return os.stat(self.path)
        except FileNotFoundError:
            return None

    def _dirty_ns(self) -> int:
        try:
            mark = os.stat(self.dirty_path).st_mtime_ns
        except FileNotFoundError:
            return 0
        now_ns = time.time_ns()
        if mark > now_ns + DIRTY_FUTURE_SLACK_NS:
            # The clock stepped back after a change was marked: every snapshot taken since is
            # older than the mark, so none would be fresh (a squeue per read) until the clock
            # caught up with it. The change lies in the past whatever the clock says: the mark
            # moves to now (the next read refreshes once, as after any change). Only if it is
            # still the mark read: an invalidate() of another process since stands.
            try:
                if os.stat(self.dirty_path).st_mtime_ns == mark:
                    now_ns = time.time_ns()
                    os.utime(self.dirty_path, ns=(now_ns, now_ns))
            except OSError:
                pass
            return now_ns
        return mark

    def _fresh(self, st, dirty_ns: int, now_ns: int, max_age: float | None) -> bool:
        if st is None or st.st_mtime_ns <= dirty_ns:
            return False
        limit = self.interval_ns if max_age is None else int(max_age * 1e9)
        # An age below 0 (the clock stepped back) is not fresh: refresh, rather than serve
        # it for as long as the step was.
        return 0 <= now_ns - st.st_mtime_ns < limit

    def _load(self, st) -> View:
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        current = self._current
        if current is not None and current[0] == key:
            return current[1]
        view = _read_view(self.path, st)
        self._current = (key, view)
        return view

    def _servable(self, current, dirty_ns: int, now_ns: int) -> bool:
        """May the view in ``current`` answer while a newer one is being made? Only when
        nothing this gateway did since makes it wrong (dirty mark) and it is not much past
        its interval. Compared on the file's mtime, which the file system truncates as it
        truncates the dirty mark's (a view taken at 11.5 s must not pass for newer than a
        change at 11.9 s stored as 11 s)."""
        if current is None:
            return False
        mtime_ns = current[0][1]
        return mtime_ns > dirty_ns and 0 <= now_ns - mtime_ns < self.interval_ns + self.stale_grace_ns

    # ------------------------------------------------------------ public
    def get(self, max_age: float | None = None) -> View:
        """The current view (refreshing it if stale); raises the refresh's error if it failed.
        ``max_age``: accept no snapshot older than this many seconds (default: the interval).

        Readers never queue behind a refresh they can do without: while one thread of one
        process runs squeue (or loads the file another process wrote), the other threads and
        processes keep answering from the view they have, for at most ``stale_grace`` seconds
        past the interval. A read after this gateway changed a job (``invalidate``) or with
        ``max_age`` waits for the new snapshot, as does a process that has no view yet."""
        view = self._get(max_age)
        view.raise_error()
        return view

    def _get(self, max_age: float | None) -> View:
        st = self._stat()
        current = self._current
        dirty_ns = self._dirty_ns()
        now_ns = time.time_ns()
        if st is not None and current is not None and current[0] == (st.st_ino, st.st_mtime_ns, st.st_size) \
                and self._fresh(st, dirty_ns, now_ns, max_age):
            return current[1]                                   # the hot path: no lock at all
        fallback = current[1] if (max_age is None and self._servable(current, dirty_ns, now_ns)) else None
        if fallback is not None:
            if not self._lock.acquire(blocking=False):
                return fallback                                 # another thread is on it
            try:
                st = self._stat()
                if self._fresh(st, self._dirty_ns(), time.time_ns(), None):
                    return self._load(st)                       # another process refreshed
                try:
                    flock = _flock(self.lock_path, blocking=False).__enter__()
                except BlockingIOError:
                    return fallback                             # another process is refreshing
                try:
                    st = self._stat()
                    if not self._fresh(st, self._dirty_ns(), time.time_ns(), None):
                        with _lend_turn():
                            self._refresh(st)
                        st = self._stat()
                    return self._load(st)
                finally:
                    flock.__exit__(None, None, None)
            finally:
                self._lock.release()
        # Waiting (for this process's refresher, another process's, or squeue): the request's
        # turn (gateway/turns.py) goes to others meanwhile. Every wait on these locks lends
        # it, so a refresher taking its turn back while holding them cannot deadlock.
        with _lend_turn(), self._lock:
            st = self._stat()
            if not self._fresh(st, self._dirty_ns(), time.time_ns(), max_age):
                with _flock(self.lock_path):
                    st = self._stat()
                    if not self._fresh(st, self._dirty_ns(), time.time_ns(), max_age):
                        self._refresh(st)
                        st = self._stat()
            return self._load(st)

    def invalidate(self) -> None:
        """This gateway changed a job: the next read runs squeue again."""
        now = time.time_ns()
        fd = os.open(self.dirty_path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
        os.utime(self.dirty_path, ns=(now, now))

    # ------------------------------------------------------------ refresh
    def _previous(self, st) -> View | None:
        try:
            if st is not None:
                return self._load(st)
            # No snapshot of this release yet: take the finished jobs over from the file of
            # the release before, if there is one.
            return _read_view(self.legacy_path, os.stat(self.legacy_path))
        except (OSError, ValueError):
            return None

    def _refresh(self, st) -> None:
        taken_ns = time.time_ns()
        prev = self._previous(st)
        prev_records: Mapping[str, Record] = prev.by_id if prev else {}     # built as used
        error = None
        try:
            records = self.fetch(prev_records, prev.error if prev else None)
        except GatewayError as exc:
            error = {"type": type(exc).__name__, "msg": exc.msg}
            records = list(prev_records.values())
        else:
            records = self._merge(records, prev_records, taken_ns / 1e9)
        self.refreshes += 1
        doc = {"taken_at": taken_ns / 1e9, "error": error, "fields": _JOB_FIELD_NAMES,
               "rows": [record_to_row(r) for r in records]}
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
        self._current = ((st.st_ino, st.st_mtime_ns, st.st_size), View(taken_ns / 1e9, records, error))

    def _merge(self, records: list[Record], prev: Mapping[str, Record], now: float) -> list[Record]:
        """The fresh records plus finished jobs that have since left squeue. A carried job
        never hides a fresh one: one whose display id a fresh record has (Slurm reused the
        ids: a state reset, MaxJobId reached) is dropped, not carried. (A finished task of
        an array still running is carried as any job.)"""
        seen = {extra.get("id") for _, extra in records}
        shown = {job.job_id for job, _ in records}
        carried = []
        horizon = now - self.retention
        for rec_id in prev:
            if rec_id in seen:
                continue
            job, extra = prev[rec_id]
            if job.job_id in shown:
                continue
            if not job.state.is_final:
                continue
            ended = job.end_time.timestamp() if job.end_time else now
            if ended >= horizon:
                carried.append((job, dict(extra, gone=True)))
        if len(carried) > self.keep:
            carried.sort(key=lambda r: r[0].end_time.timestamp() if r[0].end_time else 0, reverse=True)
            carried = carried[:self.keep]
        return list(records) + carried


def _read_view(path: str, st) -> View:
    with open(path, "rb") as fh:
        doc = json.load(fh)
    taken_at = doc.get("taken_at", st.st_mtime_ns / 1e9)
    if doc.get("fields") == list(_JOB_FIELD_NAMES):
        return View(taken_at, error=doc.get("error"), rows=doc.get("rows", []))
    if "rows" in doc:                    # written by another release: go by the names
        names = list(doc.get("fields") or ())
        return View(taken_at, [record_from_dict(dict(zip(names, row[:-1]), _extra=row[-1]))
                               for row in doc["rows"]], doc.get("error"))
    # the first releases' format (snapshot.json)
    return View(taken_at, [record_from_dict(d) for d in doc.get("jobs", [])], doc.get("error"))


class _flock:
    """An exclusive flock on ``path`` (the holder is refreshing the snapshot); with
    ``blocking=False``, BlockingIOError when another process holds it."""

    def __init__(self, path: str, blocking: bool = True):
        self.path = path
        self.flags = fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        while True:
            try:
                fcntl.flock(self.fd, self.flags)
                return self
            except OSError as exc:
                if exc.errno != errno.EINTR:  # EWOULDBLOCK is BlockingIOError
                    os.close(self.fd)
                    raise

    def __exit__(self, *exc):
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
        return False

