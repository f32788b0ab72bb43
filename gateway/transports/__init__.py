"""Transports carry an argument list (plus stdin) to where a scheduler's commands run and
bring back exit code, stdout and stderr. They know no scheduler.

- ``local``: a subprocess on this host, never a shell.
- ``ssh``: the head node over OpenSSH (arguments shell-quoted for the remote shell).
- ``ssm``: AWS Systems Manager Run Command on the head node's instance.

``run(argv, stdin=None, timeout=None, as_user=None, private=False)``: ``as_user`` runs the
command as that Unix user through ``sudo -n -u USER --`` (no shell); ``private`` keeps its
output out of anything that records output (over SSM: command history, output bucket). A command that does not finish in time
raises ``SchedulerTimeout`` (504); a transport that cannot reach its target raises
``SchedulerUnavailable`` (503). A non-zero exit code is *not* an error here: callers decide.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import ConfigError


@dataclass
class CommandResult:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")


class Transport:
    """Base class; subclasses implement ``_run``."""

    name = "base"

    def __init__(self, timeout: float = 30.0, sudo: Sequence[str] = ("sudo", "-n")):
        self.timeout = float(timeout)
        self.sudo = list(sudo)

    def wrap_user(self, argv: Sequence[str], as_user: str | None) -> list[str]:
        argv = [str(a) for a in argv]
        if as_user:
            return [*self.sudo, "-u", as_user, "--", *argv]
        return argv

    #: Whether what commands print is kept by the way it travels (SSM's command history and
    #: output bucket); such a transport's ``_run`` takes ``private``.
    keeps_output = False
    #: Whether a connection lost while a command runs can leave its outcome unknown (SSH,
    #: SSM): such a transport's ``_run`` takes ``retry_safe``.
    tells_retry_safe = False

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
            timeout: float | None = None, as_user: str | None = None,
            env: dict[str, str] | None = None, private: bool = False,
            retry_safe: bool = False) -> CommandResult:
        """``private``: the output is a secret (a VNC password): a transport that keeps
        output must carry this one another way. Pipes keep nothing: it changes nothing.
        ``retry_safe``: the command only reads, so a connection lost while it ran is an
        outage to retry (503), not an unknown outcome (504)."""
        if not argv:
            raise ValueError("empty argument list")
        extra = {"private": True} if private and self.keeps_output else {}
        if retry_safe and self.tells_retry_safe:
            extra["retry_safe"] = True
        return self._run(self.wrap_user(argv, as_user), stdin=stdin,
                         timeout=self.timeout if timeout is None else timeout, env=env, **extra)

    def _run(self, argv: list[str], *, stdin: bytes | None, timeout: float,
             env: dict[str, str] | None) -> CommandResult:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; the default holds none."""


def run_command(transport, argv: Sequence[str], *, private: bool = False, retry_safe: bool = False,
                **kw) -> CommandResult:
    """``transport.run(argv, **kw)``, with ``private`` passed only to a transport that keeps
    output (SSM) and ``retry_safe`` only to one that tells (SSH, SSM): a plugin's own transport
    (or a test's) need not take the arguments."""
    if private and getattr(transport, "keeps_output", False):
        kw["private"] = True
    if retry_safe and getattr(transport, "tells_retry_safe", False):
        kw["retry_safe"] = True
    return transport.run(argv, **kw)


def check_not_the_gateways_account(transport: Transport, account: str | None, plugin: str,
                                   allowed: bool) -> None:
    """Refuse ``run_as: service`` whose jobs would run as the gateway process's own Unix
    account on this host (the local transport, and no other ``account``; None: the
    transport's own). Such jobs can read the gateway's secret key, users file and sessions:
    any user could then make an administrator's token. ``allowed`` (the plugin's
    ``allow_gateway_account``) accepts it, for one trusted user or a demo."""
    if allowed or getattr(transport, "name", "") != "local":
        return
    import os
    import pwd
    me = pwd.getpwuid(os.geteuid()).pw_name
    if account not in (None, me):
        return
    raise ConfigError(
        f"{plugin}: run_as: service with the local transport runs every user's jobs as the "
        f"gateway's own account ({me}), which can read the gateway's secret key and users file. "
        "Use run_as: sudo, or run the jobs as another account (service_user, or a transport of "
        "type ssh or ssm), or set allow_gateway_account: true if every user is trusted like "
        "an administrator")


def make_transport(options: dict | None) -> Transport:
    """Build a transport from a plugin's ``transport`` options: ``{"type": "local"|"ssh"|"ssm", ...}``."""
    options = dict(options or {})
    kind = options.pop("type", "local")
    if kind == "local":
        from .local import LocalTransport
        return LocalTransport(**options)
    if kind == "ssh":
        from .ssh import SshTransport
        return SshTransport(**options)
    if kind == "ssm":
        from .ssm import SsmTransport
        return SsmTransport(**options)
    raise ConfigError(f"unknown transport type {kind!r}: choose local, ssh or ssm")
