"""Visualization jobs: start a VNC desktop as a job, get its noVNC address."""
from __future__ import annotations

import logging

from flask import Response, current_app, g, request
from flask.views import MethodView
from werkzeug.exceptions import MethodNotAllowed

from ...errors import Conflict, Forbidden, GatewayError, NotFound
from ...models import FINAL_STATES, JobState
from ...vis import is_vis_job, load_vis_options, read_vis_session, submit_hook, vis_job_spec, vis_url
from ...vis.session import WebsocketTickets
from ..common import Blueprint, current_user, document_errors, ErrorEnvelope, gw, ok
from ..jobs.views import IDEMPOTENCY_KEY_PARAMETER, fetch_job, submit_with_idempotency
from .schemas import (VisDetailEnvelope, VisSubmitEnvelope, VisSubmitSchema, VisUrlEnvelope,
                      WebsocketCheckQuerySchema)

audit = logging.getLogger("gateway.audit")
blp = Blueprint("vis", __name__, url_prefix="/vis",
                description="Visualization jobs: VNC desktops run as jobs and opened in the browser with noVNC")

OPTIONS_KEY = "hpc_gateway_vis"
# The check's answer to NGINX: the desktop's websockify token, which the snippet puts in the
# proxied websocket's query (auth_request_set). Never sent to a browser.
KEY_HEADER = "X-Hpcgw-Vis-Key"
TICKETS_KEY = "hpc_gateway_vis_tickets"
RETRY_AFTER = "2"


class Gone(GatewayError):
    """The session existed but is over: its job has ended."""
    status = 410
    default_msg = "Gone"


@blp.record_once
def _load_options(setup_state):
    # At registration, inside create_app: an invalid `vis` section fails the start-up.
    app = setup_state.app
    state = app.extensions["hpc_gateway"]
    app.extensions[OPTIONS_KEY] = load_vis_options(state.config)
    app.extensions[TICKETS_KEY] = WebsocketTickets(state.secret)


def _options() -> dict:
    return current_app.extensions[OPTIONS_KEY]


def _started(job) -> str | None:
    return job.start_time.isoformat() if job.start_time is not None else None


def _url(job, session) -> str:
    """The session's noVNC address; through NGINX, its websocket path carries a ticket."""
    options = _options()
    ticket = None
    if options["websocket"] == "proxy":
        ticket = current_app.extensions[TICKETS_KEY].issue(job.user_name, job.job_id, session.host, session.port,
                                                           _started(job), session.key)
    return vis_url(session, options, request.host_url, ticket)


def _session(job_id: str):
    """The caller's own running vis job and its session, or the error that says why not."""
    user = current_user()
    job = fetch_job(user, job_id)
    if job.user_name != user.name:
        # The address carries the desktop's password: for its owner only, admins included.
        raise Forbidden(f"job {job_id} belongs to {job.user_name}: only its owner may open its desktop")
    if not is_vis_job(job.name):
        raise NotFound(f"job {job_id} is not a visualization job (start one with POST /vis/submit)")
    if job.state in FINAL_STATES:
        raise Gone(f"visualization job {job_id} has ended ({job.state}"
                   + (f": {job.reason}" if job.reason else "") + "): start a new session")
    if job.state != JobState.RUNNING:
        raise Conflict(f"not ready yet: visualization job {job_id} is {job.state}"
                       + (f" ({job.reason})" if job.reason else "") + "; ask again in a few seconds",
                       headers={"Retry-After": RETRY_AFTER})
    session = read_vis_session(gw().scheduler, user, job, _options())
    if session is None:
        raise Conflict(f"not ready yet: the desktop of job {job_id} is starting; ask again in a few seconds",
                       headers={"Retry-After": RETRY_AFTER})
    return job, session


@blp.after_request
def _no_store(response):
    # The answers carry a desktop's password: no cache (browser, proxy) may keep them.
    response.headers["Cache-Control"] = "no-store"
    return response


