"""Prometheus metrics (prometheus_client); the names, labels and an example scrape are in
docs/metrics.md.

Two kinds of figures:

- Per app (``Metrics``, one registry per ``create_app``, so tests may build many apps):
  HTTP requests by route (the URL rule, never the raw path) and status, their latency,
  requests in flight, logins by outcome.
- Per process (module level, no app needed): scheduler hook calls (recorded by
  ``gateway.plugins.Scheduler.call``) and what plugins report themselves through
  ``record_command`` / ``command_timer`` and ``set_snapshot_time`` / ``set_snapshot_age``.

Computed at scrape time, never stored: live sessions (from the session store, cached for a
few seconds), the snapshot's age (now minus the newest snapshot time any worker saw), and
``hpcgw_build_info``.

With several gunicorn workers, PROMETHEUS_MULTIPROC_DIR names a directory shared by the
workers (deploy/gunicorn.conf.py sets it up before anything imports prometheus_client); each
worker writes its figures there and /metrics merges them, whichever worker serves it:
counters and histograms are summed, the in-flight gauge is summed over live workers, the
snapshot time is the maximum. Without it each process reports its own figures (fine for one
process and for tests).
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)
# No "<name>_created" series: they double the output, and multiprocess mode has none anyway.
disable_created_metrics()

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Methods a client may send are free text: anything else is counted as "other".
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
# Live sessions are counted at most this often per process (a Redis store is scanned).
SESSIONS_CACHE_SECONDS = 5.0
COMMAND_OUTCOMES = frozenset({"ok", "error", "timeout", "unavailable"})


def multiprocess_mode() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def outcome_for_status(status: int | None) -> str:
    """A bounded outcome label for a hook call that raised a GatewayError with ``status``."""
    if status is None:
        return "error"
    if status == 501:
        return "not_implemented"
    if status == 502:
        return "refused"
    if status == 503:
        return "unavailable"
    if status == 504:
        return "timeout"
    if 400 <= status < 500:
        return "client_error"
    return "error"


# --------------------------------------------------------------------------- per process
PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)
HOOK_CALLS = Counter(
    "hpcgw_scheduler_hook_calls_total",
    "Scheduler plugin hook calls by plugin, hook and outcome "
    "(ok, client_error, not_implemented, refused, unavailable, timeout, error)",
    ["plugin", "hook", "outcome"], registry=PROCESS_REGISTRY)
HOOK_SECONDS = Histogram(
    "hpcgw_scheduler_hook_duration_seconds", "Scheduler plugin hook call latency",
    ["plugin", "hook"], buckets=LATENCY_BUCKETS, registry=PROCESS_REGISTRY)
COMMANDS = Counter(
    "hpcgw_scheduler_commands_total",
    "Scheduler commands a plugin ran, by plugin, command and outcome (ok, error, timeout, unavailable)",
    ["plugin", "command", "outcome"], registry=PROCESS_REGISTRY)
COMMAND_SECONDS = Histogram(
    "hpcgw_scheduler_command_duration_seconds", "Scheduler command latency (transport round trip included)",
    ["plugin", "command"], buckets=LATENCY_BUCKETS, registry=PROCESS_REGISTRY)
CLIENT_TIMEOUTS = Counter(
    "hpcgw_client_timeouts_total",
    "Connections cut for a slow client (gateway/serving.py), by phase: head "
    "(client_header_timeout), body or answer (client_io_timeout)",
    ["phase"], registry=PROCESS_REGISTRY)
SNAPSHOT_TIME = Gauge(
    "hpcgw_scheduler_snapshot_timestamp_seconds",
    "Unix time at which the newest scheduler snapshot served was taken",
    ["plugin"], registry=PROCESS_REGISTRY, multiprocess_mode="max")

_LABEL_RE = re.compile(r"[^A-Za-z0-9_.:-]")


def _label(value, default: str = "unknown", limit: int = 48) -> str:
    text = _LABEL_RE.sub("_", str(value or ""))[:limit]
    return text or default


def _command_label(command) -> str:
    """``squeue`` from "squeue", "/usr/bin/squeue" or an argv list: never arguments."""
    if isinstance(command, (list, tuple)):
        command = command[0] if command else ""
    return _label(os.path.basename(str(command or "")), "other", 40)


def record_client_timeout(phase: str) -> None:
    CLIENT_TIMEOUTS.labels(phase).inc()


def record_hook(plugin: str, hook: str, seconds: float, outcome: str) -> None:
    HOOK_CALLS.labels(_label(plugin), _label(hook), outcome).inc()
    HOOK_SECONDS.labels(_label(plugin), _label(hook)).observe(max(0.0, seconds))


def record_command(plugin: str, command, seconds: float, ok: bool, outcome: str | None = None) -> None:
    """One scheduler command run by a plugin (e.g. ``squeue``), however it went.

    ``command``: the program's name (or the argv: only its basename is used, never its
    arguments, so the label set stays small). ``outcome`` may refine a failure: "timeout"
    or "unavailable"; by default it is "ok" or "error" from ``ok``."""
    if outcome not in COMMAND_OUTCOMES:
        outcome = "ok" if ok else "error"
    name = _command_label(command)
    COMMANDS.labels(_label(plugin), name, outcome).inc()
    COMMAND_SECONDS.labels(_label(plugin), name).observe(max(0.0, seconds))


class command_timer:
    """Time one command; set ``.ok`` inside the block (default False). An exception counts
    as "timeout"/"unavailable" for SchedulerTimeout/SchedulerUnavailable, else "error"::

        with command_timer("slurm_ssm", argv[0]) as timing:
            result = self.transport.run(argv, ...)
            timing.ok = result.returncode == 0
    """

    def __init__(self, plugin: str, command):
        self.plugin, self.command, self.ok = plugin, command, False

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb):
        outcome = None
        if exc is not None:
            self.ok = False
            status = getattr(exc, "status", None)
            outcome = {504: "timeout", 503: "unavailable"}.get(status, "error")
        record_command(self.plugin, self.command, time.perf_counter() - self.start, self.ok, outcome)
        return False


def set_snapshot_time(plugin: str, taken_at: float) -> None:
    """The snapshot just served was taken at ``taken_at`` (Unix time). /metrics reports the
    newest such time over every worker, and the age now - that time."""
    SNAPSHOT_TIME.labels(_label(plugin)).set(float(taken_at))


def set_snapshot_age(plugin: str, seconds: float) -> None:
    """The snapshot just served is ``seconds`` old (the same as set_snapshot_time(now - seconds))."""
    set_snapshot_time(plugin, time.time() - float(seconds))


# --------------------------------------------------------------------------- per app
class Metrics:
    def __init__(self, tokens=None, scheduler: str | None = None, version: str | None = None):
        # One registry per app, so tests may build many apps; in multiprocess mode the
        # values live in files and the registry is rebuilt per scrape.
        self.tokens = tokens               # the TokenManager: its store counts live sessions
        self.scheduler = scheduler
        self.version = version
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("hpcgw_http_requests_total",
                                "HTTP requests by route (URL rule), method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("hpcgw_http_request_duration_seconds", "HTTP request latency by route",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("hpcgw_http_requests_in_flight", "HTTP requests being served",
                               registry=r, multiprocess_mode="livesum")
        self.logins = Counter("hpcgw_logins_total", "Login attempts by outcome (success, failure, limited)",
                              ["outcome"], registry=r)
        # Series that exist from the start at 0, so alerts on rate() or absence work before
        # the first event (made here, in the worker, not at import in gunicorn's master).
        for outcome in ("success", "failure", "limited"):
            self.logins.labels(outcome)
        for phase in ("head", "body", "answer"):
            CLIENT_TIMEOUTS.labels(phase)
        self._sessions_lock = threading.Lock()
        self._sessions: tuple[float, int | None] = (0.0, None)

    # ---------------------------------------------------------------- recording
    def request_started(self) -> None:
        self.in_flight.inc()

    def request_finished(self, rule: str | None, method: str, status: int, seconds: float | None) -> None:
        route = rule if rule is not None else "unmatched"
        method = method if method in METHODS else "other"
        self.requests.labels(route, method, str(status)).inc()
        if seconds is not None:
            self.latency.labels(route, method).observe(seconds)

    def request_done(self) -> None:
        self.in_flight.dec()

    def login(self, outcome: str) -> None:
        self.logins.labels(outcome).inc()

    def command(self, plugin: str, command: str, seconds: float, ok: bool) -> None:
        record_command(plugin, command, seconds, ok)

    # ---------------------------------------------------------------- scrape
    def live_sessions(self) -> int | None:
        """Sessions active within the idle timeout (the store is asked at most every few s)."""
        if self.tokens is None:
            return None
        now = time.monotonic()
        expires, value = self._sessions
        if now < expires:
            return value
        # One counter at a time; a scrape that arrives meanwhile answers the last count.
        if not self._sessions_lock.acquire(blocking=False):
            return value
        try:
            expires, value = self._sessions
            if now < expires:
                return value
            try:
                value = int(self.tokens.store.live_count(time.time(), self.tokens.timeout))
            except Exception:          # noqa: BLE001 - a store outage must not break /metrics
                log.warning("metrics: cannot count live sessions", exc_info=True)
                value = None
            self._sessions = (now + SESSIONS_CACHE_SECONDS, value)
            return value
        finally:
            self._sessions_lock.release()

    def _scrape_time_families(self, stored: list) -> list:
        families = []
        if self.scheduler is not None:
            info = GaugeMetricFamily("hpcgw_build_info", "Gateway version and scheduler backend (always 1)",
                                     labels=["version", "scheduler"])
            info.add_metric([self.version or "unknown", self.scheduler], 1)
            families.append(info)
        sessions = self.live_sessions()
        if sessions is not None:
            families.append(GaugeMetricFamily("hpcgw_sessions_live",
                                              "Sessions active within the idle timeout (from the session store)",
                                              value=sessions))
        age = GaugeMetricFamily("hpcgw_scheduler_snapshot_age_seconds",
                                "Seconds since the newest scheduler snapshot served was taken",
                                labels=["plugin"])
        now = time.time()
        for family in stored:
            if family.name == "hpcgw_scheduler_snapshot_timestamp_seconds":
                newest: dict[str, float] = {}
                for sample in family.samples:
                    plugin = sample.labels.get("plugin", "unknown")
                    newest[plugin] = max(newest.get(plugin, 0.0), sample.value)
                for plugin, taken in sorted(newest.items()):
                    if taken > 0:
                        age.add_metric([plugin], max(0.0, now - taken))
        if age.samples:
            families.append(age)
        return families

    def collect(self) -> list:
        """Every metric family of this process (or of every worker, in multiprocess mode)."""
        if multiprocess_mode():
            from prometheus_client import multiprocess
            stored = sorted(multiprocess.MultiProcessCollector(None).collect(), key=lambda f: f.name)
        else:
            stored = list(self.registry.collect()) + list(PROCESS_REGISTRY.collect())
        return stored + self._scrape_time_families(stored)

    def render(self) -> tuple[bytes, str]:
        families = self.collect()

        class _Families:
            @staticmethod
            def collect():
                return iter(families)

        return generate_latest(_Families()), CONTENT_TYPE_LATEST


def metrics_view():
    """GET /metrics: the Prometheus text format, with its versioned Content-Type."""
    from flask import Response, current_app
    body, content_type = current_app.extensions["hpc_gateway"].metrics.render()
    return Response(body, status=200, content_type=content_type)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False
