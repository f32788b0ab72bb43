"""Authentication backends: who is this user, given a name and a password.

A backend is found by name in the entry-point group ``hpc_gateway.auth`` (the built-in
``users_file`` and ``pam`` are registered there too), so an LDAP backend is one more pip
distribution, with no change to the core. A backend is built as ``factory(auth_config)``
and answers ``authenticate(username, password) -> Identity | None``.
"""
from __future__ import annotations

import pwd
import time
from dataclasses import dataclass
from importlib.metadata import entry_points

from ..errors import ConfigError

ENTRY_POINT_GROUP = "hpc_gateway.auth"


@dataclass(frozen=True)
class Identity:
    name: str
    admin: bool = False          # the backend's own opinion (users file role); config admins add to it
    stamp: str | None = None     # the credential stamp of what was verified (Authenticator.stamp)


class Authenticator:
    """Interface of an authentication backend."""

    def authenticate(self, username: str, password: str) -> Identity | None:  # pragma: no cover
        raise NotImplementedError

    def stamp(self, username: str) -> str | None:
        """A short string that changes when ``username``'s credentials change; "" once the
        backend no longer knows the user; None when it cannot tell (the default).

        A session carries the stamp of its login and ends when the stamp no longer matches,
        so a removed user or a new password ends sessions however the change was made.
        Called on every authenticated request: it must be cheap."""
        return None


_uids: dict[str, tuple[int | None, float]] = {}
UID_CACHE_SECONDS = 60.0


def unix_uid(name: str) -> int | None:
    """The Unix uid of ``name`` on this host, when it has one. Cached for a minute: an NSS
    lookup per request would cost more than the whole session check."""
    now = time.monotonic()
    hit = _uids.get(name)
    if hit is not None and hit[1] > now:
        return hit[0]
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        uid = None
    if len(_uids) > 10000:
        _uids.clear()
    _uids[name] = (uid, now + UID_CACHE_SECONDS)
    return uid


def load_authenticator(auth_config: dict) -> Authenticator:
    name = auth_config.get("backend", "users_file")
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if name not in found:
        raise ConfigError(f"unknown auth backend {name!r}; installed: {', '.join(sorted(found)) or 'none'}")
    return found[name].load()(auth_config)
