"""The load generator bench/ scripts share: N concurrent HTTP clients for D seconds.

Each client is an asyncio task with its own aiohttp session holding one keep-alive
connection (as N separate programs would), sending one request after the other (closed
loop, no pause unless ``think`` is given). A request is whatever ``request_for(client, n)``
returns, so the same generator drives the gateway and slurmrestd alike. When the time is up
no new request starts; those in flight are waited for (each bounded by ``timeout``) and
``elapsed`` runs until the last answer, so a server slower than the run still gets its
answers counted instead of cut off.

    from bench.loadgen import Request, run
    res = run(64, 15, lambda c, n: Request("GET", url, headers))
    res.summary()   # requests, ok, req_per_s, p50_ms, p90_ms, p99_ms, max_ms, errors, ...

An error is anything but an expected status (200 unless told): another status, a timeout,
a refused or reset connection. The generator's own CPU time is reported too: on a small
machine it competes with the servers it measures.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Request:
    method: str
    url: str
    headers: dict = field(default_factory=dict)
    json: object = None


@dataclass
class Result:
    clients: int
    duration: float              # asked for
    elapsed: float = 0.0         # first request sent .. last answer received
    latencies: list = field(default_factory=list)     # seconds, answered requests (any status)
    ok: int = 0
    errors: Counter = field(default_factory=Counter)
    cpu_s: float = 0.0           # this process's CPU time during the run

    def summary(self) -> dict:
        lat = sorted(self.latencies)
        return {
            "clients": self.clients, "duration_s": round(self.duration, 1), "elapsed_s": round(self.elapsed, 2),
            "requests": len(lat) + sum(v for k, v in self.errors.items() if not k.startswith("HTTP")),
            "ok": self.ok, "req_per_s": round(self.ok / self.elapsed, 2) if self.elapsed else 0.0,
            "p50_ms": ms(percentile(lat, 50)), "p90_ms": ms(percentile(lat, 90)),
            "p99_ms": ms(percentile(lat, 99)), "max_ms": ms(lat[-1] if lat else None),
            "errors": sum(self.errors.values()), "errors_by_kind": dict(self.errors),
            "loadgen_cpu_s": round(self.cpu_s, 2),
        }


def percentile(sorted_values: list, q: float):
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, -(-len(sorted_values) * q // 100) - 1))
    return sorted_values[int(k)]


def ms(seconds) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


async def _client(index: int, request_for, stop_at: float, res: Result, ok_status, think: float,
                  timeout: float, on_response, budget: list) -> None:
    import aiohttp
    connector = aiohttp.TCPConnector(limit=1, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout),
                                     skip_auto_headers=("User-Agent",)) as session:
        n = 0
        while time.monotonic() < stop_at:
            if budget[0] is not None:
                if budget[0] <= 0:
                    break
                budget[0] -= 1
            req = request_for(index, n)
            n += 1
            t0 = time.perf_counter()
            try:
                async with session.request(req.method, req.url, headers=req.headers, json=req.json) as r:
                    body = await r.read()
                    status = r.status
            except TimeoutError:
                res.errors["timeout"] += 1
                continue
            except aiohttp.ClientError as exc:
                res.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.05)       # a refused connection must not spin
                continue
            res.latencies.append(time.perf_counter() - t0)
            if status in ok_status:
                res.ok += 1
            else:
                res.errors[f"HTTP {status}"] += 1
            if on_response is not None:
                on_response(index, req, status, body)
            if think:
                await asyncio.sleep(think)


async def _run(clients: int, duration: float, request_for, ok_status, think, timeout, on_response,
               max_requests) -> Result:
    res = Result(clients, duration)
    budget = [max_requests]
    start = time.monotonic()
    stop_at = start + duration
    await asyncio.gather(*(_client(i, request_for, stop_at, res, ok_status, think, timeout, on_response, budget)
                           for i in range(clients)))
    res.elapsed = time.monotonic() - start       # until the last answer (or give-up)
    return res


def run(clients: int, duration: float, request_for: Callable[[int, int], Request], *, ok_status=(200,),
        think: float = 0.0, timeout: float = 60.0, max_requests: int | None = None,
        on_response: Callable[[int, Request, int, bytes], None] | None = None) -> Result:
    """Drive ``clients`` concurrent clients for ``duration`` seconds (or until ``max_requests``
    have been sent, whichever comes first); see the module doc."""
    t0 = os.times()
    res = asyncio.run(_run(clients, duration, request_for, tuple(ok_status), think, timeout, on_response,
                           max_requests))
    t1 = os.times()
    res.cpu_s = (t1.user - t0.user) + (t1.system - t0.system)
    return res


def machine_info() -> dict:
    """What the figures ran on: CPUs, CPU model, memory, kernel, Slurm, Python."""
    import platform
    import shutil
    import subprocess

    def first(path, key):
        try:
            with open(path) as fh:
                for line in fh:
                    if line.startswith(key):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return None

    mem_kib = first("/proc/meminfo", "MemTotal")
    slurm = None
    if shutil.which("sinfo"):
        try:
            slurm = subprocess.run(["sinfo", "-V"], capture_output=True, text=True, timeout=10, check=False).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
    return {"nproc": os.cpu_count(), "cpu_model": first("/proc/cpuinfo", "model name"),
            "mem_gib": round(int(mem_kib.split()[0]) / 1024 ** 2, 1) if mem_kib else None,
            "kernel": platform.release(), "os": _os_name(),
            "python": platform.python_version(), "slurm": slurm}


def _os_name():
    try:
        with open("/etc/os-release") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return None
