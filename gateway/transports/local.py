"""Run an argument list as a subprocess of this host: never a shell."""
from __future__ import annotations

import os
import signal
import subprocess

from ..errors import SchedulerTimeout, SchedulerUnavailable
from . import CommandResult, Transport


# The gateway's own settings are not the commands': above all PROMETHEUS_MULTIPROC_DIR, which
# would make a job's prometheus_client write into (and show up in) the gateway's /metrics, or
# fail where the directory does not exist (a compute node).
_GATEWAY_ONLY_PREFIXES = ("HPCGW_", "GATEWAY_", "PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")


def command_environment(*extra: dict | None) -> dict[str, str]:
    """This process's environment without the gateway's own variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_GATEWAY_ONLY_PREFIXES)}
    for more in extra:
        env.update(more or {})
    return env


class LocalTransport(Transport):
    name = "local"

    def __init__(self, timeout: float = 30.0, sudo=("sudo", "-n"), env: dict | None = None):
        super().__init__(timeout=timeout, sudo=sudo)
        self.env = dict(env or {})

    def _run(self, argv, *, stdin, timeout, env):
        full_env = command_environment(self.env, env)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=full_env, start_new_session=True, close_fds=True)
        except FileNotFoundError as exc:
            raise SchedulerUnavailable(f"command not found: {argv[0]}") from exc
        except OSError as exc:
            raise SchedulerUnavailable(f"cannot run {argv[0]}: {exc.strerror}") from exc
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            # The command may have children (sudo, ssh): end the whole session.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                # Something outside the group still holds the pipes (a process that left it,
                # one in uninterruptible sleep on a hung mount): do not wait for it.
                for pipe in (proc.stdin, proc.stdout, proc.stderr):
                    if pipe is not None:
                        pipe.close()
            raise SchedulerTimeout(f"{os.path.basename(argv[0])} did not answer within {timeout:g} s")
        return CommandResult(proc.returncode, out, err)

    def popen(self, argv, *, as_user=None, stdin=None, stdout=None, stderr=None, timeout=None,
              env=None) -> subprocess.Popen:
        """Start ``argv`` (as ``as_user``) with the given stdio and return at once: for callers
        that stream data in or out (file transfers). No deadline here; the caller owns the process.
        """
        argv = self.wrap_user(argv, as_user)
        full_env = command_environment(self.env, env)
        try:
            return subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, env=full_env,
                                    start_new_session=True, close_fds=True, bufsize=0)
        except FileNotFoundError as exc:
            raise SchedulerUnavailable(f"command not found: {argv[0]}") from exc
        except OSError as exc:
            raise SchedulerUnavailable(f"cannot run {argv[0]}: {exc.strerror}") from exc
