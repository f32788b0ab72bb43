"""The HA layout for real, and a bounded client load to run against it.

:class:`HACluster`: redis-server (no persistence) + N gunicorn replicas (deploy/gunicorn.conf.py,
one shared secret file, the Redis session store, one users file, one mock scheduler state
directory: the mock is a one-host scheduler, so the replicas share its SQLite state) + NGINX
(deploy/nginx/hpc-gateway-ha.conf rendered for them), all on 127.0.0.1.

:func:`run_load`: client threads doing logins, keyed submissions and polls through NGINX for
a fixed time while ``events`` (e.g. SIGKILL a replica, restart it) run on schedule. Clients
behave as a careful client should: a submission is retried with the same Idempotency-Key on
a connection error, a 5xx or a 409 "in progress"; a 409 naming candidate jobs is settled by
looking at them (the client names each job after its key). Used by tests/deploy/test_ha.py
and bench/ha.py.
"""
from __future__ import annotations

import random
import secrets
import sqlite3
import statistics
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import requests

from gateway.auth.users_file import UsersFile

from .servers import PREFIX, GunicornReplica, Nginx, Processes, RedisServer, free_port, render, wait_until, \
    write_config

JOB_PREFIX = "ha-"


class HACluster:
    def __init__(self, procs: Processes, tmp: Path, *, replicas: int = 3, workers: int = 2, threads: int = 16,
                 pending_seconds: float = 3, users: tuple[str, ...] = ("alice", "bob"), slots: int = 8,
                 settings: dict | None = None):
        self.tmp = tmp
        shared = tmp / "shared"
        shared.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(procs, tmp / "redis")
        # What the installer does on the first host, then copies to the others: one secret.
        self.secret_file = shared / "secret.key"
        self.secret_file.write_text(secrets.token_urlsafe(48) + "\n")
        self.secret_file.chmod(0o600)
        self.users_file = shared / "users.yaml"
        self.passwords = {name: secrets.token_urlsafe(12) for name in users}
        store = UsersFile(str(self.users_file))
        for name, password in self.passwords.items():
            store.set_password(name, password)
        self.mock_dir = shared / "mock"
        self.replicas: list[GunicornReplica] = []
        for i in range(replicas):
            port = free_port()
            config = write_config(
                tmp / f"replica-{i}" / "gateway.yaml", bind="127.0.0.1", http_port=port,
                work_dir=str(tmp / f"replica-{i}" / "work"), secret_file=str(self.secret_file),
                session_store=self.redis.url, auth={"users_file": str(self.users_file)},
                log_level="info", trusted_proxies=1, idempotency_pending_seconds=pending_seconds,
                scheduler={"backend": "mock", "options": {"state_dir": str(self.mock_dir), "slots": slots}},
                **(settings or {}))
            self.replicas.append(GunicornReplica(procs, f"replica-{i}", config, tmp / f"replica-{i}" / "log",
                                                 workers=workers, threads=threads))
        for replica in self.replicas:
            replica.start(wait=False)
        for replica in self.replicas:
            replica.wait_healthy()
        self.port = free_port()
        site = render("hpc-gateway-ha.conf", *[a for r in self.replicas for a in ("--replica", f"127.0.0.1:{r.port}")],
                      "--listen", f"127.0.0.1:{self.port}", "--fail-timeout", "5s")
        self.nginx = Nginx(procs, tmp / "nginx", site)
        wait_until(lambda: requests.get(self.base + PREFIX + "/health", timeout=5).status_code == 200, 20,
                   "NGINX to answer /health", proc=self.nginx.proc)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def scheduler_jobs(self) -> dict[str, list[str]]:
        """name -> job ids, read straight from the mock scheduler's own state."""
        db = sqlite3.connect(f"file:{self.mock_dir / 'jobs.sqlite'}?mode=ro", uri=True, timeout=30)
        try:
            rows = db.execute("SELECT id, name FROM jobs WHERE name LIKE ?", (JOB_PREFIX + "%",)).fetchall()
        finally:
            db.close()
        jobs: dict[str, list[str]] = defaultdict(list)
        for job_id, name in rows:
            jobs[name].append(str(job_id))
        return dict(jobs)


# ----------------------------------------------------------------------------- load
@dataclass
class Sample:
    kind: str           # login, submit, get_job, long_poll, list_jobs
    method: str
    status: int | None  # None: no HTTP answer (connection error, timeout)
    error: str | None
    seconds: float
    at: float           # seconds since the load started


