"""The shared queue snapshot: one squeue per interval for every thread and process of a host."""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from gateway.errors import SchedulerTimeout, SchedulerUnavailable
from gateway.models import Job, JobState
from gateway_slurm_ssm.snapshot import SharedSnapshot, record_from_dict, record_to_dict


def rec(job_id, state=JobState.RUNNING, end=None, **kw):
    job = Job(job_id=job_id, state=state, user_name="u", end_time=end, **kw)
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
    assert os.stat(tmp_path / "cache" / "snapshot.json").st_mode & 0o077 == 0
