"""Request and response schemas of the vis blueprint (JSON as in the seed)."""
from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

from ...models import JobState
from ...vis.options import check_geometry
from ..common import envelope, no_nul
from ..jobs.schemas import NAME_RE


class VisSubmitSchema(Schema):
    """A visualization job: the command runs on a VNC desktop, opened in the browser."""

    class Meta:
        unknown = RAISE

    command = fields.String(required=True, validate=[validate.Length(min=1, max=65536), no_nul], metadata={
        "description": "the command line run on the desktop, as you (by /bin/sh -c), e.g. /usr/bin/xterm",
        "example": "/usr/bin/xterm"})
    type = fields.String(required=True, validate=validate.OneOf(["vnc"]),
                         metadata={"description": "the kind of session: vnc", "example": "vnc"})
    queue = fields.String(validate=[validate.Length(min=1, max=64), validate.Regexp(NAME_RE, error="not a valid queue name")])
    geometry = fields.String(validate=check_geometry,
                             metadata={"description": "desktop size WIDTHxHEIGHT (noVNC resizes it to the browser window)",
                                       "example": "1280x800"})
    timeLimitMinutes = fields.Integer(attribute="time_limit_minutes", strict=True,
                                      validate=validate.Range(min=1, max=10 * 525600))


class WebsocketCheckQuerySchema(Schema):
    """What NGINX's auth_request sends: the pieces of /novnc-ws/<address>/<port>/<ticket>."""

    address = fields.String(required=True, validate=validate.Length(min=1, max=253))
    port = fields.Integer(required=True, validate=validate.Range(min=1, max=65535))
    ticket = fields.String(required=True, validate=validate.Length(min=1, max=400))


class VisJobIdSchema(Schema):
    jobId = fields.String(attribute="job_id", required=True)


class VisSubmitResultSchema(Schema):
    vis = fields.Nested(VisJobIdSchema)


class VisUrlSchema(Schema):
    url = fields.String(required=True, metadata={
        "description": "the noVNC address, relative to the NGINX server that serves /novnc/",
        "example": "/novnc/vnc.html?autoconnect=true&host=hpc.example.org&port=443"
                   "&resize=remote&quality=9&compression=5&exec=node1&sid=10"
                   "&path=novnc-ws%2F10.1.0.21%2F6105%2FWyJhbGljZSIsIjEwIiwiMTAuMS4wLjIxIiw2MTA1XQ"
                   ".mX-Qc7yOG6K2ai2mGsN14pTIxig&encrypt=1#password=Ab3dE6gH"})


class VisUrlResultSchema(Schema):
    visurl = fields.Nested(VisUrlSchema)


class VisStateSchema(Schema):
    jobId = fields.String(attribute="job_id", required=True)
    state = fields.Enum(JobState, by_value=True, required=True)
    nativeState = fields.String(attribute="native_state", allow_none=True)
    execHost = fields.String(attribute="exec_host", allow_none=True)
    display = fields.Integer(allow_none=True)


class VisDetailResultSchema(Schema):
    visurl = fields.Nested(VisUrlSchema)
    vis = fields.Nested(VisStateSchema)


VisSubmitEnvelope = envelope("VisSubmitEnvelope", VisSubmitResultSchema)
VisUrlEnvelope = envelope("VisUrlEnvelope", VisUrlResultSchema)
VisDetailEnvelope = envelope("VisDetailEnvelope", VisDetailResultSchema)
