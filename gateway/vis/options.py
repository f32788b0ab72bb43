"""The ``vis`` section of the gateway configuration, validated at start-up.

Every key has a working default for one host behind NGINX on loopback (the mock backend, a
single-node Slurm); a cluster whose jobs run on other hosts sets ``listen: hostname`` and
lets NGINX reach the compute network (deploy/nginx/hpc-gateway-novnc.conf).
"""
from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates, validates_schema

from ..errors import ConfigError

GEOMETRY_RE = re.compile(r"^(\d{3,4})x(\d{3,4})\Z")


def check_geometry(value: str) -> None:
    m = GEOMETRY_RE.match(value or "")
    if not m:
        raise ValidationError("not a desktop size like 1280x800")
    width, height = int(m.group(1)), int(m.group(2))
    if not (320 <= width <= 7680 and 200 <= height <= 4320):
        raise ValidationError("the desktop must be 320x200 to 7680x4320")


class VisOptions(Schema):
    class Meta:
        unknown = RAISE

    listen = fields.String(load_default="127.0.0.1", metadata={
        "description": "where websockify listens on the execution host: an IPv4 address, or "
                       "'hostname' for the address the host's name resolves to"})
    port_min = fields.Integer(load_default=6100, validate=validate.Range(min=1024, max=65535))
    port_max = fields.Integer(load_default=6199, validate=validate.Range(min=1024, max=65535))
    display_min = fields.Integer(load_default=10, validate=validate.Range(min=1, max=9999))
    display_max = fields.Integer(load_default=199, validate=validate.Range(min=1, max=9999))
    geometry = fields.String(load_default="1280x800", validate=check_geometry)
    queue = fields.String(load_default=None, allow_none=True,
                          metadata={"description": "queue for vis jobs when the request names none"})
    time_limit_minutes = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1))
    websocket = fields.String(load_default="proxy", validate=validate.OneOf(["proxy", "direct"]), metadata={
        "description": "proxy: the browser's websocket goes through NGINX (/novnc-ws/<host>/<port>/<ticket>, "
                       "the ticket checked by the gateway); direct: to websockify on the execution host (the seed's way)"})
    proxy_path = fields.String(load_default="novnc-ws", validate=validate.Regexp(r"^[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*$"))
    novnc_path = fields.String(load_default="/novnc/vnc.html", validate=validate.Regexp(r"^/[A-Za-z0-9._~/-]*$"))
    public_url = fields.String(load_default=None, allow_none=True, metadata={
        "description": "where browsers reach NGINX, e.g. https://hpc.example.org; default: the "
                       "scheme, host and port of each /vis request"})
    stale_seconds = fields.Integer(load_default=120, validate=validate.Range(min=0), metadata={
        "description": "a session file older than the job's start by more than this is a leftover"})

    @validates("listen")
    def _listen(self, value, **_):
        if value == "hostname":
            return
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise ValidationError("an IPv4 address or 'hostname'") from None

    @validates("public_url")
    def _public(self, value, **_):
        if value is None:
            return
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ValidationError("a URL like https://hpc.example.org or http://host:8080")

    @validates_schema
    def _ranges(self, data, **_):
        if data["port_min"] > data["port_max"]:
            raise ValidationError("port_min must not exceed port_max", "port_min")
        if data["display_min"] > data["display_max"]:
            raise ValidationError("display_min must not exceed display_max", "display_min")
        if data["websocket"] == "direct" and data["listen"] != "hostname" and \
                (ipaddress.IPv4Address(data["listen"]).is_loopback
                 or ipaddress.IPv4Address(data["listen"]).is_unspecified):
            # The browser would connect to 127.0.0.1 on the user's own machine (plain ws://),
            # and whatever listens there would get the desktop's VNC authentication.
            raise ValidationError("websocket: direct needs listen: hostname or an address browsers "
                                  "reach (websockify on a loopback address is for NGINX's proxy)", "websocket")


def load_vis_options(config: dict) -> dict:
    """The validated ``vis`` options of a gateway configuration (ConfigError when invalid)."""
    raw = config.get("vis") or {}
    if not isinstance(raw, dict):
        raise ConfigError("invalid configuration: vis must be a mapping")
    try:
        return VisOptions().load(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: vis: {exc.messages}") from exc
