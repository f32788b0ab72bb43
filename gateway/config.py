"""Configuration: one YAML file (path from GATEWAY_CONFIG), every key with a working default.

The seed's keys (http_port, ssl, https_port, cert, key, timeout, log_level) keep their
meaning and defaults. ``load_config`` merges the file (or a dict given to create_app) over
the defaults and validates the result; an invalid configuration fails at start-up.
"""
from __future__ import annotations

import contextvars
import difflib
import ipaddress
import logging
import os
import re
from pathlib import Path
from typing import Any

import yaml
from marshmallow import (INCLUDE, Schema, ValidationError, fields, post_load, validate, validates,
                         validates_schema)

from .errors import ConfigError
from .files.settings import FilesSchema

CONFIG_ENV = "GATEWAY_CONFIG"
log = logging.getLogger(__name__)


# The work_dir of the configuration whose scheduler plugin is being built (plugins.load_scheduler):
# a plugin's own default directory (the mock's state_dir, slurm_ssm's cache_dir) goes under it.
_configured_work_dir: contextvars.ContextVar[str | None] = contextvars.ContextVar("work_dir", default=None)


def default_work_dir() -> str:
    """The configured work_dir while a plugin is being built; else GATEWAY_WORK_DIR, else
    ~/.local/state/hpc-gateway (XDG_STATE_HOME)."""
    if _configured_work_dir.get():
        return _configured_work_dir.get()
    if os.environ.get("GATEWAY_WORK_DIR"):
        return os.environ["GATEWAY_WORK_DIR"]
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "hpc-gateway")


class LoginLimitSchema(Schema):
    max_failures_per_user = fields.Integer(load_default=5, validate=validate.Range(min=1))
    max_failures_per_address = fields.Integer(load_default=20, validate=validate.Range(min=1))
    window_seconds = fields.Integer(load_default=300, validate=validate.Range(min=1))


class AuthSchema(Schema):
    class Meta:
        unknown = INCLUDE          # backend-specific options (e.g. an LDAP backend's)

    backend = fields.String(load_default="users_file")
    users_file = fields.String(load_default=None, allow_none=True)
    pam_service = fields.String(load_default="login")
    # PAM checks at once per worker. pam_unix and sssd are thread-safe; 1 for a PAM module
    # that is not (each check still has its own handle).
    pam_concurrent_checks = fields.Integer(load_default=4, validate=validate.Range(min=1, max=64))
    login_limit = fields.Nested(LoginLimitSchema, load_default=lambda: LoginLimitSchema().load({}))


class SchedulerSchema(Schema):
    backend = fields.String(load_default="mock")
    options = fields.Dict(load_default=dict, allow_none=True)   # a YAML key with only comments is null

    @post_load
    def _options(self, data, **_):
        data["options"] = data.get("options") or {}
        return data


class ConfigSchema(Schema):
    class Meta:
        unknown = INCLUDE          # tolerate keys of newer/older releases; they are ignored

    # The seed's keys.
    http_port = fields.Integer(load_default=8088, validate=validate.Range(min=1, max=65535))
    ssl = fields.Integer(load_default=0, validate=validate.OneOf([0, 1]))
    https_port = fields.Integer(load_default=8043, validate=validate.Range(min=1, max=65535))
    cert = fields.String(load_default="", allow_none=True)
    key = fields.String(load_default="", allow_none=True)
    timeout = fields.Float(load_default=30, validate=validate.Range(min=0.001))  # minutes
    log_level = fields.String(load_default="info", validate=validate.OneOf(
        ["fatal", "error", "warn", "warning", "info", "debug"]))
    # Added by HPC Gateway.
    bind = fields.String(load_default="0.0.0.0")
    workers = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1, max=256))
    threads = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1, max=1024))
    running_threads = fields.Integer(load_default=4, validate=validate.Range(min=0, max=1024))
    access_log = fields.Boolean(load_default=True)
    # Slow clients (gateway/serving.py): seconds for the request line and headers, in total;
    # seconds a body may stop arriving or an answer stop being read, in one piece.
    client_header_timeout = fields.Float(load_default=30, validate=validate.Range(min=0.5, max=3600))
    client_io_timeout = fields.Float(load_default=60, validate=validate.Range(min=0.5, max=3600))
    api_prefix = fields.String(load_default="/aip/v9.2")
    work_dir = fields.String(load_default=None, allow_none=True)
    secret_file = fields.String(load_default=None, allow_none=True)
    session_store = fields.String(load_default=None, allow_none=True)
    token_max_age_hours = fields.Float(load_default=24, validate=validate.Range(min=0.001))
    auth = fields.Nested(AuthSchema, load_default=lambda: AuthSchema().load({}))
    admins = fields.List(fields.String(), load_default=list)
    list_all_jobs = fields.Boolean(load_default=False)
    max_body_bytes = fields.Integer(load_default=1024 * 1024, validate=validate.Range(min=1024))
    max_wait_seconds = fields.Integer(load_default=60, validate=validate.Range(min=0, max=3600))
    # Long polls one user may hold for their full wait at once in one worker process (each
    # holds a thread); the user's others answer within a second (state unchanged). 0: no
    # limit; null: a quarter of the worker's threads (GATEWAY_THREADS, else threads, else 32).
    max_waits_per_user = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=0))
    # File operations (transfers, listings, checksums) one user may have in progress at once
    # in one worker process (each holds a thread; a checksum of a FIFO a job swapped in
    # blocks until transfer_timeout); beyond it, 429 with Retry-After. 0: no limit; null: a
    # quarter of the worker's threads, as above, and at least 2.
    max_file_ops_per_user = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=0))
    page_size = fields.Integer(load_default=100, validate=validate.Range(min=1))
    max_page_size = fields.Integer(load_default=1000, validate=validate.Range(min=1))
    idempotency_ttl_seconds = fields.Integer(load_default=86400, validate=validate.Range(min=1))
    idempotency_pending_seconds = fields.Float(load_default=300, validate=validate.Range(min=1))
    trusted_proxies = fields.Integer(load_default=0, validate=validate.Range(min=0, max=5))
    # The proxies' own addresses (IPs or networks): X-Forwarded-* is believed only on
    # connections from these; a client that reaches a replica directly cannot pose as another
    # address (login limits per address, audit log).
    proxy_addresses = fields.List(fields.String(), load_default=lambda: ["127.0.0.1", "::1"])
    # Browser pages on other origins that may call the API (CORS); "*" for any.
    cors_origins = fields.List(fields.String(), load_default=list)
    scheduler = fields.Nested(SchedulerSchema, load_default=lambda: SchedulerSchema().load({}))
    files = fields.Nested(FilesSchema, load_default=lambda: FilesSchema().load({}))  # see gateway/files/settings.py

    @validates("proxy_addresses")
    def _proxy_addresses(self, value, **_):
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValidationError(f"not an IP address or network: {item!r}") from None

    @validates("cors_origins")
    def _cors_origins(self, value, **_):
        for item in value:
            if item != "*" and not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9a-fA-F:.]+\](:[0-9]{1,5})?", item):
                raise ValidationError(f"not an origin (scheme://host[:port], no path) or '*': {item!r}")

    @validates_schema
    def _tls(self, data, **_):
        if data.get("ssl") == 1 and not (data.get("cert") and data.get("key")):
            raise ValidationError("ssl: 1 needs both cert and key", "ssl")

    @validates_schema
    def _prefix(self, data, **_):
        prefix = data.get("api_prefix", "")
        if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
            raise ValidationError("api_prefix must start with '/' and not end with '/'", "api_prefix")


