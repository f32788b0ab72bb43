"""Request and response schemas of the files blueprint (JSON is camelCase, as in the seed).

Paths are checked by the file space itself (gateway.files.paths), which answers 400 for
NUL, control characters and '..', and 403 for anything outside the user's roots; the
schemas only bound their length, so that every refusal carries the same clear message.
"""
from __future__ import annotations

from marshmallow import Schema, fields, validate

from ..common import envelope, no_control_chars

SHA256_RE = r"^[0-9a-fA-F]{64}$"
MODE_RE = r"^0?[0-7]{3}$"

_PATH_DOC = ("absolute, `~/...` (your home), or relative to your home (or, with `jobId`, to the "
             "job's work dir)")


def _path(required=False, description=_PATH_DOC, **kw):
    return fields.String(required=required, validate=validate.Length(min=1, max=8192),
                         metadata={"description": description}, **kw)


def _job_id():
    return fields.String(data_key="jobId", validate=validate.Length(min=1, max=64),
                         metadata={"description": "a job of yours: its work dir becomes the base of "
                                                  "relative paths and is open to you"})


class PathQuerySchema(Schema):
    path = _path(load_default=".")
    job_id = _job_id()


class StatQuerySchema(PathQuerySchema):
    sha256 = fields.Boolean(load_default=False, metadata={"description": "also compute the file's sha256"})


class RequiredPathQuerySchema(Schema):
    path = _path(required=True)
    job_id = _job_id()


class UploadQuerySchema(Schema):
    path = _path(description="the file to write; for multipart bodies it may name a directory "
                             "ending in '/' (the part's filename is used), or be left out (your "
                             "home or the job's work dir)")
    job_id = _job_id()
    overwrite = fields.Boolean(load_default=False, metadata={"description": "replace an existing file"})
    mkdirs = fields.Boolean(load_default=False, metadata={"description": "create missing parent directories"})
    sha256 = fields.String(validate=[validate.Regexp(SHA256_RE, error="must be 64 hexadecimal digits"), no_control_chars],
                           metadata={"description": "the expected sha256: a mismatch is refused (422) and nothing is kept"})
    mode = fields.String(validate=[validate.Regexp(MODE_RE, error="must be an octal mode such as 0644 or 755"), no_control_chars],
                         metadata={"description": "permissions of the new file (else the user's umask decides)"})


class VendorUploadQuerySchema(Schema):
    workdir = fields.String(validate=validate.Length(min=1, max=8192),
                            metadata={"description": "directory to upload into (default: your home, or the job's work dir)"})
    job_id = _job_id()
    overwrite = fields.Boolean(load_default=True, metadata={"description": "replace an existing file (default true)"})
    sha256 = fields.String(validate=[validate.Regexp(SHA256_RE, error="must be 64 hexadecimal digits"), no_control_chars])


class VendorDownloadQuerySchema(Schema):
    workdir = fields.String(validate=validate.Length(min=1, max=8192),
                            metadata={"description": "directory the file name is relative to (default: your home, or with `jobId` the job's work dir)"})
    job_id = _job_id()


class FileEntrySchema(Schema):
    name = fields.String()
    path = fields.String()
    type = fields.String(metadata={"description": "file, directory, symlink, fifo, socket, char-device, block-device"})
    size = fields.Integer()
    mode = fields.String(metadata={"example": "0644"})
    permissions = fields.String(metadata={"example": "-rw-r--r--"})
    mtime = fields.DateTime()
    owner = fields.String()
    access = fields.String(metadata={"description": "what you may do with it: r, w, x or '-' each", "example": "rw-"})
    targetType = fields.String(attribute="target_type", metadata={"description": "symlinks: what the link points to"})
    sha256 = fields.String()


class FileResultSchema(Schema):
    file = fields.Nested(FileEntrySchema)


class ListingSchema(Schema):
    path = fields.String(metadata={"description": "the directory's real path"})
    entries = fields.List(fields.Nested(FileEntrySchema))
    total = fields.Integer()
    truncated = fields.Boolean(metadata={"description": "true when more than files.max_list_entries exist"})


class UploadedSchema(Schema):
    path = fields.String()
    name = fields.String()
    size = fields.Integer()
    sha256 = fields.String()
    replaced = fields.Boolean(metadata={"description": "an existing file was replaced"})


class UploadResultSchema(Schema):
    file = fields.Nested(UploadedSchema)


class DeletedSchema(Schema):
    path = fields.String()
    deleted = fields.Boolean()


class DeleteResultSchema(Schema):
    file = fields.Nested(DeletedSchema)


ListingEnvelope = envelope("FileListingEnvelope", ListingSchema)
FileEnvelope = envelope("FileEnvelope", FileResultSchema)
UploadEnvelope = envelope("UploadEnvelope", UploadResultSchema)
DeleteEnvelope = envelope("DeleteEnvelope", DeleteResultSchema)

BINARY = {"schema": {"type": "string", "format": "binary"}}
UPLOAD_BODY = {
    "required": True,
    "description": "the file's bytes, raw or as multipart/form-data (the first part with a filename)",
    "content": {
        "application/octet-stream": BINARY,
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "string", "format": "binary"}}}},
    },
}
VENDOR_UPLOAD_BODY = {
    "required": True,
    "description": "multipart/form-data with, optionally, a `workdir` field and then the file (its "
                   "filename names the new file). Fields are read before the file only: a `workdir` "
                   "or `sha256` field after it is a 400 and nothing is saved",
    # Properties in the order to send them (Swagger UI's form keeps it).
    "content": {"multipart/form-data": {"schema": {"type": "object", "properties": {
        "workdir": {"type": "string"}, "sha256": {"type": "string"},
        "file": {"type": "string", "format": "binary"}}}}},
}
