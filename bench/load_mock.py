"""500 concurrent clients against the gateway on the mock backend, for 30 s.

The gateway runs as deployed (``gunicorn -c deploy/gunicorn.conf.py``: gthread workers,
its default worker and thread counts, multiprocess metrics) on a free loopback port. Each
client is an asyncio task with its own keep-alive connection (aiohttp) that polls, one
request after the other with no pause: its own job's detail (GET /jobs/{id}), and every
fourth request its job list (GET /jobs?limit=20). Clients are spread over 20 users, each
with one held job. Printed: requests, req/s, p50/p90/p99/max latency, errors (any answer but
200, or no answer in 30 s), and the gateway's own count of what it served; written as JSON
with --json.

    .venv/bin/python bench/load_mock.py [--clients 500] [--duration 30] [--think 0] [--json out.json]

tests/reliability/test_load.py runs the same and asserts 0 errors.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

USERS = 20
REQUEST_TIMEOUT = 30.0


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


async def _client(session, base: str, token: str, job_id: str, stop_at: float, think: float,
                  latencies: list, errors: Counter, routes: Counter) -> None:
    import aiohttp
    headers = {"Authorization": f"Bearer {token}"}
    n = 0
    while time.monotonic() < stop_at:
        if n % 4 == 3:
            url, route = f"{base}/jobs?limit=20", "list"
        else:
            url, route = f"{base}/jobs/{job_id}", "detail"
        n += 1
        t0 = time.perf_counter()
        try:
            async with session.get(url, headers=headers) as r:
                await r.read()
                status = r.status
        except asyncio.TimeoutError:
            errors["timeout"] += 1
            continue
        except aiohttp.ClientError as exc:
            errors[type(exc).__name__] += 1
            continue
        latencies.append(time.perf_counter() - t0)
        routes[route] += 1
        if status != 200:
            errors[f"HTTP {status}"] += 1
        if think:
            await asyncio.sleep(think)


async def _run(base: str, clients: list[tuple[str, str]], duration: float, think: float) -> dict:
    import aiohttp
    latencies: list[float] = []
    errors: Counter = Counter()
    routes: Counter = Counter()
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, force_close=False, enable_cleanup_closed=True)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.monotonic()
        stop_at = start + duration
        await asyncio.gather(*(_client(session, base, token, job_id, stop_at, think, latencies, errors, routes)
                               for token, job_id in clients))
        elapsed = time.monotonic() - start
    latencies.sort()
    done = len(latencies) + sum(v for k, v in errors.items() if not k.startswith("HTTP"))
    return {
        "clients": len(clients), "duration_s": round(elapsed, 1), "think_s": think,
        "requests": done, "answered": len(latencies), "req_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1), "p90_ms": round(percentile(latencies, 90) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1), "max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
        "errors": sum(errors.values()), "errors_by_kind": dict(errors), "by_route": dict(routes),
    }


def prepare(gw, users: int = USERS) -> list[tuple[str, str]]:
    """Log every user in once and give each a held job: (token, job id) per user."""
    out = []
    for i in range(users):
        user = f"load{i:02d}"
        r = gw.post("/jobs", user, json={"command": "true", "name": f"load-{user}", "hold": True})
        assert r.status_code == 200, r.text
        out.append((gw.token(user), r.json()["data"]["job"]["jobId"]))
    return out


def run_load(gw, n_clients: int = 500, duration: float = 30.0, think: float = 0.0) -> dict:
    """Drive ``gw`` (a tests.reliability.live.LiveGateway on the mock) and return the figures."""
    from tests.reliability.live import sample
    per_user = prepare(gw, len([u for u in gw.users if u.startswith("load")]) or USERS)
    clients = [per_user[i % len(per_user)] for i in range(n_clients)]
    before = gw.scrape()
    result = asyncio.run(_run(gw.api, clients, duration, think))
    after = gw.scrape()

    def served(route: str) -> float:
        return sum(v - before.get(k, 0.0) for k, v in after.items()
                   if k[0] == "hpcgw_http_requests_total" and dict(k[1]).get("route") == route)

    result["gateway_served"] = {"detail": served("/aip/v9.2/jobs/<job_id>"), "list": served("/aip/v9.2/jobs")}
    result["gateway_5xx"] = sum(v - before.get(k, 0.0) for k, v in after.items()
                                if k[0] == "hpcgw_http_requests_total" and dict(k[1])["status"].startswith("5"))
    hist = "hpcgw_http_request_duration_seconds"
    result["gateway_mean_ms"] = round(1000 * (sample(after, hist + "_sum", route="/aip/v9.2/jobs/<job_id>", method="GET")
                                              - sample(before, hist + "_sum", route="/aip/v9.2/jobs/<job_id>", method="GET"))
                                      / max(1.0, result["gateway_served"]["detail"]), 2)
    result["workers"] = len(gw.worker_pids())
    result["threads"] = gw.threads_per_worker
    return result


def machine() -> str:
    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            mem = f", {int(fh.readline().split()[1]) // 1024 // 1024} GiB"
    except OSError:
        pass
    return f"{platform.node()}: {os.cpu_count()} CPUs{mem}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def report(result: dict) -> str:
    return (f"{result['clients']} clients, {result['duration_s']} s, {result['workers']} workers x "
            f"{result['threads']} threads: {result['answered']} answers, {result['req_per_s']} req/s, "
            f"p50 {result['p50_ms']} ms, p90 {result['p90_ms']} ms, p99 {result['p99_ms']} ms, "
            f"max {result['max_ms']} ms, errors {result['errors']} {result['errors_by_kind'] or ''}; "
            f"gateway served {int(result['gateway_served']['detail'])} details + "
            f"{int(result['gateway_served']['list'])} lists, mean {result['gateway_mean_ms']} ms in Flask")


def users_for_load(n: int = USERS) -> dict:
    return {f"load{i:02d}": False for i in range(n)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--think", type=float, default=0.0, help="seconds a client waits between requests")
    parser.add_argument("--workers", type=int, default=None, help="default: deploy/gunicorn.conf.py's")
    parser.add_argument("--threads", type=int, default=None, help="default: deploy/gunicorn.conf.py's")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    from tests.reliability.live import LiveGateway
    with tempfile.TemporaryDirectory(prefix="hpcgw-load-") as tmp:
        with LiveGateway(Path(tmp), workers=args.workers, threads=args.threads, users=users_for_load(),
                         scheduler={"backend": "mock", "options": {"state_dir": f"{tmp}/mock", "slots": 4}}) as gw:
            result = run_load(gw, args.clients, args.duration, args.think)
    result["machine"] = machine()
    print(report(result))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