@dataclass
class Submission:
    key: str
    name: str
    job_id: str | None = None
    attempts: int = 0
    outcome: str = "pending"   # ok, adopted (settled from a 409 naming it), failed
    statuses: list = field(default_factory=list)


@dataclass
class LoadResult:
    samples: list[Sample]
    submissions: list[Submission]
    early_tokens: list[tuple[str, str]]     # (user, token) issued before the first event
    duration: float
    events: list[tuple[float, str]]

    def summary(self) -> dict:
        by_kind: dict[str, list[Sample]] = defaultdict(list)
        for s in self.samples:
            by_kind[s.kind].append(s)
        kinds = {}
        for kind, samples in sorted(by_kind.items()):
            ms = sorted(s.seconds * 1000 for s in samples)
            answers = Counter(str(s.status) if s.status is not None else s.error for s in samples)
            kinds[kind] = {"requests": len(samples), "answers": dict(sorted(answers.items())),
                           "p50_ms": round(statistics.median(ms), 1), "p99_ms": round(_pct(ms, 99), 1),
                           "max_ms": round(ms[-1], 1)}
        outcomes = Counter(s.outcome for s in self.submissions)
        return {
            "duration_s": round(self.duration, 1),
            "requests": len(self.samples),
            "requests_per_s": round(len(self.samples) / self.duration, 1),
            "by_kind": kinds,
            "failed_gets": sum(1 for s in self.samples if s.method == "GET" and s.status != 200),
            "submissions": len(self.submissions),
            "submission_outcomes": dict(outcomes),
            "submissions_retried": sum(1 for s in self.submissions if s.attempts > 1),
            "events": [f"{t:.1f}s {what}" for t, what in self.events],
        }


