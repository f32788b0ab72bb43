"""What every blueprint shares: the seed's envelope, the current user, the scheduler."""
from __future__ import annotations

import functools
import json
import re

import flask_smorest
from flask import current_app, g, request
from marshmallow import RAISE, Schema, ValidationError, fields
from webargs.flaskparser import FlaskParser, is_json_request
from webargs.multidictproxy import MultiDictProxy
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import UnsupportedMediaType

from ..errors import Forbidden
from ..models import User

SUCCESS = "Success"
# Printable text: no NUL, no other C0/C1 control characters (tab allowed where said).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_CONTROL_NO_TAB = re.compile(r"[\x00-\x1f\x7f-\x9f]")


_PLAIN = (str, int, float, bool, type(None))


class _Parser(FlaskParser):
    """webargs' parser, but a body that is not JSON is a 415 that says so, and JSON nested past
    Python's recursion limit (``[[[...]]]``, well within max_body_bytes) is a malformed body,
    400, not a RecursionError and a 500.

    Query parameters are checked as bodies are: one the operation does not take is a 422
    that names it. webargs ignores them by default, so a misspelt one changed the answer
    silently: ``?wiat=30`` answered at once instead of long-polling, ``DELETE
    /files?path=x&jobid=5`` named ``x`` in the home directory, not in job 5's. jQuery's
    cache-buster ``_`` is let through (and dropped)."""
    DEFAULT_UNKNOWN_BY_LOCATION = {**FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION, "query": RAISE, "querystring": RAISE}

    NO_QUERY_BOUND = 256                  # schema instances remembered (one per route here)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._no_query: dict = {}         # query schema -> what it loads from no query string

    def parse(self, argmap, req=None, *, location=None, validate=None, **kwargs):
        # A GET without a query string (the polling clients' every request) loads the same
        # thing each time: the schema's defaults. Loaded once per schema instance (a view's
        # decorator holds it), then copied; only plain values are kept (nothing a view could
        # change in place), a load that fails (a required parameter) is never kept, so it
        # fails every time, and a schema with a computed default (load_default=callable: a
        # time, a new id) is loaded every time. A query schema's hooks must not make its load
        # of nothing depend on the request (none does).
        if location in ("query", "querystring") and validate is None and isinstance(argmap, Schema):
            req = req if req is not None else self.get_default_request()
            if req is not None and not req.environ.get("QUERY_STRING"):
                known = self._no_query.get(argmap)
                if known is not None:
                    return dict(known)
                data = super().parse(argmap, req, location=location, **kwargs)
                if isinstance(data, dict) and all(isinstance(v, _PLAIN) for v in data.values()) \
                        and not any(callable(f.load_default) for f in argmap.fields.values()) \
                        and len(self._no_query) < self.NO_QUERY_BOUND:
                    self._no_query[argmap] = dict(data)
                return data
        return super().parse(argmap, req, location=location, validate=validate, **kwargs)

    def pre_load(self, location_data, *, schema, req, location):
        if location in ("query", "querystring") and "_" in req.args:
            kept = MultiDict([(k, v) for k, v in req.args.items(multi=True) if k != "_"])
            return MultiDictProxy(kept, schema)
        return location_data

    def _raw_load_json(self, req):
        if not is_json_request(req) and (req.content_length or req.headers.get("Transfer-Encoding")):
            # webargs would read no body at all, and the answer blame missing fields (curl -d
            # sends application/x-www-form-urlencoded).
            raise UnsupportedMediaType(f"Send the body as JSON with Content-Type: application/json "
                                       f"(it came as {req.mimetype or 'no content type'})")
        try:
            return super()._raw_load_json(req)
        except RecursionError:
            raise json.JSONDecodeError("nested too deeply", doc="(the body)", pos=0) from None


class Blueprint(flask_smorest.Blueprint):
    """Every API blueprint: flask-smorest's, with :class:`_Parser` for its arguments."""
    ARGUMENTS_PARSER = _Parser()

    def arguments(self, schema, **kwargs):
        # A schema class is made an instance once, here: webargs would make one per request
        # (122 us for JobSpecSchema, 21-26 us for a query schema), and the parser's loads of
        # no query string are remembered per instance. The OpenAPI document is the same.
        return super().arguments(schema() if isinstance(schema, type) else schema, **kwargs)


def no_control_chars(value: str) -> None:
    if _CONTROL_NO_TAB.search(value):
        raise ValidationError("must not contain control characters (NUL, newline, escape...)")


def no_nul(value: str) -> None:
    if "\x00" in value:
        raise ValidationError("must not contain NUL characters")


def envelope(name: str, data_schema, many: bool = False) -> type[Schema]:
    """A response schema ``{"msg": str, "data": <data_schema>}`` named ``name``."""
    if data_schema is None:
        data_field = fields.Raw(allow_none=True, metadata={"description": "empty"})
    else:
        data_field = fields.Nested(data_schema, many=many, allow_none=True)
    return Schema.from_dict({
        "msg": fields.String(required=True, metadata={"example": SUCCESS}),
        "data": data_field,
    }, name=name)


class ErrorEnvelope(Schema):
    msg = fields.String(required=True, metadata={"description": "what went wrong, in words a user can act on"})
    data = fields.Raw(allow_none=True, metadata={"description": "always null on error"})
    errors = fields.Dict(metadata={"description": "field messages, for invalid input"})


def ok(data) -> dict:
    return {"msg": SUCCESS, "data": data}


def gw():
    """The per-app gateway state (config, scheduler, tokens...)."""
    return current_app.extensions["hpc_gateway"]


def current_user() -> User:
    return g.user


def require_admin() -> User:
    user = current_user()
    if not user.is_admin:
        raise Forbidden(f"user {user.name} is not an administrator: this action is for admins only")
    return user


ERROR_RESPONSES = {
    400: "Malformed request (e.g. invalid JSON)",
    401: "Not logged in, or the session expired: log in again",
    403: "Not yours, or not an administrator",
    404: "No such object",
    408: "The request body stopped arriving (client_io_timeout)",
    409: "Not valid in the object's current state",
    413: "Request body too large",
    415: "The body is not sent as JSON (Content-Type: application/json)",
    422: "Invalid input; `errors` has the field messages",
    429: "Too many requests; see Retry-After",
    501: "Not supported by this scheduler backend",
    502: "The scheduler refused; its own words are in `msg`",
    503: "The scheduler (or the session store) is unreachable or busy; see Retry-After",
    504: "The scheduler did not answer in time",
}


def document_errors(blp, *codes):
    """Decorator documenting error responses (all with the error envelope).

    flask-smorest's alt_response wraps the view once per code, and each layer is a call
    (and an ensure_sync) on every request though it only carries documentation: the view
    gets one layer here, with what all of them document."""
    def deco(func):
        documented = func
        for code in codes:
            documented = blp.alt_response(code, schema=ErrorEnvelope, description=ERROR_RESPONSES[code])(documented)

        @functools.wraps(func)
        def view(*args, **kwargs):
            return current_app.ensure_sync(func)(*args, **kwargs)     # as alt_response's layer did
        view._apidoc = documented._apidoc
        return view
    return deco


def bearer_token() -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
