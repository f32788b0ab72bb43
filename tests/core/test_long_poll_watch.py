"""A long poll watches the job through the plugin's optional job_state hook (a listing the
plugin keeps for every caller) and fetches the job itself (get_job) only for its answer;
a plugin without the hook is looked at with get_job, as before."""
from __future__ import annotations

import threading
import time

import pytest

from gateway.hookspecs import hookimpl
from gateway.models import Job, JobState
from tests.helpers import app_with_plugin


class Watched:
    """The job's real state (``actual``) and what the plugin's listing says (``listed``,
    None: not in the listing), each with a call counter."""

    def __init__(self):
        self.lock = threading.Lock()
        self.actual = JobState.PENDING
        self.listed: JobState | None = JobState.PENDING
        self.calls = {"get_job": 0, "job_state": 0}

    @hookimpl
    def get_job(self, user, job_id):
        with self.lock:
            self.calls["get_job"] += 1
            return Job(job_id=job_id, name="w", user_name="admin", queue="q", state=self.actual)

    def set(self, actual=None, listed="keep"):
        with self.lock:
            if actual is not None:
                self.actual = actual
            if listed != "keep":
                self.listed = listed


class WatchedWithListing(Watched):
    @hookimpl
    def job_state(self, user, job_id):
        with self.lock:
            self.calls["job_state"] += 1
            return self.listed


@pytest.fixture
def make(tmp_path, monkeypatch):
    def _make(with_job_state=True):
        plugin = WatchedWithListing() if with_job_state else Watched()
        _, client = app_with_plugin(monkeypatch, tmp_path / f"w{int(with_job_state)}", plugin, "watched")
        return plugin, client
    return _make


def later(seconds, fn):
    t = threading.Timer(seconds, fn)
    t.start()
    return t


def test_the_job_is_watched_in_the_listing_and_fetched_only_for_the_answer(make):
    plugin, client = make()
    t = later(0.6, lambda: plugin.set(actual=JobState.RUNNING, listed=JobState.RUNNING))
    r = client.get("/jobs/7", params={"wait": "10"})
    t.join()
    assert r.status == 200 and r.body["data"]["job"]["state"] == "RUNNING"
    assert plugin.calls["get_job"] == 2               # the check at the start, the answer
    assert plugin.calls["job_state"] >= 3             # looks: 50 ms, 75 ms, ... until 0.6 s


def test_a_listing_behind_the_job_is_no_change(make):
    """The job was RUNNING when the poll began, the listing still says PENDING (taken
    before): that is not a change to answer; the poll waits for a real one."""
    plugin, client = make()
    plugin.set(actual=JobState.RUNNING, listed=JobState.PENDING)
    later(0.3, lambda: plugin.set(listed=JobState.RUNNING))        # the listing catches up
    t = later(1.0, lambda: plugin.set(actual=JobState.COMPLETED, listed=JobState.COMPLETED))
    start = time.monotonic()
    r = client.get("/jobs/7", params={"wait": "10"})
    elapsed = time.monotonic() - start
    t.join()
    assert r.body["data"]["job"]["state"] == "COMPLETED"
    assert elapsed >= 0.9, f"answered after {elapsed:.2f} s on the stale listing"


def test_the_answer_at_the_deadline_is_fetched_fresh(make):
    plugin, client = make()
    r = client.get("/jobs/7", params={"wait": "1"})
    assert r.body["data"]["job"]["state"] == "PENDING"
    assert plugin.calls["get_job"] == 2 and plugin.calls["job_state"] >= 3


def test_a_job_missing_from_the_listing_is_looked_at_with_get_job(make):
    plugin, client = make()
    plugin.set(listed=None)
    later(0.5, lambda: plugin.set(actual=JobState.RUNNING))
    r = client.get("/jobs/7", params={"wait": "10"})
    assert r.body["data"]["job"]["state"] == "RUNNING"
    assert plugin.calls["get_job"] >= 3


