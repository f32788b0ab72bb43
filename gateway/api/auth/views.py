"""Log in (get a token) and log out (revoke it on every replica)."""
from __future__ import annotations

import logging
import secrets
import time

from flask import request
from flask.views import MethodView

from ...errors import ServiceUnavailable, TooManyRequests, Unauthorized
from ..common import bearer_token, Blueprint, document_errors, gw, ok
from .schemas import LoginEnvelope, LoginSchema, LogoutEnvelope

blp = Blueprint("auth", __name__, description="Log in and out")
# A login over the limit with checks in flight waits this long for them, then is a 503.
LOGIN_QUEUE_SECONDS = 10.0
LOGIN_QUEUE_PAUSE = 0.05
# A check in flight holds its place until it ends, or this long after it began (a worker
# killed mid-check cannot hold one for longer). Each place expires on its own: a counter in
# a window fixed at the first check ran out under checks still in flight (the next batch then
# found none counted), and one sliding with every attempt never let a lost place go. Above
# the longest check: the PAM queue (20 s) plus the check itself (pam_faildelay: 3 s).
BUSY_SECONDS = 60
audit = logging.getLogger("gateway.audit")


@blp.after_request
def _no_store(response):
    # A login's answer is a token: no cache (browser, proxy) may keep it.
    response.headers["Cache-Control"] = "no-store"
    return response


def client_address() -> str:
    return request.remote_addr or "-"


@blp.route("/login")
class Login(MethodView):
    @blp.arguments(LoginSchema)
    @blp.response(200, LoginEnvelope)
    @document_errors(blp, 400, 401, 408, 413, 415, 422, 429, 503)
    def post(self, creds):
        """Log in with a user name and password; the token expires after `timeout` idle minutes"""
        state = gw()
        limit = state.config["auth"]["login_limit"]
        name, addr = creds["username"], client_address()
        keys = [(f"fail:u:{name}", limit["max_failures_per_user"]),
                (f"fail:a:{addr}", limit["max_failures_per_address"])]
        window = limit["window_seconds"]
        busy = [key.replace("fail:", "busy:", 1) for key, _ in keys]
        check = secrets.token_hex(8)        # this check's place among those in flight
        # Recorded failures plus the checks in flight may not pass the limit (counters in the
        # store every replica shares), so concurrent wrong passwords cannot all be tried while
        # the slow checks run. An attempt over it waits for those checks to end (a success
        # frees its place, a failure is recorded), so concurrent *right* passwords all pass.
        deadline = time.monotonic() + LOGIN_QUEUE_SECONDS
        while True:
            now = time.time()
            for key, most in keys:
                count, left = state.store.count(key, now)
                if count >= most:
                    audit.warning("login refused (rate limit) user=%s address=%s", name, addr)
                    state.metrics.login(outcome="limited")
                    raise TooManyRequests(
                        f"too many failed logins for this {'user' if ':u:' in key else 'address'}: "
                        f"try again in {int(left) + 1} s", retry_after=int(left) + 1)
            if _reserve(state.store, keys, busy, check, now):
                break
            if time.monotonic() > deadline:
                raise ServiceUnavailable("too many logins for this user or address are being checked "
                                         "right now: try again in a few seconds", retry_after=2)
            with state.turns.waiting():
                time.sleep(LOGIN_QUEUE_PAUSE)
        try:
            with state.turns.waiting():    # PAM may ask a directory service; Argon2 is slow on purpose
                identity = state.authenticator.authenticate(name, creds["password"])
            if identity is None:
                for key, _ in keys:        # recorded before this check stops counting as in flight
                    state.store.hit(key, window, now)
        finally:
            _give_back(state.store, busy, check)
        if identity is None:
            audit.warning("login failed user=%s address=%s", name, addr)
            state.metrics.login(outcome="failure")
            raise Unauthorized("Wrong user name or password")
        state.store.reset(keys[0][0])
        token = state.tokens.issue(identity.name, stamp=identity.stamp)
        admin = state.is_admin(identity)
        audit.info("login ok user=%s address=%s admin=%s", identity.name, addr, admin)
        state.metrics.login(outcome="success")
        return ok({"token": {"token": token, "userName": identity.name, "admin": admin,
                             "timeoutMinutes": state.config["timeout"]}})


def _reserve(store, keys, busy, check, now) -> bool:
    """Count this check as in flight on each key, unless failures + checks would pass the limit."""
    taken = []
    try:
        for (key, most), busy_key in zip(keys, busy):
            taken.append(busy_key)
            in_flight = store.begin(busy_key, check, BUSY_SECONDS, now)
            # Failures read after this check is counted (not the ones read for the 429): one
            # recorded meanwhile is seen, since a failure is recorded before its check stops
            # counting.
            if store.count(key, now)[0] + in_flight > most:
                break
        else:
            return True
    except BaseException:
        _give_back(store, taken, check)
        raise
    _give_back(store, taken, check)
    return False


def _give_back(store, busy, check) -> None:
    for key in busy:
        try:
            store.end(key, check)
        except Exception as exc:  # noqa: BLE001 - the place expires by itself (BUSY_SECONDS)
            logging.getLogger(__name__).warning("cannot give back a login check's place: %s", exc)


@blp.route("/logout")
class Logout(MethodView):
    @blp.response(200, LogoutEnvelope)
    @document_errors(blp, 401, 503)
    def post(self):
        """Log out: the token stops working on every replica"""
        token = bearer_token()
        if token is None:
            raise Unauthorized()
        user = gw().tokens.revoke(token)
        audit.info("logout user=%s address=%s", user, client_address())
        return ok(None)
