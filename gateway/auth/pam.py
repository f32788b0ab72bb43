"""PAM authentication: the cluster's own Unix accounts (python-pam).

The PAM service is config ``auth.pam_service`` (default ``login``). Checking passwords of
other users through pam_unix needs read access to /etc/shadow, i.e. the gateway runs as root
or in the ``shadow`` group.
"""
from __future__ import annotations

import threading

from ..errors import ServiceUnavailable
from . import Authenticator, Identity
from .users_file import valid_username

# PAM checks at once per process. A failed check takes seconds on purpose (pam_faildelay: 3 s
# in Debian's "login" service), so one process-wide lock let a handful of wrong passwords
# queue every other login behind them (measured: a good login answered after 21 s behind six
# bad ones). Each check gets its own PAM handle; a few run at once, and a login that cannot
# get a turn in time is a 503 to retry, not an unbounded wait.
CONCURRENT_CHECKS = 4
TURN_WAIT_SECONDS = 20.0


class PamAuthenticator(Authenticator):
    def __init__(self, auth_config: dict):
        import pam  # python-pam; imported here so the default backend does not need libpam
        self._pam = pam
        self.service = auth_config.get("pam_service") or "login"
        self._turns = threading.BoundedSemaphore(int(auth_config.get("pam_concurrent_checks") or CONCURRENT_CHECKS))

    def authenticate(self, username, password):
        if not valid_username(username):
            return None
        if not self._turns.acquire(timeout=TURN_WAIT_SECONDS):
            raise ServiceUnavailable("too many logins are being checked right now: try again in a few seconds",
                                     retry_after=5)
        try:
            # A handle of its own (python-pam's module-level authenticate shares one).
            ok = self._pam.PamAuthenticator().authenticate(username, password, service=self.service)
        finally:
            self._turns.release()
        return Identity(name=username) if ok else None


def make_authenticator(auth_config: dict) -> Authenticator:
    return PamAuthenticator(auth_config)
