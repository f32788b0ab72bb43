"""Authentication backends: who is this user, given a name and a password.

A backend is found by name in the entry-point group ``hpc_gateway.auth`` (the built-in
``users_file`` and ``pam`` are registered there too), so an LDAP backend is one more pip
distribution, with no change to the core. A backend is built as ``factory(auth_config)``
and answers ``authenticate(username, password) -> Identity | None``.
"""
from __future__ import annotations

import pwd
from dataclasses import dataclass
from importlib.metadata import entry_points

from ..errors import ConfigError

ENTRY_POINT_GROUP = "hpc_gateway.auth"


@dataclass(frozen=True)
class Identity:
    name: str
    admin: bool = False          # the backend's own opinion (users file role); config admins add to it


class Authenticator:
    """Interface of an authentication backend."""

    def authenticate(self, username: str, password: str) -> Identity | None:  # pragma: no cover
        raise NotImplementedError


def unix_uid(name: str) -> int | None:
    """The Unix uid of ``name`` on this host, when it has one."""
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def load_authenticator(auth_config: dict) -> Authenticator:
    name = auth_config.get("backend", "users_file")
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if name not in found:
        raise ConfigError(f"unknown auth backend {name!r}; installed: {', '.join(sorted(found)) or 'none'}")
    return found[name].load()(auth_config)
