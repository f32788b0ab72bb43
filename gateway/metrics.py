"""Prometheus metrics (prometheus_client).

With several gunicorn workers, PROMETHEUS_MULTIPROC_DIR must name an empty directory shared
by the workers (deploy/gunicorn.conf.py sets it up); /metrics then aggregates all workers.
Without it, each process reports its own figures (fine for one process and for tests).
"""
from __future__ import annotations

import os
import time

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self):
        # One registry per app, so tests may build many apps; in multiprocess mode the
        # values live in files and the registry is rebuilt per scrape.
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("hpcgw_http_requests_total", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("hpcgw_http_request_seconds", "HTTP request latency by route",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.commands = Counter("hpcgw_scheduler_commands_total", "Scheduler commands by plugin, command and outcome",
                                ["plugin", "command", "outcome"], registry=r)
        self.command_latency = Histogram("hpcgw_scheduler_command_seconds", "Scheduler command latency",
                                         ["plugin", "command"], buckets=LATENCY_BUCKETS, registry=r)
        self.logins = Counter("hpcgw_logins_total", "Login attempts by outcome", ["outcome"], registry=r)
        self.snapshot_age = Gauge("hpcgw_snapshot_age_seconds", "Age of the scheduler snapshot served",
                                  ["plugin"], registry=r, multiprocess_mode="min")
        self.live_sessions = Gauge("hpcgw_live_sessions", "Sessions active within the idle timeout",
                                   registry=r, multiprocess_mode="max")

    def login(self, outcome: str) -> None:
        self.logins.labels(outcome).inc()

    def command(self, plugin: str, command: str, seconds: float, ok: bool) -> None:
        self.commands.labels(plugin, command, "ok" if ok else "error").inc()
        self.command_latency.labels(plugin, command).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False
