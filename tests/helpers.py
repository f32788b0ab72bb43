"""Test helpers shared by every test package."""
from __future__ import annotations

import os
import pwd
import secrets
import subprocess
import time

from tests.support import CI, require  # noqa: F401  (re-exported for the suites)

TEST_USERS = {"alice": "gwalice", "bob": "gwbob", "admin": "gwadmin"}


def ensure_unix_user(name: str) -> bool:
    """Create a real Unix user (with a home) when running as root; True when it exists."""
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        pass
    if os.geteuid() != 0:
        return False
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True, capture_output=True)
    return True


def set_unix_password(name: str, password: str) -> None:
    subprocess.run(["chpasswd"], input=f"{name}:{password}\n".encode(), check=True, capture_output=True)


class ApiClient:
    """A logged-in client over Flask's test client (or requests, with base_url)."""

    def __init__(self, app_or_url, prefix="/aip/v9.2", token=None):
        self.prefix = prefix
        self.token = token
        if isinstance(app_or_url, str):
            import requests
            self.session = requests.Session()
            self.base = app_or_url.rstrip("/")
            self.flask = None
        else:
            self.flask = app_or_url.test_client()
            self.base = ""

    def _headers(self, headers=None):
        h = dict(headers or {})
        if self.token and "Authorization" not in h:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def request(self, method, path, json=None, data=None, headers=None, params=None):
        url = path if path.startswith("/") and not path.startswith(self.prefix + "/") and path in (
            "/metrics", "/openapi.json") else self.prefix + path
        if self.flask is not None:
            r = self.flask.open(url, method=method, json=json, data=data, headers=self._headers(headers),
                                query_string=params)
            return Response(r.status_code, r.get_json(silent=True), r.headers, r.data)
        r = self.session.request(method, self.base + url, json=json, data=data, headers=self._headers(headers),
                                 params=params, timeout=120)
        try:
            body = r.json()
        except ValueError:
            body = None
        return Response(r.status_code, body, r.headers, r.content)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def login(self, username, password):
        r = self.post("/login", json={"username": username, "password": password})
        assert r.status == 200, r.body
        self.token = r.body["data"]["token"]["token"]
        return self

    # Job helpers -------------------------------------------------------------
    def submit(self, **spec):
        r = self.post("/jobs", json=spec)
        assert r.status == 200, r.body
        return r.body["data"]["job"]["jobId"]

    def job(self, job_id, **params):
        r = self.get(f"/jobs/{job_id}", params=params or None)
        assert r.status == 200, r.body
        return r.body["data"]["job"]

    def wait_for(self, job_id, states, timeout=90):
        """Long-poll until the job is in one of ``states``; returns the job."""
        states = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        job = self.job(job_id)
        while job["state"] not in states:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"job {job_id} still {job['state']} ({job.get('reason')}) after {timeout} s; "
                                     f"wanted {sorted(states)}")
            job = self.job(job_id, wait=min(10, max(1, int(left))), since=job["state"])
        return job

    def output(self, job_id, stream="stdout", **params):
        r = self.get(f"/jobs/{job_id}/output", params={"stream": stream, **params})
        assert r.status == 200, r.body
        return r.body["data"]["output"]


class Response:
    def __init__(self, status, body, headers, raw):
        self.status, self.body, self.headers, self.raw = status, body, headers, raw

    @property
    def msg(self):
        return (self.body or {}).get("msg")

    def __repr__(self):
        return f"<Response {self.status} {self.body!r}>"


def random_password() -> str:
    return secrets.token_urlsafe(12)


def app_with_plugin(monkeypatch, work_dir, plugin, name: str = "fake"):
    """An app whose scheduler backend is ``plugin`` (an object with hookimpls), found as if
    installed under entry point ``name``; returns (app, ApiClient logged in as the
    first-start admin)."""
    from pathlib import Path

    from gateway import create_app, plugins

    class _EntryPoint:
        def load(self):
            return lambda options: plugin

    monkeypatch.setattr(plugins, "installed_backends", lambda: {name: _EntryPoint()})
    app = create_app({"work_dir": str(work_dir), "scheduler": {"backend": name}})
    client = ApiClient(app).login("admin", (Path(work_dir) / "initial-admin-password").read_text().strip())
    return app, client


_IN_FRESH = """
import importlib, pickle, sys
module, name, args = pickle.load(sys.stdin.buffer)
result = getattr(importlib.import_module(module), name)(*args)
sys.stdout.buffer.write(pickle.dumps(result))
"""


def in_fresh_interpreter(func, *args, timeout: float = 300):
    """``func(*args)`` (a module-level function) run in a new Python process, its result
    unpickled. For memory measurements: tracemalloc counts the allocations of every thread,
    and background threads left by earlier tests (a snapshot refresh parsing a real squeue)
    once added 10 MB to a test's peak in CI."""
    import pickle
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", _IN_FRESH], input=pickle.dumps((func.__module__, func.__name__, args)),
                          capture_output=True, timeout=timeout, cwd=root)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return pickle.loads(done.stdout)
