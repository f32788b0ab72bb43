"""A real gateway for the reliability tests and bench/load_mock.py: ``gunicorn -c
deploy/gunicorn.conf.py`` (gthread workers, multiprocess metrics) on a free loopback port,
with its own work dir, users file and configuration, always stopped at the end.

    with LiveGateway(tmp_path, workers=2, scheduler={"backend": "mock", "options": {...}}) as gw:
        gw.url                          # http://127.0.0.1:<port>
        gw.api                          # gw.url + "/aip/v9.2"
        gw.token("alice")               # a Bearer token (logged in once, cached)
        gw.get("/jobs", user="alice")   # requests.Response (a fresh connection each time)
        gw.metrics_dir                  # PROMETHEUS_MULTIPROC_DIR of its workers
        gw.worker_pids()                # the current workers' pids

Users: ``users`` maps a name to True (administrator) or False; passwords are random
(``gw.passwords``). ``front="granian"`` serves the same app and configuration with granian
instead (bench/slurmrestd_compare.py --front granian; not a deployment option).
"""
from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path

import requests

from gateway.auth.users_file import UsersFile
from tests.deploy.servers import GeventReplica, GranianReplica, GunicornReplica, Processes, free_port, write_config

PREFIX = "/aip/v9.2"
DEFAULT_USERS = {"alice": False, "bob": False, "admin": True}


class LiveGateway:
    def __init__(self, tmp: Path, *, workers: int | None = 2, threads: int | None = 8, scheduler: dict | None = None,
                 users: dict | None = None, name: str = "gw", front: str = "gunicorn", **config):
        self.tmp = Path(tmp)
        self.workers, self.threads, self.name, self.front = workers, threads, name, front
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.passwords = {u: secrets.token_urlsafe(12) for u in self.users}
        self.port = free_port()
        work = self.tmp / "work"
        self.config = {
            "http_port": self.port, "bind": "127.0.0.1", "work_dir": str(work), "log_level": "warning",
            "admins": [u for u, admin in self.users.items() if admin],
            "scheduler": scheduler or {"backend": "mock", "options": {"state_dir": str(self.tmp / "mock"),
                                                                    "slots": 2}},
            **config,
        }
        self.metrics_dir = self.tmp / "metrics"
        self.procs = Processes()
        self.replica: GunicornReplica | None = None
        self._tokens: dict[str, str] = {}

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "LiveGateway":
        work = Path(self.config["work_dir"])
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        users_file = UsersFile(str(work / "users.yaml"))      # exists: no first-start admin
        for user, admin in self.users.items():
            users_file.set_password(user, self.passwords[user], admin=admin)
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        config = write_config(self.tmp / "gateway.yaml", **self.config)
        replica = {"gunicorn": GunicornReplica, "granian": GranianReplica, "gevent": GeventReplica}[self.front]
        self.replica = replica(self.procs, self.name, config, self.tmp / "logs",
                               workers=self.expected_workers, threads=self.threads_per_worker)
        # None: gunicorn computes deploy/gunicorn.conf.py's own defaults (as deployed);
        # granian has no such file and gets them (the same figures) from here.
        if self.front in ("gunicorn", "gevent"):
            if self.workers is None:
                self.replica.env.pop("GATEWAY_WORKERS", None)
            if self.threads is None:
                self.replica.env.pop("GATEWAY_THREADS", None)
        self.replica.env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        self.replica.start(wait=False)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        """Up: the master answers, and every worker has booted."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                requests.get(self.api + "/openapi.json", timeout=5).raise_for_status()
                if len(self.worker_pids()) >= self.expected_workers:
                    return
            except requests.RequestException:
                pass
            if not self.replica.proc.alive():
                raise AssertionError(f"gunicorn exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway not ready after {timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.procs.close()

    def __enter__(self) -> "LiveGateway":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, n: int = 6000) -> str:
        text = self.replica.proc.log_tail(n) if self.replica and self.replica.proc else ""
        log_dir = self.tmp / "logs"
        for path in sorted(log_dir.glob("hpc-gateway.log.*")):
            text += f"\n===== {path.name}\n" + path.read_text(errors="replace")[-n:]
        return text

    # ---------------------------------------------------------------- processes
    @property
    def expected_workers(self) -> int:
        """As deploy/gunicorn.conf.py computes it when not given."""
        return self.workers or max(2, min(8, 2 * (os.cpu_count() or 1)))

    @property
    def threads_per_worker(self) -> int:
        return self.threads or 32

    @property
    def master_pid(self) -> int:
        return self.replica.proc.pid

    def worker_pids(self) -> list[int]:
        try:
            with open(f"/proc/{self.master_pid}/task/{self.master_pid}/children") as fh:
                return [int(p) for p in fh.read().split()]
        except OSError:
            return []

    def kill_worker(self, pid: int, timeout: float = 30) -> None:
        """SIGKILL one worker (a crash); return once the master has replaced it."""
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.worker_pids()
            if pid not in pids and len(pids) >= self.expected_workers:
                return
            time.sleep(0.05)
        raise AssertionError(f"worker {pid} was not replaced in {timeout:g} s")

    # ---------------------------------------------------------------- HTTP
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return self.url + PREFIX

    def login(self, user: str, password: str | None = None) -> requests.Response:
        return requests.post(self.api + "/login", timeout=30,
                             json={"username": user, "password": self.passwords[user] if password is None else password})

    def token(self, user: str) -> str:
        if user not in self._tokens:
            r = self.login(user)
            assert r.status_code == 200, r.text
            self._tokens[user] = r.json()["data"]["token"]["token"]
        return self._tokens[user]

    def headers(self, user: str | None) -> dict:
        return {"Authorization": f"Bearer {self.token(user)}"} if user else {}

    def request(self, method: str, path: str, user: str | None = None, timeout: float = 30, **kw):
        url = path if path.startswith("http") else (self.url + path if path in ("/metrics", "/openapi.json")
                                                    else self.api + path)
        headers = {**self.headers(user), **kw.pop("headers", {})}
        return requests.request(method, url, headers=headers, timeout=timeout, **kw)

    def get(self, path: str, user: str | None = None, **kw):
        return self.request("GET", path, user, **kw)

    def post(self, path: str, user: str | None = None, **kw):
        return self.request("POST", path, user, **kw)

    def scrape(self) -> dict:
        """/metrics as {(sample name, frozenset of labels): value}."""
        r = requests.get(self.url + "/metrics", timeout=30)
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].startswith("text/plain; version="), r.headers
        return parse_samples(r.text)


def parse_samples(text: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(samples: dict, name: str, **labels) -> float:
    """The value of one sample (0 when absent)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def samples_named(samples: dict, name: str) -> dict:
    return {labels: value for (n, labels), value in samples.items() if n == name}
