"""A gateway on a real backend, behind a real NGINX serving noVNC, for the vis tests.

``vis_stack`` (module-scoped, one per backend): the backend's servers (reusing the behaviour
suite's factories: mock, mock-sudo, slurm-local), the gateway on a threaded HTTP server,
NGINX in front of both the API and noVNC (deploy/nginx/hpc-gateway-novnc.conf), and
logged-in API clients for two users. ``GATEWAY_TEST_BACKENDS`` narrows the backends, as for
the behaviour suite.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway import create_app
from gateway.auth.users_file import UsersFile
from tests.contract.backend_mock import BACKENDS as MOCK_BACKENDS
from tests.helpers import CI, TEST_USERS, ApiClient, ensure_unix_user, require

from .support import NOVNC_DIR, chromium_binary, nginx, nginx_binary, serve_app


def _slurm_local(env):
    from tests.contract.backend_slurm import slurm_local
    return slurm_local(env)


def _aip_local(env):
    from tests.contract.backend_aip import BACKENDS
    return BACKENDS["aip-b-local"](env)


VIS_BACKENDS = {"mock": MOCK_BACKENDS["mock"], "mock-sudo": MOCK_BACKENDS["mock-sudo"], "slurm-local": _slurm_local,
                "aip-b-local": _aip_local}
# Backends whose plugin may still lack the optional read_user_file hook: skipped, not failed,
# until their owners add it (docs/vis.md has the lines).
OPTIONAL_BACKENDS = {"aip-b-local"}
_selected = os.environ.get("GATEWAY_TEST_BACKENDS")
VIS_BACKEND_IDS = [b for b in VIS_BACKENDS if not _selected or b in _selected.split(",")]


@dataclass
class BackendEnv:
    tmp: Path
    users: dict = field(default_factory=lambda: dict(TEST_USERS))
    ci: bool = CI


@dataclass
class VisStack:
    backend: str
    app: object
    gateway_url: str       # the gateway itself
    front_url: str         # NGINX: the API under the prefix, noVNC under /novnc/
    alice: ApiClient       # through NGINX
    bob: ApiClient
    admin: ApiClient
    users: dict
    nginx_dir: Path

    def job_account(self, role: str) -> str:
        """The Unix account the role's jobs run as (the service account on mock)."""
        if self.backend == "mock" or (self.backend.startswith("aip") and os.geteuid() != 0):
            return pwd.getpwuid(os.getuid()).pw_name
        return self.users[role]

    def session_file(self, role: str, job_id: str) -> Path:
        home = pwd.getpwnam(self.job_account(role)).pw_dir
        return Path(home) / ".hpc-gateway" / "vis" / f"{job_id}.json"

    def nginx_access_log(self) -> str:
        path = self.nginx_dir / "logs" / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""


def require_vis_components() -> None:
    for prog in ("Xvnc", "vncpasswd", "websockify", "xauth", "xterm"):
        require(shutil.which(prog) is not None, f"{prog} is not installed (Debian: tigervnc-standalone-server "
                                                 "tigervnc-tools websockify xauth xterm)")
    require((NOVNC_DIR / "vnc.html").exists(), "noVNC is not installed (Debian: novnc)")
    require(nginx_binary() is not None, "nginx is not installed")
    require(chromium_binary() is not None, "chromium is not installed")


def _kill_leftover_jobs(admin) -> None:
    """A test that failed part-way leaves its desktop running (Xvnc, websockify, the job):
    end every unfinished job of the stack's users before the scheduler goes."""
    r = admin.get("/jobs", params={"user": "all", "limit": 1000,
                                   "state": "PENDING,HELD,RUNNING,SUSPENDED"})
    if r.status != 200:
        return
    for job in r.body["data"]["jobs"]:
        if job.get("userName") in TEST_USERS.values():
            admin.post(f"/jobs/{job['jobId']}/kill")


@pytest.fixture(scope="module", params=VIS_BACKEND_IDS)
def vis_stack(request, tmp_path_factory):
    require_vis_components()
    backend = request.param
    for name in TEST_USERS.values():
        ensure_unix_user(name)
    tmp = tmp_path_factory.mktemp(f"vis-{backend}")
    env = BackendEnv(tmp=tmp / "backend")
    env.tmp.mkdir()
    with contextlib.ExitStack() as stack:
        scheduler = stack.enter_context(VIS_BACKENDS[backend](env))
        work = tmp / "gateway"
        store = UsersFile(str(work / "users.yaml"))
        passwords = {role: secrets.token_urlsafe(12) for role in TEST_USERS}
        for role, name in TEST_USERS.items():
            store.set_password(name, passwords[role], admin=(role == "admin"))
        cfg = {"work_dir": str(work), "log_level": "warning", "scheduler": scheduler,
               "admins": [TEST_USERS["admin"]], "trusted_proxies": 1, "max_wait_seconds": 30,
               "vis": {"geometry": "1280x800"}}
        app = create_app(cfg)
        sched = app.extensions["hpc_gateway"].scheduler
        stack.callback(sched.close)
        readable = any(sched.implements(h) for h in ("vis_session", "read_user_file", "file_transport"))
        why = (f"the {sched.name} plugin implements none of vis_session, read_user_file, file_transport: "
               "the gateway cannot read its vis session files (docs/vis.md has the lines to add)")
        if backend in OPTIONAL_BACKENDS and not readable:
            pytest.skip(why)
        require(readable, why)
        gateway_url = stack.enter_context(serve_app(app))
        front = stack.enter_context(nginx(tmp / "nginx", gateway_url))
        clients = {role: ApiClient(front).login(TEST_USERS[role], passwords[role]) for role in TEST_USERS}
        stack.callback(_kill_leftover_jobs, clients["admin"])
        yield VisStack(backend, app, gateway_url, front, clients["alice"], clients["bob"], clients["admin"],
                       dict(TEST_USERS), tmp / "nginx")