def _pct(sorted_values, pct):
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, int(round(pct / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]


class _Client:
    def __init__(self, base: str, user: str, password: str, t0: float, samples: list, lock: threading.Lock):
        self.base, self.user, self.password, self.t0 = base + PREFIX, user, password, t0
        self.samples, self.lock = samples, lock
        self.http = requests.Session()
        self.token: str | None = None
        self.jobs: list[tuple[str, str]] = []        # (job id, last seen state)

    def _call(self, kind, method, path, **kw):
        start = time.perf_counter()
        status, error, response = None, None, None
        try:
            response = self.http.request(method, self.base + path, timeout=30, **kw)
            status = response.status_code
        except requests.RequestException as exc:
            error = type(exc).__name__
        sample = Sample(kind, method, status, error, time.perf_counter() - start, time.monotonic() - self.t0)
        with self.lock:
            self.samples.append(sample)
        return response

    def _auth(self):
        return {"Authorization": f"Bearer {self.token}"}

    def login(self, deadline: float) -> str:
        """POST /login is safe to repeat: retried on a connection error or 5xx."""
        while True:
            r = self._call("login", "POST", "/login", json={"username": self.user, "password": self.password})
            if r is not None and r.status_code == 200:
                self.token = r.json()["data"]["token"]["token"]
                return self.token
            if r is not None and r.status_code < 500 or time.monotonic() > deadline:
                raise AssertionError(f"login of {self.user} failed: {r.status_code if r is not None else 'no answer'} "
                                     f"{r.text[:300] if r is not None else ''}")
            time.sleep(0.1)

    def submit(self, submission: Submission, deadline: float) -> None:
        body = {"command": "true", "name": submission.name}
        headers = {**self._auth(), "Idempotency-Key": submission.key}
        while True:
            submission.attempts += 1
            r = self._call("submit", "POST", "/jobs", json=body, headers=headers)
            submission.statuses.append(r.status_code if r is not None else "no answer")
            if r is not None and r.status_code == 200:
                submission.job_id = r.json()["data"]["job"]["jobId"]
                submission.outcome = "ok"
                return
            if r is not None and r.status_code == 409:
                errors = (r.json() or {}).get("errors") or {}
                candidates = errors.get("candidates")
                if candidates:
                    # The gateway cannot tell; the client can: its job carries the key as its name.
                    mine = [c for c in candidates if self._job_name(c) == submission.name]
                    if len(mine) == 1:
                        submission.job_id, submission.outcome = mine[0], "adopted"
                        return
                    submission.outcome = "failed"
                    return
                time.sleep(min(float(r.headers.get("Retry-After", "1")), 1.0))
            elif r is not None and r.status_code < 500:
                submission.outcome = "failed"
                return
            else:
                time.sleep(0.2)
            if time.monotonic() > deadline:
                submission.outcome = "failed"
                return

    def _job_name(self, job_id):
        r = self._call("get_job", "GET", f"/jobs/{job_id}", headers=self._auth())
        return r.json()["data"]["job"]["name"] if r is not None and r.status_code == 200 else None

    def get_job(self, long_poll: bool) -> None:
        if not self.jobs:
            return self.list_jobs()
        i = random.randrange(len(self.jobs))
        job_id, state = self.jobs[i]
        params = {"wait": 1, "since": state} if long_poll else None
        r = self._call("long_poll" if long_poll else "get_job", "GET", f"/jobs/{job_id}", params=params,
                       headers=self._auth())
        if r is not None and r.status_code == 200:
            self.jobs[i] = (job_id, r.json()["data"]["job"]["state"])

    def list_jobs(self) -> None:
        self._call("list_jobs", "GET", "/jobs", params={"limit": 20}, headers=self._auth())


def run_load(base: str, passwords: dict[str, str], *, threads: int = 8, duration: float = 20,
             events: list[tuple[float, str, callable]] = (), seed: int = 7) -> LoadResult:
    """Drive the cluster through ``base`` for ``duration`` s; run ``events`` (at, label, fn) meanwhile."""
    samples: list[Sample] = []
    submissions: list[Submission] = []
    early_tokens: list[tuple[str, str]] = []
    lock = threading.Lock()
    t0 = time.monotonic()
    end = t0 + duration
    first_event = min((at for at, _, _ in events), default=duration)
    users = sorted(passwords)
    failures: list[BaseException] = []

    def worker(n: int):
        rnd = random.Random(seed + n)
        user = users[n % len(users)]
        client = _Client(base, user, passwords[user], t0, samples, lock)
        try:
            token = client.login(time.monotonic() + 30)
            with lock:
                early_tokens.append((user, token))
            while time.monotonic() < end:
                x = rnd.random()
                if x < 0.15:
                    key = uuid.uuid4().hex
                    sub = Submission(key=key, name=f"{JOB_PREFIX}{key}")
                    with lock:
                        submissions.append(sub)
                    client.submit(sub, time.monotonic() + 60)
                    if sub.job_id:
                        client.jobs.append((sub.job_id, "PENDING"))
                elif x < 0.50:
                    client.get_job(long_poll=False)
                elif x < 0.60:
                    client.get_job(long_poll=True)
                elif x < 0.92:
                    client.list_jobs()
                else:
                    token = client.login(time.monotonic() + 30)
                    if time.monotonic() - t0 < first_event:
                        with lock:
                            early_tokens.append((user, token))
        except BaseException as exc:       # noqa: BLE001 - reported by the caller
            failures.append(exc)

    pool = [threading.Thread(target=worker, args=(n,), name=f"load-{n}", daemon=True) for n in range(threads)]
    for t in pool:
        t.start()
    done_events = []
    for at, label, fn in sorted(events, key=lambda e: e[0]):
        delay = t0 + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        fn()
        done_events.append((time.monotonic() - t0, label))
    for t in pool:
        t.join(duration + 120)
    if failures:
        raise failures[0]
    if any(t.is_alive() for t in pool):
        raise AssertionError("load threads did not finish in time")
    return LoadResult(samples, submissions, early_tokens, time.monotonic() - t0, done_events)


def format_summary(summary: dict) -> str:
    lines = [f"HA load: {summary['requests']} requests in {summary['duration_s']} s "
             f"({summary['requests_per_s']}/s); events: {', '.join(summary['events']) or 'none'}"]
    lines.append(f"{'kind':<10} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  answers")
    for kind, k in summary["by_kind"].items():
        answers = ", ".join(f"{a}: {n}" for a, n in k["answers"].items())
        lines.append(f"{kind:<10} {k['requests']:>8} {k['p50_ms']:>8} {k['p99_ms']:>8} {k['max_ms']:>8}  {answers}")
    lines.append(f"failed GETs: {summary['failed_gets']}; submissions: {summary['submissions']} "
                 f"({', '.join(f'{k}: {v}' for k, v in summary['submission_outcomes'].items())}), "
                 f"retried: {summary['submissions_retried']}")
    return "\n".join(lines)
