"""SshTransport specifics: command line, connection reuse, connection failures."""
from __future__ import annotations

import os
import shlex
import stat
import subprocess
import threading

import pytest

from gateway.errors import ConfigError, SchedulerUnavailable
from gateway.transports import make_transport
from gateway.transports.ssh import SshTransport, remote_command_line

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
