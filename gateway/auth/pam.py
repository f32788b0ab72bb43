"""PAM authentication: the cluster's own Unix accounts (python-pam).

The PAM service is config ``auth.pam_service`` (default ``login``). Checking passwords of
other users through pam_unix needs read access to /etc/shadow, i.e. the gateway runs as root
or in the ``shadow`` group.
"""
from __future__ import annotations

import threading

from . import Authenticator, Identity
from .users_file import valid_username


class PamAuthenticator(Authenticator):
    def __init__(self, auth_config: dict):
        import pam  # python-pam; imported here so the default backend does not need libpam
        self._pam = pam
        self.service = auth_config.get("pam_service") or "login"
        self._lock = threading.Lock()   # PAM modules are not all thread-safe

    def authenticate(self, username, password):
        if not valid_username(username):
            return None
        with self._lock:
            ok = self._pam.authenticate(username, password, service=self.service)
        return Identity(name=username) if ok else None


def make_authenticator(auth_config: dict) -> Authenticator:
    return PamAuthenticator(auth_config)
