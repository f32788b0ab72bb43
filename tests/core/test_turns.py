"""Turns (gateway/turns.py): at most running_threads requests of a worker run gateway code at
once, and a request that waits gives its turn away."""
from __future__ import annotations

import threading

from flask import Flask, g

from gateway.turns import Turns
from tests.helpers import ApiClient


def test_the_wait_for_a_turn_is_part_of_a_requests_latency_and_time_in_flight(make_app):
    """The queueing that makes a storm's p99 shows in hpcgw_http_request_duration_seconds
    and hpcgw_http_requests_in_flight: they start before the request waits for its turn."""
    app, admin = make_app(running_threads=1)
    state = app.extensions["hpc_gateway"]
    metrics = state.metrics
    latency = metrics.latency.labels("/aip/v9.2/queues", "GET")
    before = latency._sum.get()
    with app.test_request_context():
        state.turns.take()
        got = threading.Event()
        waiter = threading.Thread(target=lambda: (ApiClient(app, token=admin.token).get("/queues"), got.set()))
        waiter.start()
        assert not got.wait(0.5)
        in_flight = metrics.in_flight._value.get()
        state.turns.give_back()
        assert got.wait(10)
        waiter.join(10)
    assert in_flight == 1                        # the waiting request (the test's own context is not one)
    assert latency._sum.get() - before >= 0.5


def test_a_turn_is_taken_once_given_back_once_and_lent_while_waiting():
    app = Flask(__name__)
    turns = Turns(1)
    entered = threading.Event()
    with app.test_request_context():
        turns.take()
        turns.take()                              # a second take in the same request: no-op
        assert not turns._sem.acquire(blocking=False)
        with turns.waiting():
            assert g.hpcgw_turn is False
            # another request may run now
            with app.test_request_context():
                turns.take()
                entered.set()
                turns.give_back()
        assert entered.is_set() and g.hpcgw_turn is True
        turns.give_back()
        turns.give_back()                         # once only
    assert turns._sem.acquire(blocking=False) and not turns._sem.acquire(blocking=False)
    assert not Turns(0).limited
    with app.test_request_context():
        Turns(0).take()                           # unlimited: nothing to take
        with Turns(0).waiting():
            pass


def test_requests_beyond_the_turns_wait_and_a_long_poll_lends_its_turn(make_app):
    app, admin = make_app(running_threads=1)
    job_id = admin.submit(command="sleep 60", hold=True)
    other = ApiClient(app, token=admin.token)
    poll_done = threading.Event()

    def long_poll():
        r = ApiClient(app, token=admin.token).get(f"/jobs/{job_id}", params={"wait": "3"})
        assert r.status == 200
        poll_done.set()

    t = threading.Thread(target=long_poll)
    t.start()
    try:
        # With one turn, this answer can only come while the long poll sleeps without it.
        r = other.get(f"/jobs/{job_id}")
        assert r.status == 200 and not poll_done.is_set()
        # A request that holds the turn makes the next one wait for it.
        state = app.extensions["hpc_gateway"]
        with app.test_request_context():
            state.turns.take()
            got = threading.Event()
            waiter = threading.Thread(target=lambda: (other.get("/queues"), got.set()))
            waiter.start()
            assert not got.wait(0.5)
            state.turns.give_back()
            assert got.wait(10)
            waiter.join(10)
    finally:
        admin.post(f"/jobs/{job_id}/kill")
        t.join(30)
    assert poll_done.is_set()


def test_hooks_keep_the_turn_only_where_the_plugin_says_so():
    from gateway.hookspecs import hookimpl
    from gateway.models import Job
    from gateway.plugins import Scheduler

    class Plugin:
        @hookimpl
        def get_job(self, user, job_id):
            return Job(job_id=job_id, name=str(g.get("hpcgw_turn")))

    class SnapshotPlugin(Plugin):
        keeps_turn = frozenset({"get_job"})

    app = Flask(__name__)
    turns = Turns(1)
    app.extensions["hpc_gateway"] = type("S", (), {"turns": turns})()
    for impl, held in ((Plugin(), "False"), (SnapshotPlugin(), "True")):
        with app.test_request_context():
            turns.take()
            job = Scheduler("t", impl).call("get_job", user=None, job_id="1")
            assert job.name == held and g.hpcgw_turn is True     # and back after the call
            turns.give_back()


def test_a_freed_turn_goes_to_the_request_that_waited_longest():
    from gateway.turns import FifoSemaphore
    sem = FifoSemaphore(1)
    assert sem.acquire()
    order: list[int] = []
    gate = threading.Event()

    def wait(i):
        sem.acquire()
        gate.wait(10)
        order.append(i)
        sem.release()

    threads = []
    for i in range(5):
        t = threading.Thread(target=wait, args=(i,))
        t.start()
        threads.append(t)
        for _ in range(500):                      # queued before the next one arrives
            if len(sem._waiters) == i + 1:
                break
            threading.Event().wait(0.01)
        assert len(sem._waiters) == i + 1
    sem.release()
    # The freed turn went to the oldest waiter: a newcomer cannot take it over (a plain
    # threading.Semaphore lets it, which is what made the storm's tail).
    assert not sem.acquire(blocking=False)
    gate.set()
    for t in threads:
        t.join(10)
    assert order == [0, 1, 2, 3, 4]
    assert sem.acquire(blocking=False) and not sem.acquire(blocking=False)
    sem.release()


def test_a_wait_for_a_turn_that_times_out_leaves_the_queue():
    from gateway.turns import FifoSemaphore
    sem = FifoSemaphore(1)
    assert sem.acquire()
    assert sem.acquire(timeout=0.05) is False and not sem._waiters
    sem.release()
    assert sem.acquire(timeout=0.05) is True          # the unit came back, nobody queued for it
    sem.release()
