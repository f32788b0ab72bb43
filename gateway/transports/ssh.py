"""Run an argument list on a remote host through the OpenSSH client.

The remote side always runs the command through the login user's shell, so every argument
is quoted with :func:`shlex.join` (POSIX single quotes): nothing a client sends is ever
interpreted by a shell. stdin passes through as bytes; stdout and stderr come back as bytes.

Connections are reused: the first command starts a ControlMaster (``ssh -M -N``) whose
socket lives in a private 0700 directory; later commands attach to it, so a command costs a
session open, not a TCP + key exchange. The master goes away ``control_persist`` seconds
after the last command (``ssh``'s ControlPersist) or on :meth:`SshTransport.close`.
``control_persist=0`` (or None) disables multiplexing. When the server refuses one more
session on the shared connection (its ``MaxSessions``, 10 by default), ssh itself falls
back to a connection of its own for that command; its notice about it is removed from stderr.

Errors:

- the connection cannot be made (refused, no route, DNS, host key, authentication):
  :class:`SchedulerUnavailable` (503). ``ssh`` reports those with exit code 255; a remote
  command that itself exits 255 is returned as such unless its stderr ends with one of
  ssh's own connection messages.
- the connection is lost once it was up (the master's connection dies, "Connection to ...
  closed by remote host", a reset in the middle of the session): the command may already
  have acted (sbatch may have submitted), so the outcome is unknown: :class:`SchedulerTimeout`
  (504, no Retry-After), never a 503 that invites the client to send it again. A caller
  whose command is safe to repeat (a read) says so with ``retry_safe=True`` and gets the 503.
- the command does not finish within ``timeout`` (which includes the time spent starting the
  master): the local ``ssh`` process group is killed and :class:`SchedulerTimeout` (504)
  raised. Because sshd does not signal a non-tty session whose client went away, the remote
  command is also wrapped in coreutils ``timeout -k 2 <timeout+1>`` (``remote_timeout=True``,
  the default) so it cannot outlive the request by more than a few seconds.

``env`` is applied on the remote side with ``env NAME=VALUE ...`` before the command (outside
``sudo``, whose own env_reset rules then apply, exactly as for the local transport).
"""
from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from typing import Mapping, Sequence

from ..errors import ConfigError, SchedulerTimeout, SchedulerUnavailable
from . import CommandResult, Transport

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# Messages the OpenSSH client prints (on its own stderr, after anything the remote command
# wrote) when it could not connect: no TCP connection, no key exchange, no login, no session.
# The remote command never started, so repeating it is safe. "Connection closed by HOST port
# N" is an EOF during key exchange or login (an EOF in the session reads "Connection to HOST
# closed by remote host.").
_NOT_CONNECTED = (
    r"ssh: .*",
    r".*Connection refused.*",
    r"Connection closed by \S+ port \d+\.?",
    r"Connection to \S+ port \d+ timed out\.?",
    r".*Could not resolve hostname.*", r".*No route to host.*", r".*Network is unreachable.*",
    r".*Host key verification failed\.", r".*REMOTE HOST IDENTIFICATION HAS CHANGED.*",
    r".*Permission denied \(.*\)\.", r".*kex_exchange_identification: .*", r".*banner exchange.*",
    r".*Too many authentication failures.*",
    r".*Control socket connect.*", r".*Session open refused by peer.*", r"mux_client_hello_exchange: .*",
    r".*Bad owner or permissions on .*", r"Load key .*", r".*[Nn]o such identity.*",
)
# ...and those of a connection lost once it was up (a reset, a broken pipe, the master going
# away): the command may have acted, its outcome is unknown.
_CONNECTION_LOST = (
    r".*Connection (timed out|reset|closed)( by .*)?\.?",
    r"Connection to .* (closed by remote host|timed out)\.?",
    r"Shared connection to .* closed\.?",
    r"Timeout, server .* not responding\.?",
    r"(Read from|Write to) remote host .*",
    r"Disconnected from \S+ port \d+.*",
    r".*mux_client_.*", r".*Broken pipe.*", r".*client_loop: .*",
)
# Exit code 255 + the last line matching either: an outage, not the command's own exit code.
_SSH_NOT_CONNECTED = re.compile("^(" + "|".join(_NOT_CONNECTED) + ")$", re.MULTILINE)
_SSH_CONNECTION_ERRORS = re.compile("^(" + "|".join(_NOT_CONNECTED + _CONNECTION_LOST) + ")$", re.MULTILINE)