def read_yaml(path: str | os.PathLike) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"configuration {path} must be a mapping of keys to values")
    return data


def count_setting(env: str, cfg: dict, key: str, default: int) -> int:
    """A whole-number setting of the server (workers, threads): the environment variable
    ``env``, else ``cfg[key]``, else ``default``; ConfigError unless it is at least 1."""
    raw = os.environ.get(env) or cfg.get(key)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{env} / {key}: expected a whole number, got {raw!r}") from None
    if value < 1:
        raise ConfigError(f"{env} / {key}: must be at least 1, got {value}")
    return value


# Top-level sections validated elsewhere (gateway.vis.options, at start-up and by check-config).
_OTHER_SECTIONS = ("vis",)


def unknown_keys(raw: dict) -> list[str]:
    """Top-level keys no release of the gateway reads here, each with a likely meant one: they
    are ignored (a file may carry keys of another release), so a typo would silently leave
    the default in force."""
    out = _strays(raw, sorted(set(ConfigSchema().fields) | set(_OTHER_SECTIONS)))
    # auth: takes the options of any backend (a plugin's); those of the built-in ones are known.
    auth = raw.get("auth")
    if isinstance(auth, dict) and auth.get("backend", "users_file") in _BUILTIN_AUTH:
        out += _strays(auth, sorted(AuthSchema().fields), "auth.")
    return out


_BUILTIN_AUTH = ("users_file", "pam")


def _strays(raw: dict, known: list[str], section: str = "") -> list[str]:
    out = []
    for key in sorted(set(map(str, raw)) - set(known)):
        close = difflib.get_close_matches(key, known, n=1)
        out.append(f"'{section}{key}'" + (f" (did you mean '{section}{close[0]}'?)" if close else ""))
    return out


def load_config(config: dict | str | os.PathLike | None = None, *,
                unknown: list[str] | None = None) -> dict[str, Any]:
    """Return the validated configuration.

    ``config`` may be a dict (tests), a path, or None: then GATEWAY_CONFIG names the file,
    and without it every default applies. Unknown top-level keys are logged as ignored and,
    when ``unknown`` is a list, added to it (hpc-gateway check-config).
    """
    if config is None:
        path = os.environ.get(CONFIG_ENV)
        raw = read_yaml(path) if path else {}
    elif isinstance(config, (str, os.PathLike)):
        raw = read_yaml(config)
    else:
        raw = dict(config)
    try:
        cfg = ConfigSchema().load(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc.messages}") from exc
    from .vis.options import load_vis_options
    load_vis_options(cfg)                     # ConfigError now, not when the API is built
    strays = unknown_keys(raw)
    if strays:
        log.warning("configuration: unknown keys ignored: %s", ", ".join(strays))
        if unknown is not None:
            unknown.extend(strays)
    work = Path(cfg["work_dir"] or default_work_dir()).expanduser()
    cfg["work_dir"] = str(work)
    cfg["secret_file"] = cfg["secret_file"] or str(work / "secret.key")
    cfg["session_store"] = cfg["session_store"] or f"sqlite:///{work / 'sessions.sqlite'}"
    cfg["auth"]["users_file"] = cfg["auth"]["users_file"] or str(work / "users.yaml")
    if cfg["log_level"] == "warn":
        cfg["log_level"] = "warning"
    if cfg["log_level"] == "fatal":
        cfg["log_level"] = "critical"
    return cfg
