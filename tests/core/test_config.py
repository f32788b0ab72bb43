import os
import re

import pytest

from gateway.config import ConfigSchema, load_config
from gateway.errors import ConfigError

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def test_every_key_has_a_working_default(tmp_path, monkeypatch):
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    monkeypatch.setenv("GATEWAY_WORK_DIR", str(tmp_path))
    cfg = load_config()
    # The seed's keys and defaults.
    assert (cfg["http_port"], cfg["ssl"], cfg["https_port"], cfg["timeout"], cfg["log_level"]) == (
        8088, 0, 8043, 30, "info")
    assert cfg["api_prefix"] == "/aip/v9.2"
    assert (cfg["client_header_timeout"], cfg["client_io_timeout"]) == (30, 60)
    assert cfg["scheduler"] == {"backend": "mock", "options": {}}
    assert cfg["secret_file"] == str(tmp_path / "secret.key")
    assert cfg["session_store"] == f"sqlite:///{tmp_path / 'sessions.sqlite'}"
    assert cfg["auth"]["users_file"] == str(tmp_path / "users.yaml")


def test_the_file_named_by_gateway_config_is_read(tmp_path, monkeypatch):
    path = tmp_path / "gw.yaml"
    path.write_text("http_port: 9999\ntimeout: 300\nlog_level: warn\nscheduler: {backend: mock}\n")
    monkeypatch.setenv("GATEWAY_CONFIG", str(path))
    cfg = load_config()
    assert cfg["http_port"] == 9999 and cfg["timeout"] == 300 and cfg["log_level"] == "warning"


@pytest.mark.parametrize("raw, words", [
    ({"http_port": 70000}, "http_port"),
    ({"ssl": 1}, "cert and key"),
    ({"ssl": 2}, "ssl"),
    ({"timeout": "soon"}, "timeout"),
    ({"api_prefix": "api/"}, "api_prefix"),
    ({"log_level": "loud"}, "log_level"),
    ({"client_header_timeout": 0}, "client_header_timeout"),
    ({"client_io_timeout": "never"}, "client_io_timeout"),
])
def test_invalid_configuration_fails_with_the_key_named(raw, words):
    with pytest.raises(ConfigError) as err:
        load_config(raw)
    assert words in str(err.value)


def test_broken_yaml_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("http_port: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.yaml"))


def test_the_documented_config_file_names_every_key_and_loads():
    text = open(os.path.join(ROOT, "config", "gateway.yaml")).read()
    documented = set(re.findall(r"^\s*#?\s*([a-z_]+):", text, re.M))
    missing = set(ConfigSchema().fields) - documented
    assert not missing, f"config/gateway.yaml does not document: {sorted(missing)}"
    # ...and every key of the sections (vis: was missing), and the mock's options.
    from gateway.files.settings import FilesSchema
    from gateway.vis.options import VisOptions
    from gateway_mock import MockOptions
    for schema in (FilesSchema, VisOptions, MockOptions):
        missing = set(schema().fields) - documented
        assert not missing, f"config/gateway.yaml does not document {schema.__name__}: {sorted(missing)}"
    cfg = load_config(os.path.join(ROOT, "config", "gateway.yaml"))
    assert cfg["scheduler"]["backend"] == "mock"
