"""The app factory: configuration, plugins, sessions, blueprints, the one error handler."""
from __future__ import annotations

import fcntl
import io
import ipaddress
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import quote, quote_from_bytes

from flask import Flask, Response, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from flask_smorest import Api
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from .api.common import ErrorEnvelope, bearer_token
from .auth import Authenticator, Identity, load_authenticator, unix_uid
from .config import count_setting, load_config
from .errors import GatewayError, ServiceUnavailable, TooManyRequests, Unauthorized
from .files.body import BODY_LIMIT_KEY
from .metrics import Metrics, metrics_view
from .models import User
from .plugins import Scheduler, load_scheduler
from .sessions import SessionStore, TokenManager, load_or_create_secret, open_store
from .turns import NO_TURNS, PerUserSlots, Turns

log = logging.getLogger("gateway")

# Endpoints that need no token: logging in, health, the docs, metrics.
# vis.WebsocketCheck is NGINX's auth_request for a desktop's websocket: it checks the ticket
# in the websocket's path (a browser's websocket carries no Authorization header).
PUBLIC_ENDPOINTS = {"auth.Login", "auth.Logout", "system.Health", "swagger", "metrics", "static",
                    "vis.WebsocketCheck"}
PUBLIC_PREFIXES = ("api-docs.",)
_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_AUTH_ENDPOINTS = frozenset({"auth.Login", "auth.Logout"})
audit = logging.getLogger("gateway.audit")
audit.setLevel(logging.INFO)        # written whatever log_level says (logins, changes)


@dataclass
class GatewayState:
    config: dict
    scheduler: Scheduler
    store: SessionStore
    tokens: TokenManager
    authenticator: Authenticator
    secret: bytes = field(repr=False)           # signs tokens and vis websocket tickets
    metrics: Metrics
    turns: Turns = field(default_factory=lambda: NO_TURNS)
    # What one user holds of this process's threads: file operations in progress, and long
    # polls waiting their full time (max_file_ops_per_user, max_waits_per_user).
    file_ops: PerUserSlots = field(default_factory=PerUserSlots)
    waits: PerUserSlots = field(default_factory=PerUserSlots)

    def is_admin(self, identity: Identity | str) -> bool:
        if isinstance(identity, str):
            return identity in self.config["admins"] or self._file_admin(identity)
        return identity.admin or identity.name in self.config["admins"]

    def user(self, name: str) -> User:
        """The identity handed to plugins for an authenticated user name."""
        return User(name=name, is_admin=self.is_admin(name), uid=unix_uid(name))

    def _file_admin(self, name: str) -> bool:
        users = getattr(self.authenticator, "users", None)
        entry = users.entry(name) if users is not None else None
        return bool(entry and entry.get("admin"))


class GatewayApi(Api):
    """flask-smorest's Api, with every HTTP error rendered (and documented) as the seed's envelope."""

    ERROR_SCHEMA = ErrorEnvelope

    def handle_http_exception(self, error):
        return http_error_response(error)


def envelope_error(status: int, msg: str, errors=None, headers=None):
    body = {"msg": msg, "data": None}
    if errors:
        body["errors"] = errors
    response = jsonify(body)
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _flatten(messages) -> tuple[dict, str]:
    """webargs messages {"json": {"field": ["..."]}} -> field errors and one readable line."""
    errors = {}
    for location, fields_ in (messages or {}).items():
        if isinstance(fields_, dict):
            errors.update(fields_)
        else:
            errors[location] = fields_
    parts = []
    for name, value in errors.items():
        text = _words(value)
        parts.append(text if name == "_schema" else f"{name}: {text}")
    return errors, "; ".join(parts)


