"""The behaviour suite's harness: one suite, run against every scheduler plugin.

Each ``backend_<x>.py`` beside this file exports ``BACKENDS = {"<id>": factory}``; a factory
is a context manager ``factory(env)`` that starts what the backend needs and yields the
``scheduler`` config. ``GATEWAY_TEST_BACKENDS=mock,slurm-local`` narrows the run.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import pathlib
import secrets
from dataclasses import dataclass, field

import pytest
import yaml

from gateway import create_app
from gateway.auth.users_file import UsersFile
from tests.helpers import CI, TEST_USERS, ApiClient, ensure_unix_user


def _discover() -> dict:
    found = {}
    here = pathlib.Path(__file__).parent
    for path in sorted(here.glob("backend_*.py")):
        module = importlib.import_module(f"tests.contract.{path.stem}")
        found.update(getattr(module, "BACKENDS", {}))
    return found


ALL_BACKENDS = _discover()
_selected = os.environ.get("GATEWAY_TEST_BACKENDS")
BACKEND_IDS = [b for b in ALL_BACKENDS if not _selected or b in _selected.split(",")]


@dataclass
class BackendEnv:
    tmp: pathlib.Path
    users: dict = field(default_factory=lambda: dict(TEST_USERS))
    ci: bool = CI


@dataclass
class Gateway:
    """One app on one backend, with logged-in clients for alice, bob and an admin."""
    backend: str
    app: object
    alice: ApiClient
    bob: ApiClient
    admin: ApiClient
    users: dict
    config: dict

    def client(self) -> ApiClient:
        return ApiClient(self.app)


@pytest.fixture(scope="session")
def unix_users():
    """The suite's users, as real Unix accounts when we can create them (root)."""
    return {role: name for role, name in TEST_USERS.items() if ensure_unix_user(name)}


@pytest.fixture(scope="session", params=BACKEND_IDS)
def gateway(request, tmp_path_factory, unix_users):
    backend_id = request.param
    tmp = tmp_path_factory.mktemp(f"backend-{backend_id}")
    env = BackendEnv(tmp=tmp / "backend")
    env.tmp.mkdir()
    with contextlib.ExitStack() as stack:
        scheduler = stack.enter_context(ALL_BACKENDS[backend_id](env))
        work = tmp / "gateway"
        users_file = work / "users.yaml"
        store = UsersFile(str(users_file))
        passwords = {}
        for role, name in TEST_USERS.items():
            passwords[role] = secrets.token_urlsafe(12)
            store.set_password(name, passwords[role], admin=(role == "admin"))
        cfg = {"work_dir": str(work), "log_level": "warning", "scheduler": scheduler,
               "admins": [TEST_USERS["admin"]], "max_wait_seconds": 30}
        (work / "gateway.yaml").write_text(yaml.safe_dump(cfg))
        app = create_app(cfg)
        stack.callback(app.extensions["hpc_gateway"].scheduler.close)
        clients = {role: ApiClient(app).login(TEST_USERS[role], passwords[role]) for role in TEST_USERS}
        yield Gateway(backend_id, app, clients["alice"], clients["bob"], clients["admin"], dict(TEST_USERS), cfg)


@pytest.fixture
def queues(gateway):
    r = gateway.admin.get("/queues")
    assert r.status == 200, r.body
    qs = r.body["data"]["queues"]
    default = next((q["name"] for q in qs if q.get("isDefault")), qs[0]["name"])
    other = next((q["name"] for q in qs if q["name"] != default), default)
    return default, other