# When the shared connection refuses another session (the server's MaxSessions) or the
# master is missing, ssh itself falls back to a connection of its own, and says so on stderr
# before the remote command starts. Those notices are not the command's: drop them.
_MUX_NOTICE = re.compile(
    rb"\A(?:(?:mux_client_request_session: session request failed: [^\n]*"
    rb"|ControlSocket [^\n]* already exists, disabling multiplexing"
    rb"|mux_client_hello_exchange: [^\n]*"
    rb"|Control socket connect\([^\n]*\): [^\n]*)\r?\n)+")


def remote_command_line(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """The one shell command line that runs ``argv`` (with ``env``) literally on a remote shell.

    Pure; shared by the SSH and SSM transports.
    """
    words = [str(a) for a in argv]
    if env:
        assigns = []
        for name, value in env.items():
            if not _ENV_NAME.match(str(name)):
                raise ValueError(f"invalid environment variable name {name!r}")
            assigns.append(f"{name}={value}")
        words = ["env", *assigns, *words]
    return shlex.join(words)


class SshTransport(Transport):
    """Commands on ``user@host:port`` over OpenSSH with connection reuse."""

    name = "ssh"
    tells_retry_safe = True

    def __init__(self, host: str, user: str | None = None, port: int = 22,
                 identity_file: str | None = None, known_hosts_file: str | None = None,
                 timeout: float = 30.0, connect_timeout: float = 5.0,
                 control_persist: int | None = 60, options: Mapping[str, str] | None = None,
                 sudo: Sequence[str] = ("sudo", "-n"), remote_timeout: bool = True,
                 ssh_binary: str = "ssh"):
        super().__init__(timeout=timeout, sudo=sudo)
        if not host or str(host).startswith("-"):
            raise ConfigError(f"ssh transport: invalid host {host!r}")
        if user is not None and (not user or str(user).startswith("-")):
            raise ConfigError(f"ssh transport: invalid user {user!r}")
        self.host = str(host)
        self.user = user
        self.port = int(port)
        self.identity_file = identity_file
        self.known_hosts_file = known_hosts_file
        self.connect_timeout = float(connect_timeout)
        self.control_persist = int(control_persist or 0)
        self.extra_options = {str(k): str(v) for k, v in (options or {}).items()}
        self.remote_timeout = bool(remote_timeout)
        found = shutil.which(ssh_binary)
        if found is None:
            raise ConfigError(f"ssh transport: OpenSSH client {ssh_binary!r} not found on PATH")
        self.ssh_binary = found
        self._lock = threading.Lock()
        # One master start at a time; the others wait for it only as long as their own
        # deadline allows (a stalled server must not queue requests one behind the other).
        self._master_lock = threading.Lock()
        self._control_dir: str | None = None
        self._owner_pid: int | None = None

    @property
    def _control_path(self) -> str | None:
        """The master's socket, in a private 0700 directory of this process (None: no reuse).

        Created on first use and again in a forked child (gunicorn workers), so that no
        process ever closes or removes another one's master.
        """
        if self.control_persist <= 0:
            return None
        if self._control_dir is None or self._owner_pid != os.getpid():
            with self._lock:
                if self._control_dir is None or self._owner_pid != os.getpid():
                    self._control_dir = tempfile.mkdtemp(prefix="gw-ssh-")
                    self._owner_pid = os.getpid()
        return os.path.join(self._control_dir, "master")

    # -- command line -----------------------------------------------------------------
    def _base_options(self) -> list[str]:
        opts = {
            "BatchMode": "yes",
            "ConnectTimeout": str(max(1, math.ceil(self.connect_timeout))),
            "ServerAliveInterval": "15",
            "ServerAliveCountMax": "3",
            "LogLevel": "ERROR",
            "ClearAllForwardings": "yes",
            "ForwardAgent": "no",
            "ForwardX11": "no",
            "RequestTTY": "no",
        }
        if self.known_hosts_file:
            opts["StrictHostKeyChecking"] = "yes"
            opts["UserKnownHostsFile"] = self.known_hosts_file
            opts["GlobalKnownHostsFile"] = "/dev/null"
        if self.identity_file:
            opts["IdentityFile"] = self.identity_file
            opts["IdentitiesOnly"] = "yes"
        if self.user:
            opts["User"] = self.user
        opts["Port"] = str(self.port)
        opts.update(self.extra_options)
        args: list[str] = []
        for key, value in opts.items():
            args += ["-o", f"{key}={value}"]
        return args

    def ssh_argv(self, command: str, *, multiplex: bool = True) -> list[str]:
        """The local ``ssh`` argument list that runs ``command`` (one remote shell line)."""
        args = [self.ssh_binary, *self._base_options()]
        control_path = self._control_path if multiplex else None
        if control_path:
            args += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_path}",
                     "-o", f"ControlPersist={self.control_persist}"]
        else:
            args += ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
        # "--" ends ssh's options; the host cannot be mistaken for one (checked in __init__).
        return [*args, "-T", "--", self.host, command]

    def remote_line(self, argv: Sequence[str], timeout: float,
                    env: Mapping[str, str] | None = None) -> str:
        words = list(argv)
        if self.remote_timeout:
            # Backstop only: the local deadline (timeout) always fires first.
            words = ["timeout", "-k", "2", f"{math.ceil(timeout) + 1}s", *words]
        return remote_command_line(words, env)

    # -- master -----------------------------------------------------------------------
    def _ensure_master(self, deadline_s: float) -> None:
        """Start the ControlMaster if its socket is missing (one at a time).

        Within ``deadline_s`` in all, waiting included: while another thread is starting the
        master, this one waits for it at most until its own deadline (then 504), never for
        every attempt queued before it.
        """
        control_path = self._control_path
        if not control_path or os.path.exists(control_path):
            return
        start = time.monotonic()
        if not self._master_lock.acquire(timeout=max(0.0, deadline_s)):
            raise SchedulerTimeout(
                f"ssh to {self.host}:{self.port} did not connect within {deadline_s:g} s")
        try:
            if os.path.exists(control_path):
                return
            remaining = deadline_s - (time.monotonic() - start)
            if remaining <= 0:
                raise SchedulerTimeout(
                    f"ssh to {self.host}:{self.port} did not connect within {deadline_s:g} s")
            args = [self.ssh_binary, *self._base_options(),
                    "-o", "ControlMaster=yes", "-o", f"ControlPath={control_path}",
                    "-o", f"ControlPersist={self.control_persist}",
                    "-N", "-n", "-T", "--", self.host]
            # ssh forks the master into the background (its own session, stdio on
            # /dev/null) once authenticated; this process then exits 0.
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, start_new_session=True,
                                    close_fds=True)
            try:
                _, err = proc.communicate(timeout=remaining)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise SchedulerTimeout(
                    f"ssh to {self.host}:{self.port} did not connect within {deadline_s:g} s")
            if proc.returncode != 0:
                raise SchedulerUnavailable(
                    f"cannot connect to {self.host}:{self.port} over ssh: "
                    f"{_last_line(err) or 'exit code %d' % proc.returncode}")
        finally:
            self._master_lock.release()

    def _master_alive(self, timeout: float) -> bool:
        """Whether the master still answers (``ssh -O check``); False when it is gone."""
        control_path = self._control_path
        if not control_path or not os.path.exists(control_path):
            return False
        try:
            check = subprocess.run([self.ssh_binary, "-o", f"ControlPath={control_path}",
                                    "-O", "check", "--", self.host],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return check.returncode == 0

    # -- run --------------------------------------------------------------------------
    def _run(self, argv, *, stdin, timeout, env, retry_safe=False):
        multiplex = self.control_persist > 0
        remaining = timeout
        if multiplex:
            # The master's connection time counts against the same deadline: the command
            # gets what is left of it.
            start = time.monotonic()
            self._ensure_master(max(0.1, min(timeout, self.connect_timeout * 2 + 1)))
            remaining = timeout - (time.monotonic() - start)
            if remaining <= 0:
                raise SchedulerTimeout(
                    f"command on {self.host} did not finish within {timeout:g} s")
        line = self.remote_line(argv, remaining, env)
        result = self._exec(self.ssh_argv(line, multiplex=multiplex), stdin, remaining,
                            shown_timeout=timeout)
        if multiplex:
            result.stderr = _strip_mux_notices(result.stderr)
        if result.returncode != 255:
            return result
        if _is_connection_error(result.stderr):
            why = _last_line(result.stderr)
            may_have_run = not _SSH_NOT_CONNECTED.match(why)
        elif multiplex and not self._master_alive(max(1.0, min(5.0, self.connect_timeout))):
            # Through a master, a lost connection prints nothing at LogLevel=ERROR: the client
            # just exits 255, as a command that exits 255 does. Only the master tells them
            # apart: it is gone with its connection, and alive after a command's own exit code.
            why, may_have_run = "the shared connection was lost", True
        else:
            return result
        if may_have_run and not retry_safe:
            # Whether the command acted is unknown: no Retry-After (a 503 would invite a
            # second sbatch).
            raise SchedulerTimeout(
                f"the ssh connection to {self.host}:{self.port} was lost while the command ran "
                f"({why}): it may or may not have taken effect; check before repeating it")
        raise SchedulerUnavailable(f"ssh to {self.host}:{self.port} failed: {why}")

    def popen(self, argv, *, as_user=None, stdin=None, stdout=None, stderr=None, timeout=None,
              env=None) -> subprocess.Popen:
        """Start ``argv`` on the host and return the local ``ssh`` process at once, with the
        given stdio: for callers that stream data in or out (file transfers). ``timeout``
        bounds the remote command (the coreutils ``timeout`` backstop); the caller owns the
        local process. ssh's connection errors arrive as exit code 255 (see
        :meth:`connection_error`).
        """
        timeout = self.timeout if timeout is None else timeout
        line = self.remote_line(self.wrap_user(argv, as_user), timeout, env)
        multiplex = self.control_persist > 0
        if multiplex:
            self._ensure_master(max(0.1, self.connect_timeout * 2 + 1))
        try:
            return subprocess.Popen(self.ssh_argv(line, multiplex=multiplex), stdin=stdin,
                                    stdout=stdout, stderr=stderr, start_new_session=True,
                                    close_fds=True, bufsize=0)
        except OSError as exc:
            raise SchedulerUnavailable(f"cannot run ssh: {exc.strerror}") from exc

    def connection_error(self, returncode: int, stderr: bytes) -> SchedulerUnavailable | None:
        """For a :meth:`popen` process: the 503 its exit code and stderr mean, if any."""
        stderr = _strip_mux_notices(stderr)
        if returncode == 255 and _is_connection_error(stderr):
            return SchedulerUnavailable(f"ssh to {self.host}:{self.port} failed: {_last_line(stderr)}")
        return None

    def _exec(self, args: list[str], stdin: bytes | None, timeout: float,
              shown_timeout: float | None = None) -> CommandResult:
        try:
            proc = subprocess.Popen(args, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True, close_fds=True)
        except OSError as exc:
            raise SchedulerUnavailable(f"cannot run ssh: {exc.strerror}") from exc
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            shown = timeout if shown_timeout is None else shown_timeout
            raise SchedulerTimeout(
                f"command on {self.host} did not finish within {shown:g} s") from None
        return CommandResult(proc.returncode, out, err)

    def close(self) -> None:
        """Stop the ControlMaster and remove its private directory."""
        if self._control_dir is None:
            return
        if self._owner_pid != os.getpid():  # a forked child: the master is its parent's
            self._control_dir = self._owner_pid = None
            return
        control_path = os.path.join(self._control_dir, "master")
        if os.path.exists(control_path):
            try:
                subprocess.run([self.ssh_binary, "-o", f"ControlPath={control_path}",
                                "-O", "exit", "--", self.host],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=5, check=False)
            except (OSError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self._control_dir, ignore_errors=True)
        self._control_dir = self._owner_pid = None

    def __del__(self):  # best effort: masters also expire on their own (ControlPersist)
        try:
            self.close()
        except Exception:
            pass


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    # Do not drain the pipes: a multiplexed client hands its stdio descriptors to the
    # master, which keeps them open until the remote command ends. Just drop our ends.
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            try:
                pipe.close()
            except OSError:
                pass


def _strip_mux_notices(stderr: bytes) -> bytes:
    match = _MUX_NOTICE.match(stderr)
    return stderr[match.end():] if match else stderr


def _last_line(data: bytes) -> str:
    lines = [ln for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def _is_connection_error(stderr: bytes) -> bool:
    last = _last_line(stderr)
    return bool(last) and _SSH_CONNECTION_ERRORS.match(last) is not None
