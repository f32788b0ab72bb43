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


def test_unknown_keys_are_named_with_the_key_meant_and_check_config_says_so(tmp_path, caplog, capsys):
    """Keys of another release are ignored, so a typo would silently leave the default in
    force (timeout: 30 minutes, not 5): the start-up log and check-config name it."""
    from gateway.cli import main
    path = tmp_path / "gw.yaml"
    path.write_text(f"work_dir: {tmp_path / 'w'}\ntimout: 5\nlog_levl: debug\nfrobnicate: 1\n")
    unknown = []
    with caplog.at_level("WARNING", logger="gateway.config"):
        cfg = load_config(str(path), unknown=unknown)
    assert cfg["timeout"] == 30
    assert unknown == ["'frobnicate'", "'log_levl' (did you mean 'log_level'?)",
                       "'timout' (did you mean 'timeout'?)"]
    assert "unknown keys ignored" in caplog.text and "did you mean 'timeout'" in caplog.text
    assert main(["--config", str(path), "check-config"]) == 0
    assert "did you mean 'timeout'" in capsys.readouterr().err
    assert main(["--config", str(path), "check-config", "--strict"]) == 1
    capsys.readouterr()
    path.write_text(f"work_dir: {tmp_path / 'w'}\ntimeout: 5\n")
    assert main(["--config", str(path), "check-config", "--strict"]) == 0
    assert "unknown" not in capsys.readouterr().err


def test_a_misspelt_auth_key_of_a_built_in_backend_is_named_too(tmp_path):
    """auth: takes any backend's options (a plugin's LDAP settings), so it was never checked:
    `pam_servce: sshd` left PAM on the `login` service, silently. For the built-in backends
    the keys are known; another backend's options stay its own business."""
    path = tmp_path / "gw.yaml"
    path.write_text(f"work_dir: {tmp_path / 'w'}\nauth:\n  backend: pam\n  pam_servce: sshd\n")
    unknown = []
    cfg = load_config(str(path), unknown=unknown)
    assert cfg["auth"]["pam_service"] == "login"
    assert unknown == ["'auth.pam_servce' (did you mean 'auth.pam_service'?)"]
    path.write_text(f"work_dir: {tmp_path / 'w'}\nauth:\n  backend: ldap\n  ldap_url: ldaps://dir\n")
    unknown = []
    load_config(str(path), unknown=unknown)
    assert unknown == []


def test_check_config_validates_the_vis_section(tmp_path):
    """vis: was validated only when the API was built: check-config passed a file the
    service then failed to start with."""
    from gateway.cli import main
    path = tmp_path / "gw.yaml"
    path.write_text(f"work_dir: {tmp_path / 'w'}\nvis: {{port_mn: 6100}}\n")
    with pytest.raises(ConfigError, match="port_mn"):
        load_config(str(path))
    assert main(["--config", str(path), "check-config"]) == 2