@blp.route("/submit")
class VisSubmit(MethodView):
    @blp.arguments(VisSubmitSchema)
    @blp.doc(parameters=[IDEMPOTENCY_KEY_PARAMETER])
    @blp.response(200, VisSubmitEnvelope)
    @document_errors(blp, 400, 401, 403, 408, 409, 413, 415, 422, 501, 502, 503, 504)
    def post(self, args):
        """Start a visualization job: the command on a VNC desktop

        The job starts Xvnc with a fresh password, websockify in front of it and the command
        on that desktop; the session ends with the command or when the job is killed. Ask
        GET /vis/url/{jobId} for its noVNC address. An `Idempotency-Key` header makes
        retries safe."""
        spec = vis_job_spec(args["command"], options=_options(), queue=args.get("queue"),
                            geometry=args.get("geometry"), time_limit_minutes=args.get("time_limit_minutes"))
        job_id = submit_with_idempotency(submit_hook(gw().scheduler), spec)
        g.audit_job = str(job_id)                  # the audit line names the new job
        return ok({"vis": {"job_id": str(job_id)}})


@blp.route("/url/<job_id>")
class VisUrl(MethodView):
    @blp.response(200, VisUrlEnvelope)
    @document_errors(blp, 401, 403, 404, 409, 501, 502, 503, 504)
    @blp.alt_response(410, schema=ErrorEnvelope, description="The job has ended: its desktop is gone")
    def get(self, job_id):
        """The noVNC address of your running visualization job

        409 (with Retry-After) while the job waits or its desktop starts; 410 once it has
        ended. Join the address to the NGINX server that serves /novnc/."""
        job, session = _session(job_id)
        return ok({"visurl": {"url": _url(job, session)}})


@blp.route("/<job_id>")
class VisDetail(MethodView):
    @blp.response(200, VisDetailEnvelope)
    @document_errors(blp, 401, 403, 404, 409, 501, 502, 503, 504)
    @blp.alt_response(410, schema=ErrorEnvelope, description="The job has ended: its desktop is gone")
    def get(self, job_id):
        """Your visualization job: its noVNC address and state

        The same answers as GET /vis/url/{jobId}, with the job's state, host and display."""
        if job_id == "submit":
            # /vis/submit is POST only; Werkzeug falls through to this rule for a GET.
            raise MethodNotAllowed(valid_methods=["POST"])
        job, session = _session(job_id)
        return ok({"visurl": {"url": _url(job, session)},
                   "vis": {"job_id": job.job_id, "state": job.state, "native_state": job.native_state,
                           "exec_host": session.exec_host, "display": session.display}})


@blp.route("/websocket-check")
class WebsocketCheck(MethodView):
    @blp.arguments(WebsocketCheckQuerySchema, location="query")
    @blp.response(204)
    @document_errors(blp, 403, 422, 502, 503, 504)
    def get(self, args):
        """NGINX's check of a desktop's websocket (auth_request; no login)

        deploy/nginx/hpc-gateway-novnc.conf asks this before it proxies
        /novnc-ws/<address>/<port>/<ticket> to websockify: 204 when the ticket was issued by
        this gateway (or a replica sharing its secret) for that address and port, its owner
        is still a user and its visualization job is still running, with the desktop's
        websockify token in `X-Hpcgw-Vis-Key` for NGINX to pass on; 403 otherwise. Browsers
        never call it."""
        found = current_app.extensions[TICKETS_KEY].check(args["ticket"], args["address"], args["port"])
        if found is None:
            raise Forbidden("not a ticket for this desktop: ask GET /vis/url/{jobId} for a fresh address")
        owner, job_id, started, key = found
        if gw().authenticator.stamp(owner) == "":
            # Removed from the users file (or no longer known to the authenticator): the
            # desktop's address dies with the account, as its sessions do.
            raise Forbidden(f"{owner} is no longer a user of this gateway")
        try:
            job = gw().scheduler.call("get_job", user=gw().user(owner), job_id=job_id)
        except NotFound:
            job = None
        if job is None or job.user_name != owner or not is_vis_job(job.name) or job.state != JobState.RUNNING \
                or _started(job) != started:
            raise Forbidden(f"this run of visualization job {job_id} is over: its desktop is gone")
        audit.info("vis websocket job=%s user=%s address=%s", job_id, owner, request.remote_addr or "-")
        response = Response(status=204)
        del response.headers["Content-Type"]
        if key:
            response.headers[KEY_HEADER] = key
        return response
