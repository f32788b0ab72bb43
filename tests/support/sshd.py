"""A real OpenSSH server for the tests (Debian's openssh-server), on 127.0.0.1.

API::

    from tests.support.sshd import sshd, sshd_available

    with sshd(users=("root", "gwalice")) as server:   # -> SshdServer
        server.host, server.port                       # "127.0.0.1", a free port
        server.user                                    # the first of ``users``
        server.identity_file, server.known_hosts_file  # client key and pinned host key
        server.transport_options(user="gwalice")       # dict for make_transport()
        # {"type": "ssh", "host": ..., "port": ..., "user": ..., "identity_file": ...,
        #  "known_hosts_file": ...}
        server.log_file, server.read_log()             # sshd's own log (-E)

``sshd(users, host=, port=, options={"MaxSessions": 1}, extra_config="Match ...")``:
``options`` replace the generated settings (sshd keeps the first value of a keyword);
``extra_config`` is appended verbatim (for ``Match`` blocks).

``sshd_available()`` -> (bool, why): whether this host can run it (root, /usr/sbin/sshd,
ssh-keygen, ssh). Use it with ``tests.support.require`` so that CI fails rather than skips.

What it does on enter: makes a temporary directory, generates an ed25519 host key and an
ed25519 client key with ssh-keygen, writes an ``authorized_keys`` holding the client key (one
file used for every allowed user), a ``known_hosts`` pinning ``[127.0.0.1]:PORT`` to the host
key, and an ``sshd_config`` (only public-key auth, ``AllowUsers`` = ``users``, root allowed
with a key only, ``UsePAM no``, ``StrictModes no`` because the files live under /tmp, which
is world-writable and StrictModes would refuse it; ``MaxSessions 64`` so many multiplexed
commands can share a connection). Then it runs ``/usr/sbin/sshd -D -e -f CONFIG -E LOG`` and
waits until the port accepts connections. On exit it terminates sshd and removes the
directory. It needs root (sshd must switch to the logged-in user); ``/run/sshd`` (the
privilege separation directory) is created when missing, as on a fresh Debian 12.

With ``UsePAM no``, OpenSSH refuses accounts whose password field is locked (``!`` prefix),
which is how ``useradd`` creates them; ``unlock_users=True`` (default) changes a password
field that is exactly ``!`` or ``!!`` (no password ever set) to ``*`` (no password login
either, but not "locked") for the non-root ``users``, and leaves every other account alone.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from . import free_port, user_exists, wait_for_port

SSHD = "/usr/sbin/sshd"


def sshd_available() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "the test sshd needs root"
    for binary in (SSHD, shutil.which("ssh-keygen"), shutil.which("ssh")):
        if not binary or not os.access(binary, os.X_OK):
            return False, "OpenSSH (openssh-server and openssh-client) is not installed"
    return True, ""


@dataclass
class SshdServer:
    host: str
    port: int
    user: str
    users: tuple
    identity_file: str
    known_hosts_file: str
    config_file: str
    log_file: str
    pid: int

    def transport_options(self, user: str | None = None, **extra) -> dict:
        opts = {"type": "ssh", "host": self.host, "port": self.port,
                "user": user or self.user, "identity_file": self.identity_file,
                "known_hosts_file": self.known_hosts_file}
        opts.update(extra)
        return opts

    def read_log(self) -> str:
        try:
            return Path(self.log_file).read_text(errors="replace")
        except OSError:
            return ""


def _unlock(user: str) -> None:
    """See the module docstring: '!' (never had a password) -> '*'."""
    try:
        with open("/etc/shadow") as fh:
            for line in fh:
                name, _, rest = line.partition(":")
                if name == user:
                    if rest.split(":", 1)[0] in ("!", "!!"):
                        subprocess.run(["usermod", "-p", "*", user], check=True,
                                       stdout=subprocess.DEVNULL)
                    return
    except OSError:
        pass


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # Field 4 (after the parenthesised command name) is the parent pid.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry))
    return found


@contextmanager
def sshd(users: Sequence[str] = ("root",), *, host: str = "127.0.0.1", port: int | None = None,
         unlock_users: bool = True, options: dict | None = None, extra_config: str = "",
         start_timeout: float = 15.0) -> Iterator[SshdServer]:
    ok, why = sshd_available()
    if not ok:
        raise RuntimeError(why)
    users = tuple(users)
    if not users:
        raise ValueError("at least one user")
    for user in users:
        if not user_exists(user):
            raise RuntimeError(f"no such Unix user {user!r}")
        if unlock_users and user != "root":
            _unlock(user)
    # Privilege separation directory: created by the Debian service unit, not by the package.
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    tmp = Path(tempfile.mkdtemp(prefix="gw-sshd-"))
    proc = None
    try:
        # Non-root users' sessions read authorized_keys as themselves: let them traverse.
        os.chmod(tmp, 0o711)
        keys = tmp / "client"
        keys.mkdir(mode=0o700)
        host_key = tmp / "ssh_host_ed25519_key"
        client_key = keys / "id_ed25519"
        for path, comment in ((host_key, "gateway-test-host"), (client_key, "gateway-test-client")):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                            "-f", str(path)], check=True, stdin=subprocess.DEVNULL)
        authorized = tmp / "authorized_keys"
        authorized.write_text(Path(f"{client_key}.pub").read_text())
        os.chmod(authorized, 0o644)

        port = port or free_port(host)
        host_pub = Path(f"{host_key}.pub").read_text().split()
        known_hosts = keys / "known_hosts"
        known_hosts.write_text(f"[{host}]:{port} {host_pub[0]} {host_pub[1]}\n")

        config = tmp / "sshd_config"
        log = tmp / "sshd.log"
        # sshd keeps the first value it reads for a keyword: overrides replace defaults here.
        settings = {
            "ListenAddress": f"{host}:{port}",
            "HostKey": str(host_key),
            "PidFile": str(tmp / "sshd.pid"),
            "AuthorizedKeysFile": str(authorized),
            "AuthenticationMethods": "publickey",
            "PubkeyAuthentication": "yes",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "HostbasedAuthentication": "no",
            "PermitRootLogin": "prohibit-password" if "root" in users else "no",
            "AllowUsers": " ".join(users),
            "UsePAM": "no",
            "StrictModes": "no",
            "PrintMotd": "no",
            "PrintLastLog": "no",
            "X11Forwarding": "no",
            "AllowTcpForwarding": "no",
            "MaxSessions": "64",
            "MaxStartups": "64:30:128",
            "LogLevel": "INFO",
            "Subsystem": "sftp internal-sftp",
        }
        settings.update({str(k): str(v) for k, v in (options or {}).items()})
        config.write_text("".join(f"{k} {v}\n" for k, v in settings.items()) + extra_config + "\n")
        check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd refused its test configuration: {check.stderr.strip()}")
        proc = subprocess.Popen([SSHD, "-D", "-f", str(config), "-E", str(log)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for_port(host, port, start_timeout, proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; sshd log:\n{log.read_text(errors='replace') if log.exists() else ''}")
        yield SshdServer(host=host, port=port, user=users[0], users=users,
                         identity_file=str(client_key), known_hosts_file=str(known_hosts),
                         config_file=str(config), log_file=str(log), pid=proc.pid)
    finally:
        if proc is not None:
            # Per-connection sshd processes are the listener's children in sessions of their
            # own; end them too so no connection outlives the server.
            for child in _children(proc.pid):
                try:
                    os.kill(child, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
