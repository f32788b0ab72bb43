"""GET /health needs no token: callers close together share one scheduler check."""
from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest

from tests.helpers import ApiClient


@pytest.mark.parametrize("ping_seconds", [0.3, 1.5])
def test_concurrent_health_calls_share_one_scheduler_check(make_app, ping_seconds):
    """Each /health asked the scheduler (scontrol ping; over SSM a Run Command): an
    unauthenticated flood was a flood of commands. Now callers within a second of a check
    share it, and those arriving during a check wait for it."""
    app, _ = make_app()
    scheduler = app.extensions["hpc_gateway"].scheduler
    real_call, calls, lock = scheduler.call, [], threading.Lock()

    def counting_call(hook, *args, **kwargs):
        if hook == "health":
            with lock:
                calls.append(time.monotonic())
            time.sleep(ping_seconds)            # a slow ping (1.5 s: longer than the sharing)
        return real_call(hook, *args, **kwargs)

    scheduler.call = counting_call
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda _: ApiClient(app).get("/health"), range(20)))
    # (all 20 arrive while the first check runs: its answer serves them, however long it took)
    assert [a.status for a in answers] == [200] * 20
    assert all(a.body["data"]["health"]["scheduler"]["ok"] for a in answers)
    assert len(calls) == 1, calls
    time.sleep(1.1)                             # the shared answer is at most a second old
    assert ApiClient(app).get("/health").status == 200 and len(calls) == 2