def _words(value) -> str:
    """Field messages as text: lists joined, a list's items' messages without their index
    ({0: ["Must be one of: ..."]}), nested fields by name."""
    if isinstance(value, list):
        return "; ".join(_words(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(_words(v) if isinstance(k, int) else f"{k}: {_words(v)}" for k, v in value.items())
    return str(value)


def http_error_response(error: HTTPException):
    status = error.code or 500
    data = getattr(error, "data", None) or {}
    messages = data.get("messages")
    if isinstance(error, RequestEntityTooLarge) or status == 413:
        limit = request.environ.get(BODY_LIMIT_KEY, request.max_content_length)
        return envelope_error(413, f"Request body too large: the limit is {limit} bytes")
    if status == 400 and messages and "json" in messages and messages["json"] == ["Invalid JSON body."]:
        return envelope_error(400, "Malformed JSON body: send a valid JSON object with Content-Type: application/json")
    if status == 422 and messages:
        errors, line = _flatten(messages)
        return envelope_error(422, f"Invalid input: {line}", errors=errors)
    if status == 404:
        return envelope_error(404, f"No such route: {request.method} {request.path}")
    if status == 405:
        return envelope_error(405, f"Method {request.method} is not allowed on {request.path}",
                              headers={"Allow": ", ".join(getattr(error, "valid_methods", None) or [])})
    return envelope_error(status, error.description or error.name)


def _first_start(cfg: dict, authenticator: Authenticator) -> None:
    """No default password: on first start, create an admin with a random password and say where it is."""
    users = getattr(authenticator, "users", None)
    if users is None:
        return
    path = cfg["auth"]["users_file"]
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)           # several workers may start at once
        if os.path.exists(path):
            return
        password = secrets.token_urlsafe(18)
        users.set_password("admin", password, admin=True)
        note = os.path.join(cfg["work_dir"], "initial-admin-password")
        fd = os.open(note, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        log.warning("First start: created user 'admin' (administrator). Its password is in %s "
                    "(readable by this account only). Log in with:\n  curl -X POST %s://localhost:%s%s/login "
                    "-H 'Content-Type: application/json' -d '{\"username\": \"admin\", \"password\": \"'$(cat %s)'\"}'"
                    "\nAdd users with: hpc-gateway users add NAME (run with this configuration: "
                    "GATEWAY_CONFIG or --config; its users file is %s)", note, "https" if cfg["ssl"] else "http",
                    cfg["https_port"] if cfg["ssl"] else cfg["http_port"], cfg["api_prefix"], note, path)


class _Cors:
    """CORS for the configured origins (``cors_origins``): the preflight's answer and the
    headers of every answer. No cookies are involved (tokens travel in Authorization), so
    credentials are never allowed."""
    METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
    HEADERS = "Authorization, Content-Type, Idempotency-Key, Range, If-Range"
    EXPOSED = "Retry-After, Content-Range, Content-Disposition, Accept-Ranges, ETag, Allow, X-File-Size, X-Wait-Seconds"

    def __init__(self, origins: list[str]):
        self.any = "*" in origins
        self.origins = frozenset(o.lower() for o in origins)

    def allows(self, origin: str | None) -> bool:
        return bool(origin) and (self.any or origin.lower() in self.origins)

    def preflight(self):
        response = Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = self.METHODS
        response.headers["Access-Control-Allow-Headers"] = self.HEADERS
        response.headers["Access-Control-Max-Age"] = "600"
        return response

    def annotate(self, response, origin: str | None) -> None:
        if not self.origins:
            return
        response.vary.add("Origin")
        if self.allows(origin):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = self.EXPOSED


class FromProxies:
    """werkzeug's ProxyFix for connections from ``addresses`` only; on any other, the
    X-Forwarded-* headers are ignored (a client reaching a replica directly, past NGINX,
    could otherwise be any address it likes to the login limits and the audit log)."""

    def __init__(self, wsgi_app, hops: int, addresses: list[str]):
        from werkzeug.middleware.proxy_fix import ProxyFix
        self.plain = wsgi_app
        self.fixed = ProxyFix(wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
        self.networks = [ipaddress.ip_network(a, strict=False) for a in addresses]
        self._known: dict[str, bool] = {}

    def _trusted(self, addr: str) -> bool:
        known = self._known.get(addr)
        if known is None:
            try:
                ip = ipaddress.ip_address(addr.split("%", 1)[0])
                ip = ip.ipv4_mapped or ip if ip.version == 6 else ip
            except ValueError:
                known = False
            else:
                known = any(ip in net for net in self.networks)
            if len(self._known) > 4096:
                self._known.clear()
            self._known[addr] = known
        return known

    def __call__(self, environ, start_response):
        app = self.fixed if self._trusted(environ.get("REMOTE_ADDR") or "") else self.plain
        return app(environ, start_response)


class GatewayJSON(DefaultJSONProvider):
    """Answers as UTF-8 JSON written out: a job's non-ASCII output (CJK text, or the U+FFFD
    standing for bytes that are not UTF-8) costs 3 bytes a character, not a 6-byte \\uXXXX
    escape. Keys keep the order they were built in ("msg" before "data").

    A string holding a lone surrogate (a file name that is not UTF-8, read with
    surrogateescape) cannot be UTF-8: such an answer is escaped throughout, as before."""
    ensure_ascii = False
    sort_keys = False

    def response(self, *args, **kwargs):
        obj = self._prepare_response_obj(args, kwargs)
        dump_args = {"indent": 2} if (self.compact is None and self._app.debug) or self.compact is False \
            else {"separators": (",", ":")}
        try:
            body = self.dumps(obj, **dump_args).encode("utf-8")
        except UnicodeEncodeError:
            body = self.dumps(obj, ensure_ascii=True, **dump_args).encode("ascii")
        return self._app.response_class(body + b"\n", mimetype=self.mimetype)


def _no_bearer(header: str | None) -> str:
    """Why a request has no token, in words to act on (never echoing what was sent)."""
    if header is None or not header.strip():
        return "Missing token: log in with POST /login and send 'Authorization: Bearer <token>'"
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() == "bearer":               # "Bearer " with $TOKEN unset
        return ("The Authorization header has 'Bearer' but no token: log in with POST /login and send "
                "'Authorization: Bearer <token>'")
    if rest.strip() and scheme.isalpha():
        return (f"The Authorization header uses the {scheme[:20]!r} scheme: send the token of POST /login "
                "as 'Authorization: Bearer <token>'")
    return "The Authorization header has no scheme: send the token as 'Authorization: Bearer <token>'"


def _route_of(app: Flask, req) -> str | None:
    """The URL rule a request matched; for a 405 (a known path, a method it does not take),
    the path's rule too: a client sending DELETE to /jobs is a fact about /jobs, not about an
    unknown path. None for a path no rule matches (and for a 405 on a path that would be
    redirected, such as one with "//").

    The 405's rule is matched with OPTIONS, which Flask gives every rule: where two rules
    take the path (/vis/submit and /vis/<job_id>), werkzeug prefers the fixed one, so every
    replica gives the same label. (``valid_methods`` comes from a set: its first method
    depends on the process's hash seed.)"""
    if req.url_rule is not None:
        return req.url_rule.rule
    exc = req.routing_exception
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        method = "OPTIONS" if "OPTIONS" in exc.valid_methods else sorted(exc.valid_methods)[0]
        try:
            rule, _ = app.create_url_adapter(req).match(method=method, return_rule=True)
            return rule.rule
        except HTTPException:
            return None
    return None


class GatewayFlask(Flask):
    """Flask, but whether a function is a coroutine function is asked once per function.
    Flask asks it of every hook and of every decorator layer of a view on every request (24
    times for a job's detail, ~5 % of a worker's time under load); the gateway has no
    coroutine views, and a function's nature does not change. A bound method counts as its
    function; the table is emptied when it grows past a bound (per-request callables)."""

    _SYNC_BOUND = 4096

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._sync: set = set()

    def ensure_sync(self, func):
        key = getattr(func, "__func__", func)
        try:
            if key in self._sync:
                return func
        except TypeError:                       # unhashable: ask every time
            return super().ensure_sync(func)
        result = super().ensure_sync(func)
        if result is func:
            if len(self._sync) >= self._SYNC_BOUND:
                self._sync.clear()
            self._sync.add(key)
        return result


def create_app(config: dict | str | None = None) -> Flask:
    """Build a gateway app. ``config``: a dict, a YAML path, or None (GATEWAY_CONFIG, else defaults)."""
    cfg = load_config(config)
    # A quarter of a worker's threads, counted as deploy/gunicorn.conf.py counts them; a user
    # may always start a file operation while another of theirs winds down (at least 2).
    for key, least in (("max_waits_per_user", 1), ("max_file_ops_per_user", 2)):
        if cfg[key] is None:
            cfg[key] = max(least, count_setting("GATEWAY_THREADS", cfg, "threads", 32) // 4)
    logging.basicConfig(level=cfg["log_level"].upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("gateway").setLevel(cfg["log_level"].upper())
    os.makedirs(cfg["work_dir"], mode=0o700, exist_ok=True)

    app = GatewayFlask("gateway")
    app.json = GatewayJSON(app)
    if cfg["trusted_proxies"]:
        # Behind NGINX: the client's address and scheme come from X-Forwarded-*, on
        # connections from the proxies themselves (proxy_addresses) only.
        app.wsgi_app = FromProxies(app.wsgi_app, cfg["trusted_proxies"], cfg["proxy_addresses"])
    prefix = cfg["api_prefix"]
    app.config.update(
        MAX_CONTENT_LENGTH=cfg["max_body_bytes"],
        API_TITLE="HPC Gateway",
        API_VERSION="9.2",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX=prefix or "/",
        OPENAPI_JSON_PATH="openapi.json",
        API_SPEC_OPTIONS={
            "info": {"description": "A REST gateway in front of HPC batch schedulers. Every response is "
                                    "`{\"msg\": ..., \"data\": ...}`. Log in with POST /login and send "
                                    "`Authorization: Bearer <token>`."},
            "servers": [{"url": "/"}],
            "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearerAuth": []}],
        },
    )

    scheduler = load_scheduler(cfg["scheduler"]["backend"], cfg["scheduler"]["options"], cfg["work_dir"])
    store = open_store(cfg["session_store"])
    authenticator = load_authenticator(cfg["auth"])
    secret = load_or_create_secret(cfg["secret_file"])
    tokens = TokenManager(secret, store, cfg["timeout"],
                          cfg["token_max_age_hours"], stamp=authenticator.stamp)
    _first_start(cfg, authenticator)
    from . import __version__
    state = GatewayState(cfg, scheduler, store, tokens, authenticator, secret,
                         Metrics(tokens=tokens, scheduler=scheduler.name, version=__version__),
                         Turns(cfg["running_threads"]))
    app.extensions["hpc_gateway"] = state

    api = GatewayApi(app)
    from .api.jobs.schemas import JobChangeSchema
    # What marshmallow cannot say of a schema as a whole: a change names at least one field.
    api.spec.components.schema("JobChange", {"minProperties": 1}, schema=JobChangeSchema)
    from .api.auth.views import blp as auth_blp
    from .api.cluster.views import blp as cluster_blp
    from .api.jobs.views import blp as jobs_blp
    from .api.system.views import blp as system_blp, swagger
    from .api.vis.views import blp as vis_blp
    for blp in (auth_blp, jobs_blp, cluster_blp, system_blp, vis_blp):
        api.register_blueprint(blp, url_prefix=prefix + (blp.url_prefix or ""))
    from .api.files.views import blp as files_blp; api.register_blueprint(files_blp, url_prefix=prefix)  # noqa: E702
    _mark_public(api)
    app.add_url_rule("/metrics", "metrics", metrics_view)
    # Swagger UI (not an API operation, so not in the OpenAPI document).
    app.add_url_rule(f"{prefix}/swagger/", "swagger", swagger)
    app.add_url_rule(f"{prefix}/swagger/<path:filename>", "swagger", swagger)
    if prefix:
        # The spec also at the root, where generic tools look for it.
        app.add_url_rule("/openapi.json", "openapi_root", lambda: app.view_functions["api-docs.openapi_json"]())

    @app.errorhandler(GatewayError)
    def _gateway_error(exc: GatewayError):
        if exc.status >= 500:
            log.warning("%s %s -> %s: %s", request.method, request.path, exc.status, exc.msg)
        return envelope_error(exc.status, exc.msg, exc.errors, exc.headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        if isinstance(exc, HTTPException):
            return http_error_response(exc)
        if _store_down(exc):
            log.error("session store unreachable on %s %s: %s", request.method, request.path, exc)
            err = ServiceUnavailable()
            return envelope_error(err.status, err.msg, headers=err.headers)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return envelope_error(500, "Internal error in the gateway; the administrator can find it in the log")

    @app.before_request
    def _start():
        # First: a request's latency and its time in flight include its wait for a turn.
        g.t0 = time.perf_counter()
        state.metrics.request_started()
        g.hpcgw_in_flight = True

    cors = _Cors(cfg["cors_origins"])

    @app.before_request
    def _preflight():
        # A browser's CORS preflight carries no token: answered here, before authentication
        # and without a turn (only for the configured origins; otherwise it goes on to 401).
        if request.method == "OPTIONS" and cors.allows(request.headers.get("Origin")) \
                and "Access-Control-Request-Method" in request.headers:
            return cors.preflight()
        return None

    @app.after_request
    def _cors(response):
        cors.annotate(response, request.headers.get("Origin"))
        return response

    @app.before_request
    def _bound_unsized_body():
        # A body without Content-Length (chunked): werkzeug reads it up to max_body_bytes and
        # silently drops the rest, so the request would be carried out on a cut body. Read one
        # byte more than the limit here: more is a 413; what fits is handed on with its length.
        # (File uploads stream their bodies and bound them themselves: gateway.files.body.)
        env = request.environ
        if request.content_length is not None or "HTTP_TRANSFER_ENCODING" not in env \
                or not env.get("wsgi.input_terminated") or request.max_content_length is None \
                or (request.endpoint or "").startswith("files."):
            return
        limit, body = request.max_content_length, bytearray()
        stream = env["wsgi.input"]
        while len(body) <= limit:
            piece = stream.read(min(65536, limit + 1 - len(body)))
            if not piece:
                break
            body += piece
        if len(body) > limit:
            raise RequestEntityTooLarge()
        env["wsgi.input"], env["CONTENT_LENGTH"] = io.BytesIO(bytes(body)), str(len(body))
        del env["HTTP_TRANSFER_ENCODING"]
        request.__dict__.pop("content_length", None)    # werkzeug cached it as None above

    @app.before_request
    def _take_turn():
        # File transfers mostly wait on the network and the cluster: they never queue for a turn.
        if (request.endpoint or "").startswith("files.") or not state.turns.limited:
            return
        if request.content_length or request.headers.get("Transfer-Encoding"):
            # A slow client sends its (JSON, max_body_bytes at most) body before it may hold a turn.
            request.get_data(cache=True)
        state.turns.take()

    @app.after_request
    def _give_turn_back(response):
        state.turns.give_back()       # before the body is sent: a slow reader holds no turn
        return response

    @app.before_request
    def _authenticate():
        endpoint = request.endpoint
        if endpoint is None or endpoint in PUBLIC_ENDPOINTS or endpoint.startswith(PUBLIC_PREFIXES) \
                or endpoint == "openapi_root":
            return None
        token = bearer_token()
        if token is None:
            raise Unauthorized(_no_bearer(request.headers.get("Authorization")))
        session = tokens.check(token)
        g.user = user = state.user(session.user)
        if endpoint.startswith("files."):
            _file_op_slot(user)
        return None

    def _file_op_slot(user: User) -> None:
        # A file operation holds its thread while it runs (a slow upload, a checksum of a big
        # file, or of a FIFO a job swapped in after the type check): one user may hold only
        # max_file_ops_per_user of them here. (A download's body is streamed after the
        # request's teardown: its reads wait at most command_timeout each.) Taken in
        # _authenticate, once the user is known: a hook of its own cost every request ~3 %.
        limit = state.config["max_file_ops_per_user"]
        if not state.file_ops.take(user.name, limit):
            raise TooManyRequests(f"{limit} of your file operations are in progress here: "
                                  "try again when one has ended", retry_after=5)
        g.hpcgw_file_op = user.name

    @app.after_request
    def _audit(response):
        # Every request that may change something (submit, kill, suspend, host and queue
        # control, file writes, vis), who asked and how it ended; never bodies. Login and
        # logout write their own lines.
        if request.method in _CHANGING and request.endpoint not in _AUTH_ENDPOINTS:
            user = g.get("user")
            # The path and query as sent on the wire (percent-encoded: a decoded %0A would forge
            # a line); the query names the file a files operation wrote or removed (?path=).
            target = quote(request.path, safe="/:@!$&'()*+,;=")
            if request.query_string and request.endpoint is not None:
                # Whole (the request line is at most 8190 bytes): padding cannot push the file
                # named out of the line. Only a matched route's: a mistyped login URL's query
                # may hold a password.
                target += "?" + quote_from_bytes(request.query_string, safe="/:@!$&'()*+,;=%?~")
            audit.info("%s %s status=%s user=%s address=%s%s", request.method, target,
                       response.status_code, user.name if user is not None else "-",
                       request.remote_addr or "-", f" job={g.audit_job}" if g.get("audit_job") else "")
        return response

    @app.after_request
    def _measure(response):
        # Labelled by the URL rule ("/aip/v9.2/jobs/<job_id>"), never the raw path.
        t0 = g.get("t0")
        state.metrics.request_finished(_route_of(app, request), request.method, response.status_code,
                                       time.perf_counter() - t0 if t0 is not None else None)
        return response

    @app.teardown_request
    def _in_flight_done(_exc):
        state.turns.give_back()       # if after_request did not run
        name = g.pop("hpcgw_file_op", None)
        if name is not None:
            state.file_ops.give_back(name)
        if g.pop("hpcgw_in_flight", False):
            state.metrics.request_done()

    return app


def _store_down(exc: Exception) -> bool:
    """Redis unreachable or SQLite locked for too long: a 503 to retry, not a 500."""
    import sqlite3
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return True
    try:
        import redis
    except ImportError:
        return False
    return isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError))


def _mark_public(api: Api) -> None:
    """Public operations carry an empty security requirement in the OpenAPI document."""
    paths = api.spec._paths
    for path, ops in paths.items():
        if path.endswith(("/login", "/health", "/vis/websocket-check")):
            for op in ops.values():
                if isinstance(op, dict):
                    op["security"] = []
