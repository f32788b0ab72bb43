"""SshTransport specifics: command line, connection reuse, connection failures, connections
lost while a command runs (outcome unknown), concurrent requests and a stalled master."""
from __future__ import annotations

import os
import shlex
import stat
import subprocess
import threading

import pytest

from gateway.errors import ConfigError, SchedulerTimeout, SchedulerUnavailable
from gateway.transports import CommandResult, make_transport
from gateway.transports.ssh import SshTransport, remote_command_line
from tests.support import silent_server

from .test_transport_behaviour import NASTY


# -- pure: the command line ------------------------------------------------------------
def test_remote_command_line_round_trips_through_a_posix_shell_parser():
    line = remote_command_line(["printf", "%s", *NASTY])
    assert shlex.split(line) == ["printf", "%s", *NASTY]


def test_remote_command_line_environment():
    line = remote_command_line(["cmd"], {"A": "x y", "B_2": "$(no)"})
    assert shlex.split(line) == ["env", "A=x y", "B_2=$(no)", "cmd"]
    with pytest.raises(ValueError):
        remote_command_line(["cmd"], {"A;rm -rf /": "x"})


def test_ssh_argv_options():
    t = SshTransport("head.example", user="svc", port=2222, identity_file="/k",
                     known_hosts_file="/kh", connect_timeout=3)
    try:
        argv = t.ssh_argv("true")
        opts = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
        assert "BatchMode=yes" in opts
        assert "StrictHostKeyChecking=yes" in opts and "UserKnownHostsFile=/kh" in opts
        assert "IdentityFile=/k" in opts and "IdentitiesOnly=yes" in opts
        assert "User=svc" in opts and "Port=2222" in opts and "ConnectTimeout=3" in opts
        assert "ControlMaster=auto" in opts and "ControlPersist=60" in opts
        # The host comes after "--": it can never be read as an option.
        assert argv[-3:] == ["--", "head.example", "true"]
        control_dir = os.path.dirname(t._control_path)
        assert stat.S_IMODE(os.stat(control_dir).st_mode) == 0o700
    finally:
        t.close()
    assert not os.path.exists(control_dir)


def test_remote_line_wraps_with_a_remote_timeout_backstop():
    t = SshTransport("h", control_persist=0)
    assert shlex.split(t.remote_line(["squeue", "-h"], 30)) == \
        ["timeout", "-k", "2", "31s", "squeue", "-h"]
    t.remote_timeout = False
    assert shlex.split(t.remote_line(["squeue"], 30)) == ["squeue"]


def test_as_user_wraps_with_sudo_before_quoting():
    t = SshTransport("h", control_persist=0, remote_timeout=False)
    wrapped = t.wrap_user(["id", "-un"], "gwalice")
    assert shlex.split(t.remote_line(wrapped, 5)) == ["sudo", "-n", "-u", "gwalice", "--", "id", "-un"]


@pytest.mark.parametrize("host", ["-oProxyCommand=touch /tmp/x", ""])
def test_host_that_looks_like_an_option_is_refused(host):
    with pytest.raises(ConfigError):
        SshTransport(host)


def test_no_multiplexing_when_control_persist_is_zero():
    t = SshTransport("h", control_persist=0)
    assert "ControlPath=none" in t.ssh_argv("true")
    t.close()


# -- against the real sshd -------------------------------------------------------------
def _accepted(server) -> int:
    return server.read_log().count("Accepted publickey")


def test_commands_reuse_one_connection(sshd_server):
    t = make_transport(sshd_server.transport_options())
    try:
        before = _accepted(sshd_server)
        for _ in range(5):
            assert t.run(["true"]).returncode == 0
        assert _accepted(sshd_server) - before == 1
    finally:
        t.close()


def test_master_is_restarted_after_it_went_away(sshd_server):
    t = make_transport(sshd_server.transport_options())
    try:
        assert t.run(["true"]).returncode == 0
        subprocess.run(["ssh", "-o", f"ControlPath={t._control_path}", "-O", "exit", "x"],
                       capture_output=True, timeout=10)
        assert t.run(["echo", "again"]).stdout == b"again\n"
    finally:
        t.close()
    assert t._control_dir is None


