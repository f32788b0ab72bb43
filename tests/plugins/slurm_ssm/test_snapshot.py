"""The shared queue snapshot: one squeue per interval for every thread and process of a host."""
from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from gateway.errors import SchedulerTimeout, SchedulerUnavailable
from gateway.models import Job, JobState
from gateway_slurm_ssm.snapshot import (SharedSnapshot, View, record_from_dict, record_from_row, record_to_dict,
                                        record_to_row)


def rec(job_id, state=JobState.RUNNING, end=None, **kw):
    kw.setdefault("user_name", "u")
    job = Job(job_id=job_id, state=state, end_time=end, **kw)
    return job, {"id": job_id, "array_job_id": None, "array_task_id": None, "array_tasks": None}


class CountingFetch:
    """A fake squeue: returns ``self.records`` and counts its runs (in a file, across processes)."""

    def __init__(self, path, records=(), delay=0.0):
        self.path = str(path)
        self.records = list(records)
        self.delay = delay
        self.error = None
        self.seen_previous = []

    def __call__(self, previous, previous_error):
        self.seen_previous.append((dict(previous), previous_error))
        with open(self.path, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(self.delay)
        if self.error:
            raise self.error
        return list(self.records)

    @property
    def runs(self) -> int:
        try:
            with open(self.path) as fh:
                return len(fh.read().split())
        except FileNotFoundError:
            return 0


def test_record_round_trip():
    t = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    r = rec("7", JobState.FAILED, end=t, exit_code=3, hosts=["a", "b"], submit_time=t)
    again = record_from_dict(record_to_dict(r))
    assert again == r
    assert record_from_row(json.loads(json.dumps(record_to_row(r)))) == r


def test_a_view_from_rows_builds_only_what_is_asked_for():
    t = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    records = [rec("1", user_name="a"), rec("2", JobState.FAILED, end=t, exit_code=3),
               (Job(job_id="5_1", user_name="a", state=JobState.PENDING),
                {"id": "6", "array_job_id": "5", "array_task_id": "1", "array_tasks": None})]
    records[0] = (records[0][0], records[0][1])
    view = View(1.0, error=None, rows=[json.loads(json.dumps(record_to_row(r))) for r in records])
    assert view._built == [None, None, None]
    assert view.by_display["2"] == records[1] and view._built[0] is None and view._built[2] is None
    assert view.by_id["6"] == records[2] and [r for r in view.arrays["5"]] == [records[2]]
    assert view.arrays.get("5") == [records[2]] and view.arrays.get("1") is None and view.by_id.get("5") is None
    assert "1" in view.by_display and "9" not in view.by_display and view.by_display.get("9") is None
    assert [j.job_id for j in view.jobs_of("u")] == ["2"]
    assert view.records == records and [j.job_id for j in view.jobs] == ["1", "2", "5_1"]
    assert View(1.0, records).records == records                  # the refresher's own view


def test_many_threads_share_one_refresh_per_interval(tmp_path):
    fetch = CountingFetch(tmp_path / "runs", [rec("1")], delay=0.05)
    snap = SharedSnapshot(str(tmp_path / "cache"), 0.5, fetch)
    stop = time.monotonic() + 1.6
    reads = []

    def poll():
        n = 0
        while time.monotonic() < stop:
            assert snap.get().by_display["1"][0].job_id == "1"
            n += 1
        reads.append(n)

    threads = [threading.Thread(target=poll) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(reads) > 1000
    assert 1 <= fetch.runs <= 5          # 1.6 s / 0.5 s, whatever the number of readers


def _process_poll(cache, runs_path, seconds):
    fetch = CountingFetch(runs_path, [rec("1")], delay=0.05)
    snap = SharedSnapshot(cache, 0.5, fetch)
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        assert "1" in snap.get().by_display


def test_worker_processes_share_the_snapshot_file(tmp_path):
    ctx = multiprocessing.get_context("fork")
    cache, runs = str(tmp_path / "cache"), str(tmp_path / "runs")
    procs = [ctx.Process(target=_process_poll, args=(cache, runs, 1.6)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    pids = open(runs).read().split()
    assert 1 <= len(pids) <= 5            # not 4 processes x 4 intervals


def test_invalidate_forces_the_next_read_to_refresh(tmp_path):
    fetch = CountingFetch(tmp_path / "runs", [rec("1")])
    snap = SharedSnapshot(str(tmp_path / "cache"), 60, fetch)
    snap.get()
    snap.get()
    assert fetch.runs == 1
    fetch.records.append(rec("2"))
    snap.invalidate()
    assert "2" in snap.get().by_display
    assert fetch.runs == 2
    # another process's instance sees the invalidation too (same files)
    other = SharedSnapshot(str(tmp_path / "cache"), 60, fetch)
    assert "2" in other.get().by_display and fetch.runs == 2
    other.invalidate()
    snap.get()
    assert fetch.runs == 3


def test_max_age_zero_always_refreshes(tmp_path):
    fetch = CountingFetch(tmp_path / "runs", [rec("1")])
    snap = SharedSnapshot(str(tmp_path / "cache"), 60, fetch)
    snap.get()
    snap.get(max_age=0)
    assert fetch.runs == 2


def test_finished_jobs_outlive_squeue_within_retention(tmp_path):
    now = datetime.now(timezone.utc)
    fetch = CountingFetch(tmp_path / "runs", [
        rec("1", JobState.COMPLETED, end=now, exit_code=0), rec("2", JobState.RUNNING),
        rec("3", JobState.FAILED, end=now - timedelta(days=30), exit_code=1),
        rec("4", JobState.CANCELLED, end=now - timedelta(seconds=5))])
    snap = SharedSnapshot(str(tmp_path / "cache"), 60, fetch, retention=86400, keep=1)
    snap.get()
    fetch.records = []                    # MinJobAge passed: squeue forgot them all
    snap.invalidate()
    view = snap.get()
    # 1 kept (newest finished, keep=1); 4 dropped by keep; 3 past retention; 2 was not final
    assert set(view.by_display) == {"1"}
    job, extra = view.by_display["1"]
    assert job.state is JobState.COMPLETED and job.exit_code == 0 and extra["gone"] is True
    snap.invalidate()
    assert set(snap.get().by_display) == {"1"}          # and stays


def test_a_carried_finished_job_never_hides_a_live_one_with_its_id(tmp_path):
    """Slurm reuses job ids (a state reset, MaxJobId reached) within the retention: bob's
    finished task 36_4 (raw id 40), carried after squeue forgot it, hid alice's live 36_4
    (raw id 45), and answered as the array's owner."""
    now = datetime.now(timezone.utc)
    old_job, old_extra = rec("36_4", JobState.COMPLETED, end=now, exit_code=0, user_name="bob")
    old_extra.update(id="40", array_job_id="36", array_task_id="4")
    gone, gone_extra = rec("7", JobState.COMPLETED, end=now, exit_code=0)
    done_task, done_extra = rec("50_1", JobState.COMPLETED, end=now, exit_code=0)
    done_extra.update(id="51", array_job_id="50", array_task_id="1")
    fetch = CountingFetch(tmp_path / "runs", [(old_job, old_extra), (gone, gone_extra), (done_task, done_extra)])
    snap = SharedSnapshot(str(tmp_path / "cache"), 60, fetch, retention=86400, keep=100)
    snap.get()
    new_job, new_extra = rec("36_4", JobState.RUNNING, user_name="alice")
    new_extra.update(id="45", array_job_id="36", array_task_id="4")
    running_task, running_extra = rec("50_2", JobState.RUNNING)
    running_extra.update(id="52", array_job_id="50", array_task_id="2")
    fetch.records = [(new_job, new_extra), (running_task, running_extra)]
    snap.invalidate()
    view = snap.get()
    assert view.by_display["36_4"][0].user_name == "alice"
    assert [j.user_name for j, _ in view.arrays["36"]] == ["alice"]
    # Job 7, and a finished task of an array still running, are carried as before.
    assert set(view.by_display) == {"36_4", "7", "50_1", "50_2"}


def test_a_snapshot_from_the_future_is_not_fresh(tmp_path):
    """The clock stepped back: the file's age is below 0. It was fresh for as long as the
    step, and a change of this gateway's (dirty mark, older than the file) went unseen."""
    fetch = CountingFetch(tmp_path / "runs", [rec("1")])
    snap = SharedSnapshot(str(tmp_path / "cache"), 60, fetch)
    snap.get()
    future = time.time() + 3600
    os.utime(snap.path, (future, future))
    snap._current = None
    snap.get()
    assert fetch.runs == 2


def test_a_dirty_mark_from_the_future_costs_one_refresh_not_one_per_read(tmp_path):
    """The clock stepped back after this gateway marked a change: the mark is ahead of every
    snapshot taken since, which made none fresh (a squeue per read) for as long as the step."""
    fetch = CountingFetch(tmp_path / "runs", [rec("1")])
    snap = SharedSnapshot(str(tmp_path / "cache"), 60, fetch)
    snap.get()
    snap.invalidate()
    future = time.time_ns() + 3600 * 10**9
    os.utime(snap.dirty_path, ns=(future, future))
    for _ in range(5):
        snap.get()
    assert fetch.runs == 2                  # the change is seen once, then the snapshot serves
    assert os.stat(snap.dirty_path).st_mtime_ns <= time.time_ns()
    # A mark just set (not ahead by more than the slack) still makes the next read refresh.
    snap.invalidate()
    snap.get()
    assert fetch.runs == 3


def test_a_failed_refresh_is_shared_and_keeps_the_previous_jobs(tmp_path):
    now = datetime.now(timezone.utc)
    fetch = CountingFetch(tmp_path / "runs", [rec("1", JobState.COMPLETED, end=now, exit_code=0)])
    snap = SharedSnapshot(str(tmp_path / "cache"), 0.3, fetch)
    snap.get()
    fetch.error = SchedulerUnavailable("slurm_load_jobs error: Unable to contact slurm controller")
    snap.invalidate()
    with pytest.raises(SchedulerUnavailable) as e:
        snap.get()
    assert "Unable to contact" in e.value.msg and e.value.headers["Retry-After"]
    runs = fetch.runs
    for _ in range(20):                   # the others get the same answer without a squeue
        with pytest.raises(SchedulerUnavailable):
            snap.get()
    assert fetch.runs == runs
    time.sleep(0.35)
    fetch.error = SchedulerTimeout("squeue did not answer within 20 s")
    with pytest.raises(SchedulerTimeout):
        snap.get()
    previous, previous_error = fetch.seen_previous[-1]
    assert "1" in previous and previous_error["type"] == "SchedulerUnavailable"
    time.sleep(0.35)
    fetch.error = None
    fetch.records = []
    assert "1" in snap.get().by_display   # the finished job survived the outage


def test_snapshot_file_is_private(tmp_path):
    snap = SharedSnapshot(str(tmp_path / "cache"), 1, CountingFetch(tmp_path / "runs"))
    snap.get()
    assert os.stat(tmp_path / "cache").st_mode & 0o077 == 0
    assert os.stat(snap.path).st_mode & 0o077 == 0


class GatedFetch(CountingFetch):
    """A squeue that, once ``gate`` is armed, blocks until the test opens it."""

    def __init__(self, path, records=()):
        super().__init__(path, records)
        self.gate = None
        self.entered = threading.Event()

    def __call__(self, previous, previous_error):
        if self.gate is not None:
            self.entered.set()
            assert self.gate.wait(30)
        return super().__call__(previous, previous_error)


def _in_thread(fn):
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("value", fn()), daemon=True)
    t.start()
    return t, box


def test_readers_answer_from_the_last_view_while_one_thread_refreshes(tmp_path):
    fetch = GatedFetch(tmp_path / "runs", [rec("1")])
    snap = SharedSnapshot(str(tmp_path / "cache"), 0.2, fetch, stale_grace=30)
    assert set(snap.get().by_display) == {"1"}
    time.sleep(0.25)                                    # stale now
    fetch.records, fetch.gate = [rec("2")], threading.Event()
    refresher, box = _in_thread(snap.get)
    assert fetch.entered.wait(10)                       # the refresher is inside squeue
    # Every other reader of this process answers at once from the previous view...
    for _ in range(100):
        assert set(snap.get().by_display) == {"1"}
    # ...and so does another process's instance that has a view (flock held: no wait).
    other = SharedSnapshot(str(tmp_path / "cache"), 0.2, fetch, stale_grace=30)
    other._current = snap._current
    assert set(other.get().by_display) == {"1"}
    assert refresher.is_alive()
    fetch.gate.set()
    refresher.join(10)
    assert set(box["value"].by_display) == {"2"}
    assert set(snap.get().by_display) == {"2"} and fetch.runs == 2
    assert set(other.get().by_display) == {"2"} and fetch.runs == 2   # loaded, not refreshed


def test_after_a_change_or_past_the_grace_readers_wait_for_the_new_view(tmp_path):
    fetch = GatedFetch(tmp_path / "runs", [rec("1")])
    snap = SharedSnapshot(str(tmp_path / "cache"), 0.2, fetch, stale_grace=30)
    snap.get()
    time.sleep(0.25)
    fetch.records, fetch.gate = [rec("2")], threading.Event()
    refresher, _ = _in_thread(snap.get)
    assert fetch.entered.wait(10)
    snap.invalidate()                                   # this gateway changed a job
    waiter, box = _in_thread(snap.get)
    fresh, fresh_box = _in_thread(lambda: snap.get(max_age=0))
    waiter.join(0.5)
    fresh.join(0.1)
    assert waiter.is_alive() and fresh.is_alive()       # no stale answer after the change
    fetch.gate.set()
    for t in (refresher, waiter, fresh):
        t.join(10)
    assert set(box["value"].by_display) == {"2"} and set(fresh_box["value"].by_display) == {"2"}

    # A view older than interval + grace is not served either: the reader waits.
    old = SharedSnapshot(str(tmp_path / "cache"), 0.2, fetch, stale_grace=0.1)
    old.get()
    time.sleep(0.35)
    fetch.records, fetch.gate, fetch.entered = [rec("3")], threading.Event(), threading.Event()
    with _held_flock(old.lock_path):                   # "another process" is refreshing
        reader, rbox = _in_thread(old.get)
        reader.join(0.5)
        assert reader.is_alive()
    fetch.gate.set()
    reader.join(10)
    assert set(rbox["value"].by_display) == {"3"}


class _held_flock:
    def __init__(self, path):
        import fcntl
        self.fcntl, self.fd = fcntl, os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def __enter__(self):
        self.fcntl.flock(self.fd, self.fcntl.LOCK_EX)

    def __exit__(self, *exc):
        self.fcntl.flock(self.fd, self.fcntl.LOCK_UN)
        os.close(self.fd)


def test_the_previous_releases_snapshot_hands_its_finished_jobs_over(tmp_path):
    """A rolling upgrade: the old release keeps its snapshot.json (which it can parse); the
    new one writes its own file and carries the old file's finished jobs over."""
    fetch = CountingFetch(tmp_path / "runs", [rec("1")])
    snap = SharedSnapshot(str(tmp_path / "cache"), 60, fetch)
    done = rec("7", JobState.COMPLETED, end=datetime.now(timezone.utc), exit_code=0)
    old = {"taken_at": time.time(), "error": None, "jobs": [record_to_dict(done)]}
    with open(snap.legacy_path, "w") as fh:
        json.dump(old, fh)
    view = snap.get()
    assert set(view.by_display) == {"1", "7"} and view.by_display["7"][0] == done[0] and fetch.runs == 1
    assert snap.path != snap.legacy_path and json.load(open(snap.legacy_path)) == old   # untouched


def test_interval_zero_means_a_squeue_for_every_read(tmp_path):
    fetch = GatedFetch(tmp_path / "runs", [rec("1")])
    snap = SharedSnapshot(str(tmp_path / "cache"), 0, fetch)          # default grace, but 0
    snap.get()
    fetch.records, fetch.gate = [rec("2")], threading.Event()
    refresher, _ = _in_thread(snap.get)
    assert fetch.entered.wait(10)
    reader, box = _in_thread(snap.get)
    reader.join(0.3)
    assert reader.is_alive()                           # waits: no stale answer at interval 0
    fetch.gate.set()
    reader.join(10)
    assert set(box["value"].by_display) == {"2"}


def test_a_reader_waiting_for_the_snapshot_lends_its_turn(tmp_path):
    """With one turn per worker, a request waiting for squeue must not stop the others."""
    from flask import Flask, g

    from gateway.turns import Turns
    app = Flask(__name__)
    turns = Turns(1)
    app.extensions["hpc_gateway"] = type("S", (), {"turns": turns})()
    fetch = GatedFetch(tmp_path / "runs", [rec("1")])
    snap = SharedSnapshot(str(tmp_path / "cache"), 60, fetch)
    snap.get()
    snap.invalidate()                                  # the next read must wait for squeue
    fetch.gate = threading.Event()
    seen = {}

    def request_waiting_for_squeue():
        with app.test_request_context():
            turns.take()
            seen["view"] = snap.get()
            seen["turn_back"] = g.hpcgw_turn
            turns.give_back()

    t = threading.Thread(target=request_waiting_for_squeue)
    t.start()
    assert fetch.entered.wait(10)
    with app.test_request_context():                   # another request gets the one turn
        assert turns._sem.acquire(timeout=5)
        turns._sem.release()
    fetch.gate.set()
    t.join(10)
    assert "1" in seen["view"].by_display and seen["turn_back"] is True
