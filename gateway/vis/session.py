"""The session file a vis job writes, and the noVNC address built from it.

The launcher writes ``~/.hpc-gateway/vis/<job id>.json`` (mode 0600) in the home directory of
the account the job runs as; the gateway reads it as that account through the plugin's
``read_user_file`` hook. It holds host, port, display and password; the address returned to
the client has the seed's form, every value URL-encoded.
"""
from __future__ import annotations

import ipaddress
import json
import re
from urllib.parse import quote, urlsplit

from itsdangerous import BadSignature, URLSafeSerializer

from ..models import VisSession

SESSION_DIR = "~/.hpc-gateway/vis"
MAX_SESSION_BYTES = 4096
_HOST_RE = re.compile(r"^[A-Za-z0-9.-]{1,253}\Z")
_PASSWORD_RE = re.compile(r"^[A-Za-z0-9]{6,64}\Z")
_KEY_RE = re.compile(r"^[0-9a-f]{32,64}\Z")


def session_path(job_id: str) -> str:
    """Where the job's session file is, relative to its account's home (``~/``)."""
    return f"{SESSION_DIR}/{job_id}.json"


def parse_session(data: bytes | None, job_id: str, not_before: float | None = None) -> VisSession | None:
    """The VisSession in a session file's bytes; None when absent, partial, stale or not this job's.

    ``not_before``: a file whose ``started`` is earlier (a leftover of a killed job with the
    same id, e.g. a requeue) does not count.
    """
    if not data:
        return None
    try:
        doc = json.loads(data.decode("utf-8"))
        key = doc.get("key")
        session = VisSession(host=str(doc["host"]), port=int(doc["port"]), password=str(doc["password"]),
                             display=int(doc["display"]), exec_host=str(doc.get("execHost") or doc["host"]),
                             key=None if key is None else str(key))
        started = float(doc.get("started", 0))
        same_job = str(doc.get("jobId")) == str(job_id)
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return None
    if not same_job or (not_before is not None and started < not_before):
        return None
    if not (_HOST_RE.match(session.host) and _HOST_RE.match(session.exec_host or "")
            and 0 < session.port < 65536 and 0 <= session.display < 100000
            and _PASSWORD_RE.match(session.password)
            and (session.key is None or _KEY_RE.match(session.key))):
        return None
    return session


def _url_host(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


class WebsocketTickets:
    """The ticket in a proxied session's websocket path: NGINX lets a websocket through to
    websockify only once the gateway has checked it (``auth_request``, GET /vis/websocket-check).

    A ticket is signed with the gateway's secret (every replica shares it) and names the
    owner, the job, the start of the job's run, websockify's address and port, and the
    desktop's websockify token (the session's ``key``): NGINX lets its websocket through
    only while that run of its job goes on (the check asks the scheduler; a requeued job
    starts again, maybe on another host or port, and the old port may go to someone else's
    desktop), and hands websockify the token the check answers with. Address and port come
    from the session file, which its owner can write: a ticket for someone else's port
    carries the wrong token, and that websockify refuses it. A ticket has no expiry of its
    own (the run's end is its end), so the address stays the same for the session's life
    and a reloaded page reconnects. Without it, NGINX would hand anyone who reaches it a
    websocket to any desktop (its VNC password the only lock) and a websockify process per
    connection.
    """

    SALT = "hpc-gateway-vis-websocket"
    MAX_CHARS = 400

    def __init__(self, secret: bytes):
        self._serializer = URLSafeSerializer(secret, salt=self.SALT)

    def issue(self, user: str, job_id: str, address: str, port: int, started: str | None = None,
              key: str | None = None) -> str:
        """``started``: the run's start as the scheduler gives it (ISO 8601), None if unknown;
        ``key``: the desktop's websockify token (VisSession.key), None if it has none."""
        return self._serializer.dumps([user, str(job_id), address, int(port), started, key])

    def check(self, ticket: str, address: str, port: int) -> tuple[str, str, str | None, str | None] | None:
        """(owner, job id, run start, websockify token) of a genuine ticket for this address
        and port; None otherwise. A ticket of an earlier release (five fields) has no token."""
        if not ticket or len(ticket) > self.MAX_CHARS:
            return None
        try:
            data = self._serializer.loads(ticket)
        except BadSignature:
            return None
        if isinstance(data, list) and len(data) == 5:
            data = [*data, None]
        if not (isinstance(data, list) and len(data) == 6 and all(isinstance(v, str) for v in data[:3])
                and isinstance(data[3], int) and all(v is None or isinstance(v, str) for v in data[4:])):
            return None
        user, job_id, signed_address, signed_port, started, key = data
        if signed_address != address or signed_port != port:
            return None
        return user, job_id, started, key


def vis_url(session: VisSession, options: dict, request_url: str | None = None,
            ticket: str | None = None) -> str:
    """The noVNC address of a session, in the seed's form but for the password, which goes
    in the fragment (``#password=...``).

    ``websocket: direct``: host and port are websockify's on the execution host (the seed's
    way; the browser must reach that host). ``proxy`` (default): host and port are NGINX's
    (``public_url``, else the scheme/host/port the client used for this request), and ``path``
    routes the websocket through NGINX's /novnc-ws/<address>/<port>/<ticket> to websockify
    (``ticket``: WebsocketTickets.issue's, which NGINX has the gateway check).
    """
    extra = []
    if options["websocket"] == "direct":
        host, port = session.host, session.port
        if session.key:
            # noVNC's default path, with the token websockify asks for.
            extra = [("path", f"websockify?token={session.key}")]
    else:
        front = urlsplit(options.get("public_url") or request_url or "http://localhost/")
        secure = front.scheme == "https"
        host = _url_host(front.hostname or "localhost")
        port = front.port or (443 if secure else 80)
        path = f"{options['proxy_path']}/{session.host}/{session.port}" + (f"/{ticket}" if ticket else "")
        extra = [("path", path),
                 ("encrypt", "1" if secure else "0")]
    params = [("autoconnect", "true"), ("host", host), ("port", str(port)),
              ("resize", "remote"), ("quality", "9"), ("compression", "5"),
              ("exec", session.exec_host or session.host), ("sid", str(session.display))] + extra
    query = "&".join(f"{key}={quote(value, safe='')}" for key, value in params)
    # The password in the fragment, which noVNC reads first (WebUtil.getConfigVar) and a
    # browser never sends: not in NGINX's error log (it writes the request line), nor in a
    # proxy's or load balancer's, nor in a Referer.
    return f"{options['novnc_path']}?{query}#password={quote(session.password, safe='')}"