def test_without_the_hook_every_look_is_a_get_job(make):
    plugin, client = make(with_job_state=False)
    later(0.5, lambda: plugin.set(actual=JobState.RUNNING))
    r = client.get("/jobs/7", params={"wait": "10"})
    assert r.body["data"]["job"]["state"] == "RUNNING"
    assert plugin.calls["get_job"] >= 3 and plugin.calls["job_state"] == 0


def test_a_users_long_polls_beyond_their_share_answer_within_a_second(make_app):
    """Each waiting poll holds a worker thread: beyond max_waits_per_user in one process, a
    user's polls answer within SHORT_WAIT (state unchanged) instead of holding one for wait=N,
    and nobody gets an error."""
    app, admin = make_app(max_waits_per_user=2)
    job_id = admin.submit(command="true", hold=True)
    answered = {}

    def poll(label):
        r = admin.get(f"/jobs/{job_id}", params={"wait": 20})
        answered[label] = (time.monotonic(), r.status, r.body["data"]["job"]["state"], r.headers.get("X-Wait-Seconds"))

    threads = [threading.Thread(target=poll, args=(f"p{i}",)) for i in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.2)                          # in order: p0 and p1 take the user's two slots
    threads[3].join(timeout=10)
    threads[2].join(timeout=10)
    assert set(answered) == {"p2", "p3"}, answered          # p0 and p1 still wait their 20 s
    waits = app.extensions["hpc_gateway"].waits
    assert waits.held() == {"admin": 2}, waits.held()
    assert all(status == 200 and state == "HELD" for _, status, state, _ in answered.values())
    # The client can tell a cut poll from a job that did not change in 20 s.
    assert {answered[p][3] for p in ("p2", "p3")} == {"1"}
    admin.post(f"/jobs/{job_id}/release")                     # the two full polls see the change
    for t in threads[:2]:
        t.join(timeout=20)
    assert {answered[p][2] for p in ("p0", "p1")} <= {"PENDING", "RUNNING", "COMPLETED"}
    assert {answered[p][3] for p in ("p0", "p1")} == {"20"}
    assert waits.held() == {}                                 # both slots came back
    # The header says what the poll was allowed (here what it asked).
    held = admin.submit(command="true", hold=True)
    r = admin.get(f"/jobs/{held}", params={"wait": 0.3})
    assert r.status == 200 and r.headers["X-Wait-Seconds"] == "0.3"
    # No wait asked, or a change already there: nothing was waited, no header.
    assert "X-Wait-Seconds" not in admin.get(f"/jobs/{held}").headers
    assert "X-Wait-Seconds" not in admin.get(f"/jobs/{held}", params={"wait": 5, "since": "RUNNING"}).headers


def test_max_wait_seconds_bounds_a_poll_and_the_answer_says_so(make_app):
    app, admin = make_app(max_wait_seconds=1)
    held = admin.submit(command="true", hold=True)
    t0 = time.monotonic()
    r = admin.get(f"/jobs/{held}", params={"wait": 30})
    assert r.status == 200 and r.body["data"]["job"]["state"] == "HELD"
    assert r.headers["X-Wait-Seconds"] == "1" and time.monotonic() - t0 < 10


def test_the_default_share_is_a_quarter_of_a_workers_threads(make_app, monkeypatch):
    monkeypatch.delenv("GATEWAY_THREADS", raising=False)
    assert make_app()[0].extensions["hpc_gateway"].config["max_waits_per_user"] == 8       # 32 threads
    assert make_app(threads=40)[0].extensions["hpc_gateway"].config["max_waits_per_user"] == 10
    monkeypatch.setenv("GATEWAY_THREADS", "512")                    # as gunicorn.conf.py reads it
    assert make_app(threads=40)[0].extensions["hpc_gateway"].config["max_waits_per_user"] == 128
    assert make_app(max_waits_per_user=0)[0].extensions["hpc_gateway"].config["max_waits_per_user"] == 0
