"""Plugin discovery: by entry point, inside create_app, with clear start-up errors."""
import subprocess
import sys
import textwrap

import pytest

from gateway import create_app
from gateway.errors import ConfigError
from gateway.plugins import installed_backends, load_scheduler


def test_builtin_mock_is_found_by_entry_point():
    assert "mock" in installed_backends()


def test_unknown_backend_fails_at_start_and_lists_installed(tmp_path):
    with pytest.raises(ConfigError) as err:
        create_app({"work_dir": str(tmp_path), "scheduler": {"backend": "pbs"}})
    assert "unknown scheduler backend 'pbs'" in str(err.value)
    assert "mock" in str(err.value)


def test_plugin_options_are_validated_by_the_plugin(tmp_path):
    with pytest.raises(ConfigError, match="slots"):
        load_scheduler("mock", {"state_dir": str(tmp_path), "slots": "many"})


def test_an_unimplemented_hook_answers_501(tmp_path, monkeypatch):
    from gateway.hookspecs import hookimpl

    class Partial:
        @hookimpl
        def health(self):
            from gateway.models import Health
            return Health(ok=True)

    from tests.helpers import app_with_plugin
    _, client = app_with_plugin(monkeypatch, tmp_path / "w", Partial(), "partial")
    r = client.get("/hosts")
    assert r.status == 501
    assert "does not support list hosts" in r.body["msg"]


THIRD_PARTY = {
    "setup.cfg": """
        [metadata]
        name = gw-thirdparty-echo
        version = 1.0
        [options]
        py_modules = gw_thirdparty_echo
        [options.entry_points]
        hpc_gateway.schedulers =
            echo = gw_thirdparty_echo:make_scheduler
    """,
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
    """,
    "gw_thirdparty_echo.py": """
        from gateway.hookspecs import hookimpl
        from gateway.models import Health, Host

        class Echo:
            def __init__(self, options):
                self.host = options.get("host", "echo-host")

            @hookimpl
            def list_hosts(self):
                return [Host(name=self.host, state="ok")]

            @hookimpl
            def health(self):
                return Health(ok=True, latency_ms=0.0, detail="echo")

        def make_scheduler(options):
            return Echo(options)
    """,
}


@pytest.fixture
def third_party_plugin(tmp_path):
    src = tmp_path / "thirdparty"
    src.mkdir()
    for name, text in THIRD_PARTY.items():
        (src / name).write_text(textwrap.dedent(text))
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "install", "-q", "--no-deps", "--no-build-isolation", str(src)], check=True,
                   capture_output=True)
    yield "echo"
    subprocess.run([*pip, "uninstall", "-q", "-y", "gw-thirdparty-echo"], check=True, capture_output=True)


def test_a_third_party_plugin_installed_with_pip_is_found_and_used(tmp_path, third_party_plugin):
    assert third_party_plugin in installed_backends()
    app = create_app({"work_dir": str(tmp_path / "w"),
                      "scheduler": {"backend": "echo", "options": {"host": "pip-installed"}}})
    from tests.helpers import ApiClient
    client = ApiClient(app).login("admin", (tmp_path / "w" / "initial-admin-password").read_text().strip())
    r = client.get("/hosts")
    assert r.status == 200
    assert r.body["data"]["hosts"][0]["name"] == "pip-installed"
    assert client.get("/jobs").status == 501
    assert client.get("/health").body["data"]["health"]["scheduler"]["backend"] == "echo"


def test_a_plugins_default_directory_follows_the_configured_work_dir(tmp_path, monkeypatch):
    """config/gateway.yaml documents the mock's state_dir as <work_dir>/mock (slurm_ssm's
    cache_dir likewise): with work_dir set in the file, the plugin used GATEWAY_WORK_DIR or
    ~/.local/state instead, so an installation's jobs and its sessions lived apart."""
    from gateway.config import default_work_dir
    monkeypatch.setenv("GATEWAY_WORK_DIR", str(tmp_path / "from-env"))
    configured = tmp_path / "configured"
    app = create_app({"work_dir": str(configured), "scheduler": {"backend": "mock"}})
    try:
        assert app.extensions["hpc_gateway"].scheduler.impl.state_dir == str(configured / "mock")
    finally:
        app.extensions["hpc_gateway"].scheduler.close()
    assert default_work_dir() == str(tmp_path / "from-env")       # only while the plugin is built
