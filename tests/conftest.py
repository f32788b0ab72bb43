import os
import shutil

import pytest

from gateway import create_app
from tests.helpers import CI, ApiClient

ARTIFACTS = os.environ.get("GATEWAY_TEST_ARTIFACTS", os.path.join(os.path.dirname(__file__), "..", "test-artifacts"))


@pytest.fixture
def artifacts_dir():
    os.makedirs(ARTIFACTS, exist_ok=True)
    return os.path.abspath(ARTIFACTS)


@pytest.fixture
def make_app(tmp_path):
    """Build an app on the mock backend in a private work dir; returns (app, admin ApiClient)."""
    made = []

    def _make(**overrides):
        cfg = {"work_dir": str(tmp_path / "work"), "log_level": "warning",
               "scheduler": {"backend": "mock", "options": {"state_dir": str(tmp_path / "mock"), "slots": 4}}}
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key] = {**cfg[key], **value}
            else:
                cfg[key] = value
        app = create_app(cfg)
        made.append(app)
        password = open(os.path.join(cfg["work_dir"], "initial-admin-password")).read().strip() \
            if os.path.exists(os.path.join(cfg["work_dir"], "initial-admin-password")) else None
        client = ApiClient(app, prefix=cfg.get("api_prefix", "/aip/v9.2"))
        if password:
            client.login("admin", password)
        return app, client

    yield _make
    for app in made:
        app.extensions["hpc_gateway"].scheduler.close()


def which_or_fail(binary):
    return shutil.which(binary) is not None


__all__ = ["CI"]
