"""The plugin's options (``scheduler.options`` in the gateway's configuration)."""
from __future__ import annotations

import os

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from gateway.errors import ConfigError
from gateway.s3scripts import S3ScriptOptions


def _default_cache_dir() -> str:
    from gateway.config import default_work_dir
    return os.path.join(default_work_dir(), "slurm_ssm")


class SlurmOptions(Schema):
    # Where Slurm's commands run: {"type": "local"|"ssh"|"ssm", ...} for make_transport.
    transport = fields.Dict(load_default=lambda: {"type": "local"})
    # sudo: user-facing commands run as the authenticated Unix user (sudo -n -u USER);
    # service: everything runs as one service account (the AWS recipe's way); each job carries
    # its gateway user as its comment (--comment=hpc-gateway:NAME), which makes it that user's.
    run_as = fields.String(load_default="service", validate=validate.OneOf(["sudo", "service"]))
    # The service account (None: whoever the transport runs as). Takes the queue snapshot.
    service_user = fields.String(load_default=None, allow_none=True)
    # run_as: service with the local transport and no other service_user runs jobs as the
    # gateway's own account (they could read its secret key): refused unless this is true.
    allow_gateway_account = fields.Boolean(load_default=False)
    # The account for operator actions: host/queue open/close, job suspend/resume (Slurm
    # allows those to operators only). None: the service account.
    admin_run_as = fields.String(load_default=None, allow_none=True)
    # Seconds one queue snapshot serves every listing, detail and long poll on this host.
    snapshot_interval = fields.Float(load_default=1.0, validate=validate.Range(min=0, max=3600))
    # While one thread refreshes the snapshot, the others answer from the previous one for
    # at most this many seconds past the interval instead of waiting (never after this
    # gateway changed a job: those reads wait for the new snapshot).
    snapshot_stale_grace = fields.Float(load_default=2.0, validate=validate.Range(min=0, max=3600))
    # While the gateway runs, the snapshot is never older than this (a background squeue when
    # nobody reads): a job that ends unobserved is seen finished before Slurm forgets it
    # (MinJobAge, 300 s by default; keep this below it). Else it was a 404. 0: off.
    watch_seconds = fields.Float(load_default=120.0, validate=validate.Range(min=0, max=86400))
    # Snapshot, lock and finished-job store, shared by the gunicorn workers of this host.
    cache_dir = fields.String(load_default=None, allow_none=True)
    # How the snapshot reads the queue: "no" = squeue's format strings, one line a job (on
    # 22.05 with 2000 jobs: 0.3 MB in 24 ms, against 6.4 MB in 260 ms for --json, which then
    # costs every worker far more to parse); "yes" = squeue --json; "auto" = --json when the
    # release has it (21.08+). The format strings carry no exit code: the plugin asks
    # `scontrol show job` once per failed job (at most 20 a refresh) and remembers it.
    json = fields.String(load_default="no", validate=validate.OneOf(["auto", "yes", "no"]))
    # Every command is bounded by this (seconds).
    command_timeout = fields.Float(load_default=20.0, validate=validate.Range(min=0.5, max=600))
    # Fail fast when slurmctld is down: a controller command still running after this many
    # seconds races `scontrol ping` (again every as many seconds); a DOWN answers 503, and
    # until a ping says UP again, commands answer 503 (pinging at most every down_hold s).
    down_probe_after = fields.Float(load_default=0.5, validate=validate.Range(min=0.05, max=600))
    down_hold = fields.Float(load_default=1.0, validate=validate.Range(min=0, max=60))
    # Where s3://bucket/key scripts may come from and how S3 is reached (gateway.s3scripts):
    # {allow: ["s3://bucket/{user}/", ...], endpoint_url, region_name, max_script_bytes}.
    s3 = fields.Nested(S3ScriptOptions, load_default=lambda: S3ScriptOptions().load({}))
    # sbatch options allowed in nativeOptions on top of the built-in list (e.g. "--container";
    # given bare only if sbatch takes it without a value: commands.NATIVE_FLAGS).
    # With run_as: service, --comment is never allowed (it carries the gateway user).
    allowed_native_options = fields.List(
        fields.String(validate=validate.Regexp(r"^--[a-z][a-z0-9-]*$", error="not a long option: {input}")),
        load_default=list)
    # How long and how many finished jobs stay answerable after they leave squeue (MinJobAge).
    finished_retention = fields.Integer(load_default=7 * 86400, validate=validate.Range(min=0))
    finished_max = fields.Integer(load_default=20000, validate=validate.Range(min=0))
    # Largest slice job_output returns (bytes).
    max_output_bytes = fields.Integer(load_default=1024 * 1024, validate=validate.Range(min=1))
    # The work dir of a job without workDir: None = the user's home on the cluster.
    default_work_dir = fields.String(load_default=None, allow_none=True)
    # run_as: sudo never runs commands as these accounts.
    deny_users = fields.List(fields.String(), load_default=lambda: ["root"])

    @validates_schema
    def _check(self, data, **kwargs):
        kind = (data.get("transport") or {}).get("type", "local")
        if kind not in ("local", "ssh", "ssm"):
            raise ValidationError(f"unknown transport type {kind!r}: choose local, ssh or ssm",
                                  field_name="transport")
        if data.get("default_work_dir") and not data["default_work_dir"].startswith("/"):
            raise ValidationError("must be an absolute path", field_name="default_work_dir")


def load_options(options: dict | None) -> dict:
    try:
        opts = SlurmOptions().load(dict(options or {}))
    except ValidationError as exc:
        raise ConfigError(f"slurm_ssm backend options: {exc.messages}") from exc
    opts["cache_dir"] = os.path.abspath(opts["cache_dir"] or _default_cache_dir())
    return opts