def test_concurrent_commands_beyond_max_sessions_still_run(unix_user):
    """When the server refuses more sessions on the shared connection, fall back."""
    from tests.support import require
    from tests.support.sshd import sshd, sshd_available
    ok, why = sshd_available()
    require(ok, why)
    with sshd(("root",), options={"MaxSessions": "1"}) as server:
        t = make_transport(server.transport_options())
        try:
            results = [None] * 4

            def work(i):
                results[i] = t.run(["sh", "-c", f"sleep 0.5; echo {i}"])
            threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(4)]
            assert all(r.stderr == b"" for r in results)
        finally:
            t.close()


def test_login_as_unprivileged_user(sshd_server, unix_user):
    t = make_transport(sshd_server.transport_options(user=unix_user))
    try:
        assert t.run(["id", "-un"]).stdout == f"{unix_user}\n".encode()
    finally:
        t.close()


def test_remote_exit_255_is_a_result_not_an_outage(sshd_server):
    t = make_transport(sshd_server.transport_options())
    try:
        result = t.run(["sh", "-c", "echo no such thing >&2; exit 255"])
        assert (result.returncode, result.stderr) == (255, b"no such thing\n")
    finally:
        t.close()


def test_wrong_host_key_is_503(sshd_server, tmp_path):
    key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    kind, blob = key.with_suffix(".pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[{sshd_server.host}]:{sshd_server.port} {kind} {blob}\n")
    t = make_transport(sshd_server.transport_options(known_hosts_file=str(known)))
    try:
        with pytest.raises(SchedulerUnavailable) as info:
            t.run(["true"])
        assert "Host key verification failed" in info.value.msg
    finally:
        t.close()


@pytest.mark.parametrize("control_persist", [60, 0])
def test_refused_login_is_503(sshd_server, control_persist):
    t = make_transport(sshd_server.transport_options(user="nobody", control_persist=control_persist))
    try:
        with pytest.raises(SchedulerUnavailable) as info:
            t.run(["true"])
        assert "Permission denied" in info.value.msg
    finally:
        t.close()


def test_without_multiplexing_commands_still_work(sshd_server):
    t = make_transport(sshd_server.transport_options(control_persist=0))
    try:
        assert t.run(["cat"], stdin=b"\x00x").stdout == b"\x00x"
    finally:
        t.close()


def test_forked_child_uses_a_master_of_its_own(sshd_server):
    """gunicorn forks workers: a child must neither share nor close its parent's master."""
    t = make_transport(sshd_server.transport_options())
    try:
        assert t.run(["true"]).returncode == 0
        parent_socket = t._control_path
        pid = os.fork()
        if pid == 0:  # child: report through the exit code only
            code = 3
            try:
                ok = t.run(["echo", "child"]).stdout == b"child\n"
                ok = ok and t._control_path != parent_socket
                t.close()
                code = 0 if ok else 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert os.path.exists(parent_socket)
        assert t.run(["echo", "parent"]).stdout == b"parent\n"
    finally:
        t.close()


# -- a server that stalls before the master is up ---------------------------------------
@pytest.fixture
def stalled_ssh_port():
    """A TCP server on 127.0.0.1 that sends an SSH banner and then never says anything more:
    ``ssh`` waits for the key exchange until its caller's deadline."""
    with silent_server(b"SSH-2.0-OpenSSH_9.6\r\n") as port:
        yield port


