"""What every transport (local, ssh, ssm) must do, checked against real servers.

The ssh transport talks to a real sshd on 127.0.0.1 and the ssm transport to the SSM test
double (which runs the commands with bash on this host, and stores output in moto's S3):
every command below really runs on this machine.
"""
from __future__ import annotations

import os
import time

import pytest

from gateway.errors import SchedulerTimeout, SchedulerUnavailable

ALL_BYTES = bytes(range(256)) * 3 + b"\r\n\x00tail without newline \xff\xfe\x80"

# Arguments a client could send, each of which a shell would interpret. They must reach the
# command literally. SENTINEL is replaced by a path that must never be created.
NASTY = [
    "--", "--help", "-n", "-e", "a b", "  leading and trailing  ", "", "'", '"', "\\", "'\"'\"'",
    "$(touch SENTINEL)", "`touch SENTINEL`", "; touch SENTINEL", "| touch SENTINEL",
    "&& touch SENTINEL", "& touch SENTINEL #", "|| touch SENTINEL", "\ntouch SENTINEL\n",
    "$(printf x)", "${HOME}", "$HOME", "$0", "$@", "*", "?", "[a-z]*", "~", "~root", "{a,b}",
    "!", "!!", "#", "<", ">SENTINEL", "2>&1", ">>", "a=b", "line1\nline2", "\ttab\t",
    "\r\n", "%s%d%n", "\\0", "é漢字🚀 ünïcødé", "\u200b", "-o ProxyCommand=touch SENTINEL",
]


def nasty_args(sentinel) -> list[str]:
    return [a.replace("SENTINEL", str(sentinel)) for a in NASTY]


def test_exit_codes_are_returned_not_raised(transport):
    assert transport.run(["true"]).returncode == 0
    assert transport.run(["false"]).returncode == 1
    for code in (2, 3, 42, 126, 194, 255):
        result = transport.run(["sh", "-c", f"echo out; echo err >&2; exit {code}"])
        assert (result.returncode, result.stdout, result.stderr) == (code, b"out\n", b"err\n")


def test_stdout_and_stderr_are_byte_exact(transport):
    out = transport.run(["cat"], stdin=ALL_BYTES)
    assert out.returncode == 0
    assert out.stdout == ALL_BYTES and out.stderr == b""
    err = transport.run(["sh", "-c", "cat >&2"], stdin=ALL_BYTES)
    assert err.stdout == b"" and err.stderr == ALL_BYTES


def test_large_binary_output(transport, tmp_path):
    # Larger than SSM's inline limit (24,000 characters): the ssm transport reads S3.
    data = os.urandom(150_000)
    src = tmp_path / "blob"
    src.write_bytes(data)
    src.chmod(0o644)
    result = transport.run(["cat", str(src)])
    assert result.returncode == 0
    assert result.stdout == data


def test_large_stdin(transport):
    data = os.urandom(64 * 1024)
    result = transport.run(["sha256sum"], stdin=data)
    import hashlib
    assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_no_stdin_means_empty_stdin(transport):
    result = transport.run(["cat"], timeout=10)
    assert (result.returncode, result.stdout) == (0, b"")


def test_empty_stdin(transport):
    assert transport.run(["wc", "-c"], stdin=b"").stdout.strip() == b"0"


def test_environment_reaches_the_command_literally(transport):
    value = "a b $(touch /nonexistent) `x` ; 'q' \"d\" \n é"
    result = transport.run(["sh", "-c", 'printf %s "$GW_TEST_VALUE"'],
                           env={"GW_TEST_VALUE": value})
    assert result.stdout.decode() == value


def test_as_user_runs_as_that_user(transport, unix_user):
    assert transport.run(["id", "-un"]).stdout == b"root\n"
    result = transport.run(["id", "-un"], as_user=unix_user)
    assert (result.returncode, result.stdout) == (0, f"{unix_user}\n".encode())


def test_shell_metacharacters_are_passed_literally(transport, tmp_path):
    sentinel = tmp_path / "sentinel-must-not-exist"
    args = nasty_args(sentinel)
    result = transport.run(["printf", "%s\\0", *args])
    assert result.returncode == 0, result.err
    assert result.stdout.split(b"\0")[:-1] == [a.encode() for a in args]
    assert not sentinel.exists()


def test_quoting_composes_with_as_user(transport, unix_user, shared_tmp):
    # shared_tmp is world-writable: were anything executed, the user could create it.
    sentinel = shared_tmp / "sentinel-must-not-exist"
    args = nasty_args(sentinel)
    result = transport.run(["printf", "%s\\0", *args], as_user=unix_user)
    assert result.returncode == 0, result.err
    assert result.stdout.split(b"\0")[:-1] == [a.encode() for a in args]
    assert not sentinel.exists()


def test_timeout_raises_504_and_kills_the_command(transport, tmp_path):
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(SchedulerTimeout) as info:
        transport.run(["sh", "-c", 'echo $$ > "$1"; exec sleep 60', "sh", str(pidfile)],
                      timeout=1.5)
    assert info.value.status == 504
    # The deadline is honoured (the command alone would take 60 s).
    assert time.monotonic() - started < 15
    pid = _wait_for_pid(pidfile)
    assert _gone_within(pid, 10), f"process {pid} still runs after the timeout"


def test_unreachable_target_raises_503(unreachable_transport):
    argv = getattr(unreachable_transport, "missing_command", ["true"])
    with pytest.raises(SchedulerUnavailable) as info:
        unreachable_transport.run(argv, timeout=20)
    assert info.value.status == 503
    assert info.value.headers.get("Retry-After")


def test_empty_argv_is_refused(transport):
    with pytest.raises(ValueError):
        transport.run([])


@pytest.fixture
def shared_tmp():
    import shutil
    import tempfile
    from pathlib import Path
    path = Path(tempfile.mkdtemp(prefix="gw-transport-test-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- helpers ---------------------------------------------------------------------------
def _wait_for_pid(pidfile, limit=10.0) -> int:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            text = pidfile.read_text().strip()
            if text:
                return int(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError("the command never started")


def _gone_within(pid: int, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[-1].split()[0] == "Z":
                    return True  # a zombie has been killed; only its parent's wait is left
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False
