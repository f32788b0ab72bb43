"""The ``files`` section of the gateway's configuration (validated at start-up).

::

    files:
      roots: ["{home}"]            # where a user may read and write; {home}, {user} expand
      job_work_dirs: true          # a job's workDir is also open to its owner (with jobId=),
                               # where file operations run as the owner's own Unix account
      max_upload_bytes: 10737418240
      chunk_bytes: 1048576         # how much one read/write moves (memory per transfer)
      command_timeout: 30          # seconds for stat, list, rename, delete...
      transfer_timeout: 3600       # seconds for one upload or download on the cluster side
      deny_users: [root]           # file operations never run as these accounts
      max_list_entries: 10000
      staging:                     # SSM only: files travel through this S3 bucket
        bucket: null               # default: the ssm transport's output_bucket
        prefix: gateway-files
        endpoint_url: null         # default: the transport's s3_endpoint_url
        region: null               # default: the transport's output region
      inline_max_bytes: 16384      # SSM: smaller reads come back in the command's output
"""
from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates

KIB, MIB, GIB = 1024, 1024 * 1024, 1024 * 1024 * 1024


class StagingSchema(Schema):
    bucket = fields.String(load_default=None, allow_none=True)
    prefix = fields.String(load_default="gateway-files")
    endpoint_url = fields.String(load_default=None, allow_none=True)
    region = fields.String(load_default=None, allow_none=True)


class FilesSchema(Schema):
    roots = fields.List(fields.String(), load_default=lambda: ["{home}"])
    job_work_dirs = fields.Boolean(load_default=True)
    max_upload_bytes = fields.Integer(load_default=10 * GIB, validate=validate.Range(min=1))
    chunk_bytes = fields.Integer(load_default=MIB, validate=validate.Range(min=4 * KIB, max=64 * MIB))
    command_timeout = fields.Float(load_default=30.0, validate=validate.Range(min=1, max=3600))
    transfer_timeout = fields.Float(load_default=3600.0, validate=validate.Range(min=10, max=7 * 86400))
    deny_users = fields.List(fields.String(), load_default=lambda: ["root"])
    max_list_entries = fields.Integer(load_default=10000, validate=validate.Range(min=1))
    staging = fields.Nested(StagingSchema, load_default=lambda: StagingSchema().load({}))
    inline_max_bytes = fields.Integer(load_default=16 * KIB, validate=validate.Range(min=0, max=16 * KIB))

    @validates("roots")
    def _roots(self, roots, **_):
        for root in roots:
            if not root.startswith(("/", "{home}")):
                raise ValidationError(f"{root!r}: a root must be an absolute path or start with {{home}}")
            if "\x00" in root or ".." in root.split("/"):
                raise ValidationError(f"{root!r}: no NUL and no '..' in a root")
            try:
                root.format(home="/h", user="u")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValidationError(f"{root!r}: only {{home}} and {{user}} may be used ({exc})")


def load_files_settings(raw: dict | None) -> dict:
    from ..errors import ConfigError
    try:
        return FilesSchema().load(dict(raw or {}))
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: files: {exc.messages}") from exc
