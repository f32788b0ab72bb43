"""Turns: at most ``running_threads`` requests of a worker run gateway code at once.

gunicorn's gthread workers give every request its own thread, and a worker needs many
threads for the requests that wait (long polls, scheduler commands, file transfers). But
when more than a few threads of one process want the CPU, Python's GIL hands it from one
to the next at a cost that grows with their number: on this project's 2-CPU bench machine,
200 clients asking for job details got 1,270 answers/s from 4 workers x 32 threads and
1,560 with 4 turns per worker (bench/README.md). So a request takes a turn before the
gateway's code runs and gives it back when its answer is ready; whatever waits (the long
poll's sleeps, every scheduler hook but the snapshot reads, file transfers) gives its turn
away for the wait. 0 turns: no limit.

Turns are handed out first come, first served: a freed turn goes straight to the request
that has waited longest. (threading.Semaphore lets a newcomer take a turn that a woken
waiter has not yet picked up, so under a polling storm some requests waited many rounds:
the p99 was made of them.)
"""
from __future__ import annotations

import threading
from collections import Counter, deque
from contextlib import contextmanager

from flask import g, has_request_context


class FifoSemaphore:
    """A counting semaphore that hands a released unit to the oldest waiter directly."""

    def __init__(self, count: int):
        self._lock = threading.Lock()
        self._free = count
        self._waiters: deque[threading.Lock] = deque()

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return True
            if not blocking:
                return False
            baton = threading.Lock()
            baton.acquire()
            self._waiters.append(baton)
        # Released by release(): the unit is then ours (_free untouched).
        if baton.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            return True
        with self._lock:
            try:
                self._waiters.remove(baton)
                return False
            except ValueError:        # handed over just as the wait ended: keep it
                return True

    def release(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._free += 1


class Turns:
    def __init__(self, count: int):
        self._sem = FifoSemaphore(count) if count > 0 else None

    @property
    def limited(self) -> bool:
        return self._sem is not None

    def take(self) -> None:
        """At the start of a request (before anything else runs)."""
        if self._sem is not None and not g.get("hpcgw_turn"):
            self._sem.acquire()
            g.hpcgw_turn = True

    def give_back(self) -> None:
        """When the answer is ready (after_request) or the request ends (teardown); once."""
        if self._sem is not None and has_request_context() and g.pop("hpcgw_turn", False):
            self._sem.release()

    @contextmanager
    def waiting(self):
        """Around a wait inside a request: the turn goes to another request meanwhile."""
        if self._sem is None or not has_request_context() or not g.get("hpcgw_turn"):
            yield
            return
        g.hpcgw_turn = False
        self._sem.release()
        try:
            yield
        finally:
            self._sem.acquire()
            g.hpcgw_turn = True


NO_TURNS = Turns(0)


def current_turns() -> Turns:
    """The app's Turns inside a request, else none (CLI, background threads, tests)."""
    if not has_request_context():
        return NO_TURNS
    from flask import current_app
    state = current_app.extensions.get("hpc_gateway")
    return getattr(state, "turns", NO_TURNS) if state is not None else NO_TURNS


class PerUserSlots:
    """At most ``limit`` requests of one kind per user at once in this process, each holding
    one of its threads while it waits (long polls, file operations): one user must not hold
    them all, or logins, /health and everybody else's requests queue behind."""

    def __init__(self):
        self._held: Counter = Counter()
        self._lock = threading.Lock()

    def take(self, user: str, limit: int) -> bool:
        """A slot for ``user`` when fewer than ``limit`` are held (0: no limit)."""
        with self._lock:
            if limit and self._held[user] >= limit:
                return False
            self._held[user] += 1
            return True

    def give_back(self, user: str) -> None:
        with self._lock:
            self._held[user] -= 1
            if self._held[user] <= 0:
                del self._held[user]

    def held(self) -> dict[str, int]:
        """The slots held now, by user (none held: empty)."""
        with self._lock:
            return dict(self._held)
