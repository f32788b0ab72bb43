"""What do sessions cost per request?

Measures GET /jobs/{id} on the mock backend with a real session token (signature check,
session-store read, throttled last-activity write) against the same route with
authentication short-circuited (the user set directly), for the SQLite and the Redis store.
In-process (Flask test client), so only the gateway's own work is measured.

    .venv/bin/python bench/sessions.py [-n 3000]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from flask import g  # noqa: E402

from gateway import create_app  # noqa: E402
from gateway.models import User  # noqa: E402


def measure(client, path, headers, n):
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get(path, headers=headers)
        lat.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.get_json()
    lat.sort()
    return {"req_s": n / sum(lat), "p50_ms": statistics.median(lat) * 1000, "p99_ms": lat[int(n * 0.99) - 1] * 1000}


def run(store_kind, n):
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        cfg = {"work_dir": tmp, "log_level": "error",
               "scheduler": {"backend": "mock", "options": {"state_dir": os.path.join(tmp, "mock")}}}
        if store_kind == "redis":
            from tests.support.redis_server import redis_server
            cfg["session_store"] = stack.enter_context(redis_server())
        app = create_app(cfg)
        client = app.test_client()
        password = open(os.path.join(tmp, "initial-admin-password")).read().strip()
        token = client.post("/aip/v9.2/login", json={"username": "admin", "password": password}).get_json()["data"]["token"]["token"]
        auth = {"Authorization": f"Bearer {token}"}
        jid = client.post("/aip/v9.2/jobs", json={"command": "true", "hold": True}, headers=auth).get_json()["data"]["job"]["jobId"]
        path = f"/aip/v9.2/jobs/{jid}"
        measure(client, path, auth, 200)                       # warm up
        with_sessions = measure(client, path, auth, n)
        # The same route with authentication short-circuited.
        funcs = app.before_request_funcs[None]
        original = list(funcs)

        def no_auth():
            g.t0 = time.perf_counter()
            g.user = User(name="admin", is_admin=True)
        funcs[:] = [no_auth]
        measure(client, path, {}, 200)
        without = measure(client, path, {}, n)
        funcs[:] = original
        return {"store": store_kind, "with_sessions": with_sessions, "without_auth": without,
                "ratio": with_sessions["req_s"] / without["req_s"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=3000)
    args = ap.parse_args()
    results = [run("sqlite", args.n)]
    try:
        results.append(run("redis", args.n))
    except BaseException as exc:  # noqa: BLE001 - redis-server may be missing on a laptop
        print(f"redis: skipped ({exc})", file=sys.stderr)
    print(f"{'store':8} {'with sessions req/s':>20} {'no auth req/s':>14} {'ratio':>6} {'p50 ms (with/without)':>22}")
    for r in results:
        print(f"{r['store']:8} {r['with_sessions']['req_s']:20.0f} {r['without_auth']['req_s']:14.0f} "
              f"{r['ratio']:6.2f} {r['with_sessions']['p50_ms']:10.2f} / {r['without_auth']['p50_ms']:.2f}")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
