"""The AIP plugin's options (``scheduler.options`` in the gateway's configuration)."""
from __future__ import annotations

import posixpath
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from marshmallow import (RAISE, Schema, ValidationError, fields, validate, validates,
                         validates_schema)

from gateway.errors import ConfigError
from gateway.s3scripts import S3ScriptOptions

from .commands import B_COMMANDS, DEFAULT_JSON_FIELDS, DEFAULT_NATIVE_ALLOW


class AipOptions(Schema):
    class Meta:
        unknown = RAISE

    #: "b": bsub, bjobs, ... (LSF, OpenLava, volclava, and AIP's LSF-compatible names);
    #: "c": SkyForm AIP's csub, cjobs, ...
    commands = fields.String(load_default="b", validate=validate.OneOf(["b", "c"]))
    #: b-name -> the command to run instead (a name or an absolute path), or null when the
    #: scheduler has none (its hooks then answer 501). E.g. {"badmin": "badmin"} for AIP.
    #: Changing a job (PATCH: one bmod for queue, name and run limit) runs the
    #: LSF-compatible bmod in both sets, as AIP has no c-name for it: {"bmod": null}
    #: turns it off (501), or names another command.
    commands_override = fields.Dict(keys=fields.String(validate=validate.OneOf(sorted(B_COMMANDS))),
                                    values=fields.String(allow_none=True), load_default=dict)
    #: Directory holding the commands; without it they are looked up on PATH (after env_file).
    bindir = fields.String(load_default=None, allow_none=True)
    #: A shell file to source first on the scheduler's host (AIP: /opt/skyformai/etc/aip.sh).
    #: Read once, by bash, with no client input; the variables it sets are then passed to
    #: every command (``env NAME=VALUE cmd ...``).
    env_file = fields.String(load_default=None, allow_none=True)
    #: Extra variables for every command (applied after env_file).
    env = fields.Dict(keys=fields.String(validate=validate.Regexp(r"^[A-Za-z_][A-Za-z0-9_]*$")),
                      values=fields.String(), load_default=dict)
    #: Where the commands run: {"type": "local"} or {"type": "ssh", "host": ..., ...}.
    transport = fields.Dict(load_default=lambda: {"type": "local"})
    #: "sudo": user-facing commands run as the authenticated Unix user (sudo -n -u USER);
    #: "service": everything runs as the transport's account, jobs are tagged with the
    #: gateway user through their project (-P).
    run_as = fields.String(load_default="service", validate=validate.OneOf(["sudo", "service"]))
    #: run_as: service with the local transport runs jobs as the gateway's own account (they
    #: could read its secret key): refused unless this is true.
    allow_gateway_account = fields.Boolean(load_default=False)
    #: With run_as: sudo, admin commands (badmin) and an admin's actions on other users' jobs
    #: run as this cluster-administrator account instead of as the admin's own user.
    admin_account = fields.String(load_default=None, allow_none=True)
    #: Seconds any one command may take (the scheduler is then reported unreachable: 504).
    timeout = fields.Float(load_default=30.0, validate=validate.Range(min=0.5, max=600))
    #: How jobs are listed: "json" (bjobs -o ... -json; LSF 10.1, volclava), "wide" (bjobs -w)
    #: or "long" (bjobs -l). With run_as: service, "wide" is read as "long" (the owner is the
    #: project, which the wide listing does not show).
    listing = fields.String(load_default="wide", validate=validate.OneOf(["json", "wide", "long"]))
    json_fields = fields.List(fields.String(validate=validate.Regexp(r"^[a-z_]+$")),
                              load_default=lambda: list(DEFAULT_JSON_FIELDS))
    #: bsub -M unit (LSF_UNIT_FOR_LIMITS): KB on OpenLava and older LSF, often MB on LSF 10.
    memory_unit = fields.String(load_default="KB", validate=validate.OneOf(["KB", "MB", "GB"]))
    #: Use bsub -cwd (LSF >= 9.1) for workDir; otherwise the command runs in it (env -C).
    cwd_flag = fields.Boolean(load_default=False)
    default_stdout = fields.String(load_default="lsf-%J.out", allow_none=True)
    default_stderr = fields.String(load_default="lsf-%J.err", allow_none=True)
    #: bsub options a client may pass in nativeOptions, with how many values each takes.
    native_options = fields.Dict(keys=fields.String(validate=validate.Regexp(r"^-[A-Za-z_]+$")),
                                 values=fields.Integer(validate=validate.Range(min=0, max=3)),
                                 load_default=lambda: dict(DEFAULT_NATIVE_ALLOW))
    #: The scheduler's time zone (its times carry none).
    timezone = fields.String(load_default="UTC")
    #: Shown when the command set has no lsid.
    cluster_name = fields.String(load_default=None, allow_none=True)
    #: The default queue when the command set has no bparams.
    default_queue = fields.String(load_default=None, allow_none=True)
    #: How long one listing of all jobs serves every caller (shields the scheduler).
    cache_seconds = fields.Float(load_default=1.0, validate=validate.Range(min=0, max=60))
    #: The most of a job's output read at once (a finished job's file, a running job's bpeek).
    max_output_bytes = fields.Integer(load_default=64 * 1024 * 1024,
                                      validate=validate.Range(min=1024))
    #: Where s3://bucket/key scripts may come from and how S3 is reached (gateway.s3scripts):
    #: {allow: ["s3://bucket/{user}/", ...], endpoint_url, region_name, max_script_bytes}.
    s3 = fields.Nested(S3ScriptOptions, load_default=lambda: S3ScriptOptions().load({}))

    @validates("bindir")
    def _bindir(self, value, **_):
        if value is not None and not posixpath.isabs(value):
            raise ValidationError("must be an absolute path")

    @validates("env_file")
    def _env_file(self, value, **_):
        if value is not None and not posixpath.isabs(value):
            raise ValidationError("must be an absolute path")

    @validates("timezone")
    def _tz(self, value, **_):
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValidationError(f"unknown time zone {value!r}") from None

    @validates_schema
    def _check(self, data, **_):
        if not isinstance(data.get("transport"), dict):
            raise ValidationError("must be a mapping", "transport")


def load_options(options: dict | None) -> dict:
    try:
        return AipOptions().load(dict(options or {}))
    except ValidationError as exc:
        problems = "; ".join(f"{k}: {v}" for k, v in sorted(exc.messages.items()))
        raise ConfigError(f"aip backend options: {problems}") from exc