def test_requests_waiting_for_a_stalled_master_answer_within_their_own_timeout(stalled_ssh_port):
    """While one request starts the shared connection, the others wait for it only as long as
    their own timeout: before, the Nth request answered after N x timeout."""
    import time
    t = SshTransport("127.0.0.1", port=stalled_ssh_port, timeout=2, connect_timeout=5,
                     known_hosts_file="/dev/null")
    results = []

    def one():
        start = time.monotonic()
        try:
            t.run(["true"])
            results.append(("ran", time.monotonic() - start))
        except (SchedulerTimeout, SchedulerUnavailable) as exc:
            results.append((exc.status, time.monotonic() - start))
    threads = [threading.Thread(target=one) for _ in range(4)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
    finally:
        t.close()
    assert [status for status, _ in results] == [504] * 4
    # Generous bound: timeout + 2 s each (before: 2, 4, 6 and 8 s).
    assert max(took for _, took in results) < 4.0, results


def test_time_spent_starting_the_master_is_taken_from_the_command_timeout(monkeypatch):
    """The command gets what is left of its timeout once the master is up, not all of it."""
    import time
    t = SshTransport("h", timeout=5)
    given = {}

    def exec_(args, stdin, timeout, **kw):
        given["timeout"] = timeout
        return CommandResult(0, b"", b"")
    monkeypatch.setattr(t, "_ensure_master", lambda deadline_s: time.sleep(1.5))
    monkeypatch.setattr(t, "_exec", exec_)
    try:
        t.run(["true"])
    finally:
        t.close()
    assert given["timeout"] <= 5 - 1.5


# -- a connection lost while the command runs ---------------------------------------------
def _fake_ssh(tmp_path, message: str) -> str:
    """An ``ssh`` stand-in that prints ``message`` as ssh's last words and exits 255."""
    script = tmp_path / "fake-ssh"
    script.write_text(f"#!/bin/sh\nprintf '%s\\r\\n' {shlex.quote(message)} >&2\nexit 255\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("message", [
    "ssh: connect to host h port 22: Connection refused",
    "ssh: Could not resolve hostname h: Name or service not known",
    "kex_exchange_identification: read: Connection reset by peer",
    "Connection closed by 10.0.0.1 port 22",
    "Host key verification failed.",
    "root@h: Permission denied (publickey).",
])
def test_a_failure_to_connect_is_503(tmp_path, message):
    t = SshTransport("h", control_persist=0, ssh_binary=_fake_ssh(tmp_path, message))
    with pytest.raises(SchedulerUnavailable) as info:
        t.run(["sbatch", "job.sh"])
    assert info.value.status == 503 and message in info.value.msg


@pytest.mark.parametrize("message", [
    "Connection to h closed by remote host.",
    "Read from remote host h: Connection reset by peer",
    "client_loop: send disconnect: Broken pipe",
    "Connection reset by 10.0.0.1 port 22",
    "Timeout, server h not responding.",
])
def test_a_connection_lost_while_the_command_may_run_is_an_unknown_outcome(tmp_path, message):
    """sbatch may have submitted already: 504 without Retry-After, not a 503 that invites the
    client to submit again. A caller whose command only reads says so and gets the 503."""
    t = SshTransport("h", control_persist=0, ssh_binary=_fake_ssh(tmp_path, message))
    with pytest.raises(SchedulerTimeout) as info:
        t.run(["sbatch", "job.sh"])
    assert info.value.status == 504 and "Retry-After" not in info.value.headers
    assert "may or may not have taken effect" in info.value.msg
    with pytest.raises(SchedulerUnavailable):
        t.run(["squeue"], retry_safe=True)


def test_the_commands_own_exit_255_stays_a_result(tmp_path):
    t = SshTransport("h", control_persist=0, ssh_binary=_fake_ssh(tmp_path, "no such thing"))
    result = t.run(["tool"])
    assert result.returncode == 255 and result.stderr == b"no such thing\r\n"


@pytest.mark.parametrize("control_persist", [60, 0])
def test_real_connection_lost_mid_command_is_an_unknown_outcome(tmp_path, control_persist):
    """The server side of the connection dies while the command runs. Through a master, ssh
    says nothing (it just exits 255): the master being gone tells it from the command's own
    exit code."""
    import signal
    import time

    from tests.support import require
    from tests.support.sshd import _children, sshd, sshd_available
    ok, why = sshd_available()
    require(ok, why)
    started = tmp_path / "started"
    with sshd(("root",)) as server:
        t = make_transport(server.transport_options(control_persist=control_persist))
        try:
            for retry_safe, expected in ((False, SchedulerTimeout), (True, SchedulerUnavailable)):
                started.unlink(missing_ok=True)
                outcome = {}

                def work():
                    try:
                        outcome["result"] = t.run(
                            ["sh", "-c", f"touch {shlex.quote(str(started))}; sleep 20"],
                            timeout=30, **({"retry_safe": True} if retry_safe else {}))
                    except Exception as exc:  # noqa: BLE001 - inspected below
                        outcome["error"] = exc
                th = threading.Thread(target=work)
                th.start()
                deadline = time.monotonic() + 15
                while not started.exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert started.exists(), "the command never started"
                for pid in _children(server.pid):      # sshd's per-connection processes
                    os.kill(pid, signal.SIGKILL)
                th.join(30)
                assert isinstance(outcome.get("error"), expected), outcome
                if expected is SchedulerTimeout:
                    assert "Retry-After" not in outcome["error"].headers
        finally:
            t.close()
