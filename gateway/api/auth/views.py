"""Log in (get a token) and log out (revoke it on every replica)."""
from __future__ import annotations

import logging
import time

from flask import request
from flask.views import MethodView
from flask_smorest import Blueprint

from ...errors import GatewayError, TooManyRequests, Unauthorized
from ..common import bearer_token, document_errors, gw, ok
from .schemas import LoginEnvelope, LoginSchema, LogoutEnvelope

blp = Blueprint("auth", __name__, description="Log in and out")
audit = logging.getLogger("gateway.audit")


def client_address() -> str:
    return request.remote_addr or "-"


@blp.route("/login")
class Login(MethodView):
    @blp.arguments(LoginSchema)
    @blp.response(200, LoginEnvelope)
    @document_errors(blp, 400, 401, 422, 429)
    def post(self, creds):
        """Log in with a user name and password; the token expires after `timeout` idle minutes"""
        state = gw()
        limit = state.config["auth"]["login_limit"]
        name, addr = creds["username"], client_address()
        keys = [(f"fail:u:{name}", limit["max_failures_per_user"]),
                (f"fail:a:{addr}", limit["max_failures_per_address"])]
        now = time.time()
        # Each attempt is counted *before* the password is checked (atomically, in the store
        # every replica shares), so concurrent attempts cannot all pass the limit while the
        # slow check runs; a success takes its count back.
        counts = [state.store.hit(key, limit["window_seconds"], now) for key, _ in keys]
        for (key, most), count in zip(keys, counts):
            if count > most:
                _, left = state.store.count(key, now)
                for other, _ in keys:      # not tried: it does not count against the other key
                    state.store.hit(other, limit["window_seconds"], now, amount=-1)
                audit.warning("login refused (rate limit) user=%s address=%s", name, addr)
                state.metrics.login(outcome="limited")
                raise TooManyRequests(
                    f"too many failed logins for this {'user' if ':u:' in key else 'address'}: "
                    f"try again in {int(left) + 1} s", retry_after=int(left) + 1)
        try:
            with state.turns.waiting():    # PAM may ask a directory service; Argon2 is slow on purpose
                identity = state.authenticator.authenticate(name, creds["password"])
        except GatewayError:
            for key, _ in keys:            # not checked (PAM busy...): not a failure either
                state.store.hit(key, limit["window_seconds"], now, amount=-1)
            raise
        if identity is None:
            audit.warning("login failed user=%s address=%s", name, addr)
            state.metrics.login(outcome="failure")
            raise Unauthorized("Wrong user name or password")
        state.store.reset(keys[0][0])
        state.store.hit(keys[1][0], limit["window_seconds"], now, amount=-1)
        token = state.tokens.issue(identity.name)
        admin = state.is_admin(identity)
        audit.info("login ok user=%s address=%s admin=%s", identity.name, addr, admin)
        state.metrics.login(outcome="success")
        return ok({"token": {"token": token, "userName": identity.name, "admin": admin,
                             "timeoutMinutes": state.config["timeout"]}})


@blp.route("/logout")
class Logout(MethodView):
    @blp.response(200, LogoutEnvelope)
    @document_errors(blp, 401)
    def post(self):
        """Log out: the token stops working on every replica"""
        token = bearer_token()
        if token is None:
            raise Unauthorized()
        gw().tokens.revoke(token)
        audit.info("logout address=%s", client_address())
        return ok(None)
