"""Health (no token) and the offline Swagger UI."""
from __future__ import annotations

import os
import threading
import time

from flask import Response, current_app, send_from_directory, url_for
from flask.views import MethodView
from marshmallow import Schema, fields

from ...errors import GatewayError, NotFound
from ..common import Blueprint, envelope, gw, ok

blp = Blueprint("system", __name__, description="Health and API documentation")


class SchedulerHealthSchema(Schema):
    backend = fields.String()
    ok = fields.Boolean()
    latencyMs = fields.Float(attribute="latency_ms", allow_none=True)
    detail = fields.String(allow_none=True)


class HealthSchema(Schema):
    gateway = fields.String(metadata={"example": "ok"})
    scheduler = fields.Nested(SchedulerHealthSchema)


HealthEnvelope = envelope("HealthEnvelope", Schema.from_dict({"health": fields.Nested(HealthSchema)}, name="HealthData"))


# /health needs no token, and asking the scheduler is a command (scontrol ping; over SSM a Run
# Command): within this many seconds of a check *started*, a worker's callers share its
# answer, and callers that arrive while one is running wait for it instead of starting more.
HEALTH_SHARED_SECONDS = 1.0


class _SharedCheck:
    def __init__(self):
        self.lock = threading.Lock()
        self.started = self.finished = float("-inf")
        self.value = None

    def get(self, check, turns):
        arrived = time.monotonic()
        if arrived - self.started < HEALTH_SHARED_SECONDS:
            return self.value
        # Waiting for another caller's check gives this request's turn away (gateway/turns.py):
        # the checker gives its own away during the command and needs one back afterwards.
        with turns.waiting():
            self.lock.acquire()
        try:
            # A check that ended after this caller arrived answers it too, however long it took
            # (a slow ping during an outage must not make each waiter ping again in turn).
            if self.finished >= arrived or time.monotonic() - self.started < HEALTH_SHARED_SECONDS:
                return self.value
            started = time.monotonic()
            value = check()
            self.value, self.started, self.finished = value, started, time.monotonic()
            return value
        finally:
            self.lock.release()


HEALTH_KEY = "hpc_gateway_health"


@blp.record_once
def _shared_check(setup_state) -> None:
    setup_state.app.extensions[HEALTH_KEY] = _SharedCheck()


def _scheduler_health() -> dict:
    state = gw()
    try:
        health = state.scheduler.call("health")
        return {"backend": state.scheduler.name, "ok": bool(health.ok),
                "latency_ms": health.latency_ms, "detail": health.detail}
    except GatewayError as exc:
        return {"backend": state.scheduler.name, "ok": False, "latency_ms": None, "detail": exc.msg}


@blp.route("/health")
class Health(MethodView):
    @blp.response(200, HealthEnvelope)
    @blp.alt_response(503, schema=HealthEnvelope, description="The scheduler does not answer")
    def get(self):
        """Whether the gateway is up and the scheduler answers, and how fast (no token needed;
        callers within a second share one check)"""
        sched = dict(current_app.extensions[HEALTH_KEY].get(_scheduler_health, gw().turns))
        body = {"health": {"gateway": "ok", "scheduler": sched}}
        if sched["ok"]:
            return ok(body)
        return {"msg": f"The scheduler is not answering: {sched['detail']}", "data": body}, 503, {"Retry-After": "5"}


SWAGGER_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>HPC Gateway API</title>
  <link rel="stylesheet" href="swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="swagger-ui-bundle.js"></script>
  <script src="swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "{spec_url}",
      dom_id: "#swagger-ui",
      deepLinking: true,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout",
      validatorUrl: null
    });
  </script>
</body>
</html>
"""


def swagger_dir() -> str:
    import swagger_ui_bundle
    return swagger_ui_bundle.swagger_ui_path


def swagger(filename="index.html"):
    """Swagger UI served from local files (no CDN: the page works offline)."""
    if filename in ("", "index.html"):
        page = SWAGGER_PAGE.replace("{spec_url}", url_for("api-docs.openapi_json"))
        return Response(page, mimetype="text/html")
    if filename not in ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js",
                        "favicon-32x32.png", "favicon-16x16.png") or not os.path.isfile(
            os.path.join(swagger_dir(), filename)):
        raise NotFound(f"no such documentation file: {filename}")
    return send_from_directory(swagger_dir(), filename, max_age=3600)
