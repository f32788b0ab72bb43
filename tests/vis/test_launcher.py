"""The launcher itself (gateway/vis/launcher.sh), run as a job would run it, on this host.

Free display and port despite collisions, no secret on any command line or in the output,
the session file private, and nothing left behind however the session ends.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from gateway.vis import launcher_script, load_vis_options

from .conftest import require_vis_components
from .support import process_alive, rfb_auth, wait_until

pytestmark = pytest.mark.timeout(120)


class Launch:
    """One launcher run with a unique job id, in its own process group (like a mock job)."""

    def __init__(self, tmp: Path, command: str = "sleep 600", env: dict | None = None, **vis):
        self.job_id = f"t{secrets.token_hex(4)}"
        opts = load_vis_options({"vis": vis})
        script = tmp / f"{self.job_id}.sh"
        script.write_text(launcher_script(command, geometry="800x600", options=opts))
        self.out, self.err = tmp / f"{self.job_id}.out", tmp / f"{self.job_id}.err"
        env = {"PATH": os.environ["PATH"], "GATEWAY_JOB_ID": self.job_id, "HOME": os.path.expanduser("~"),
               **(env or {})}
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(["/bin/sh", str(script)], stdout=out, stderr=err, env=env,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.session_path = Path(os.path.expanduser("~")) / ".hpc-gateway" / "vis" / f"{self.job_id}.json"

    def session(self, timeout: float = 30) -> dict:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"launcher exited {self.proc.returncode}: {self.err.read_text()[-2000:]}")
            return json.loads(self.session_path.read_text()) if self.session_path.exists() else None
        return wait_until(ready, timeout, f"session file of {self.job_id}")

    def stop(self, sig=signal.SIGTERM, timeout: float = 15) -> int | None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        return self.proc.returncode


@pytest.fixture
def launches(tmp_path):
    require_vis_components()
    made = []

    def launch(*args, **kw):
        made.append(Launch(tmp_path, *args, **kw))
        return made[-1]
    yield launch
    for one in made:
        one.stop()          # SIGTERM first: a SIGKILLed Xvnc would leave its display locked


def _cmdlines() -> list[bytes]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes())
            except OSError:
                pass
    return out


def test_a_session_and_its_secrets(launches):
    one = launches()
    s = one.session()
    st = os.stat(one.session_path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()
    assert stat.S_IMODE(os.stat(one.session_path.parent).st_mode) == 0o700
    assert s["jobId"] == one.job_id and s["host"] == "127.0.0.1" and 6100 <= s["port"] <= 6199
    assert process_alive(s["xvncPid"]) and process_alive(s["websockifyPid"])
    # The password and websockify's key are on no command line and in neither output file.
    assert not any(s["password"].encode() in c or s["key"].encode() in c for c in _cmdlines())
    assert s["password"] not in one.out.read_text() + one.err.read_text()
    assert s["key"] not in one.out.read_text() + one.err.read_text()
    assert "is ready" in one.out.read_text()
    # Xvnc listens on no TCP port; websockify only on loopback.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", 5900 + s["display"]), timeout=1).close()
    assert rfb_auth(f"ws://127.0.0.1:{s['port']}/websockify?token={s['key']}", s["password"])[0] == 0
    assert rfb_auth(f"ws://127.0.0.1:{s['port']}/websockify?token={s['key']}", "wrongpw1")[0] == 1
    import websocket
    # websockify lets through only a websocket that names the session's key: the port alone,
    # or another key, reaches no desktop (a session file of another job may name this port).
    for url in (f"ws://127.0.0.1:{s['port']}/websockify", f"ws://127.0.0.1:{s['port']}/websockify?token={'0' * 32}"):
        with pytest.raises((OSError, websocket.WebSocketException)):     # closed before any RFB byte
            rfb_auth(url, s["password"])
    # The X display needs the cookie: a client without it is refused.
    if shutil.which("xdpyinfo"):
        env = {"PATH": os.environ["PATH"], "DISPLAY": f":{s['display']}", "XAUTHORITY": "/nonexistent"}
        res = subprocess.run(["xdpyinfo"], env=env, capture_output=True, timeout=15)
        assert res.returncode != 0
    # SIGTERM to the job's process group (how the mock kills; Slurm and LSF signal every process).
    t0 = time.monotonic()
    assert one.stop(signal.SIGTERM) == 143
    print(f"session ended {time.monotonic() - t0:.2f} s after SIGTERM")
    assert not process_alive(s["xvncPid"]) and not process_alive(s["websockifyPid"])
    assert not one.session_path.exists()
    assert not os.path.exists(f"/tmp/.X11-unix/X{s['display']}")
    assert not os.path.exists(f"/tmp/.X{s['display']}-lock")


def test_a_tmpdir_websockifys_token_file_would_misread_is_passed_over(launches, tmp_path):
    """websockify's token file names the Xvnc socket after "KEY: unix_socket:", splitting at
    ': ' and at the last ':': a private directory under a TMPDIR with a colon would refuse
    every viewer."""
    odd = tmp_path / "scratch:a b"
    odd.mkdir()
    s = launches(env={"TMPDIR": str(odd)}).session()
    assert rfb_auth(f"ws://127.0.0.1:{s['port']}/websockify?token={s['key']}", s["password"]) == (0, "")
    assert not list(odd.iterdir())


def test_wrong_passwords_do_not_lock_the_owner_out(launches):
    """Every viewer reaches Xvnc through websockify, from one address: Xvnc's blacklist
    (5 failures) would lock the desktop's owner out too (measured: 10 s, doubling)."""
    s = launches().session()
    url = f"ws://127.0.0.1:{s['port']}/websockify?token={s['key']}"
    assert [rfb_auth(url, f"wrong{i:03d}")[0] for i in range(8)] == [1] * 8
    assert rfb_auth(url, s["password"]) == (0, "")


def test_sigterm_to_the_launcher_alone_also_ends_everything(launches):
    one = launches()
    s = one.session()
    os.kill(one.proc.pid, signal.SIGTERM)          # e.g. a scheduler that signals only the script
    assert one.proc.wait(timeout=15) == 143
    wait_until(lambda: not (process_alive(s["xvncPid"]) or process_alive(s["websockifyPid"])), 10,
               "Xvnc and websockify to end")
    assert not one.session_path.exists()


def test_the_session_ends_with_the_command_and_keeps_its_status(launches):
    one = launches(command="sleep 1; exit 3")
    s = one.session()
    assert one.proc.wait(timeout=30) == 3
    assert not process_alive(s["xvncPid"]) and not process_alive(s["websockifyPid"])
    assert not one.session_path.exists()
    assert "the command ended (exit status 3)" in one.out.read_text()


def test_the_session_ends_when_the_desktop_dies(launches):
    one = launches()
    s = one.session()
    os.kill(s["xvncPid"], signal.SIGKILL)
    assert one.proc.wait(timeout=30) == 1
    assert not process_alive(s["websockifyPid"])
    assert "the desktop went away" in one.out.read_text()
    # The killed Xvnc could not remove its display's lock and socket: the launcher did.
    assert not os.path.exists(f"/tmp/.X{s['display']}-lock")
    assert not os.path.exists(f"/tmp/.X11-unix/X{s['display']}")


def test_taken_displays_and_ports_are_skipped(launches):
    """A display whose lock exists and a port someone listens on are passed over; two
    launchers racing for the same display and port both end up with their own."""
    base = 150 + secrets.randbelow(40)
    lock = Path(f"/tmp/.X{base}-lock")
    if lock.exists() or Path(f"/tmp/.X11-unix/X{base}").exists():
        pytest.skip(f"display :{base} is in use here")
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    taken = blocker.getsockname()[1]
    lock.write_text("       1\n")
    try:
        a = launches(display_min=base, display_max=base + 3, port_min=taken, port_max=taken + 2)
        b = launches(display_min=base, display_max=base + 3, port_min=taken, port_max=taken + 2)
        sa, sb = a.session(), b.session()
        assert base not in (sa["display"], sb["display"]) and sa["display"] != sb["display"]
        assert taken not in (sa["port"], sb["port"]) and sa["port"] != sb["port"]
        for s in (sa, sb):
            assert rfb_auth(f"ws://127.0.0.1:{s['port']}/?token={s['key']}", s["password"])[0] == 0
    finally:
        lock.unlink()
        blocker.close()


def test_a_display_left_locked_by_a_dead_session_is_used_again(launches):
    """A session SIGKILLed leaves its display's lock (and socket): passed over for good, each
    such kill used up a display of the node until a reboot."""
    base = 150 + secrets.randbelow(40)
    lock, sock = Path(f"/tmp/.X{base}-lock"), Path(f"/tmp/.X11-unix/X{base}")
    if lock.exists() or sock.exists():
        pytest.skip(f"display :{base} is in use here")
    dead = subprocess.Popen(["true"])
    dead.wait()                                   # a pid that no longer runs
    lock.write_text(f"{dead.pid:>10}\n")
    try:
        s = launches(display_min=base, display_max=base + 2).session()
        assert s["display"] == base, s
        assert rfb_auth(f"ws://127.0.0.1:{s['port']}/?token={s['key']}", s["password"])[0] == 0
    finally:
        if lock.exists() and lock.read_text().strip() == str(dead.pid):      # still the dead one's
            lock.unlink()


def test_listen_hostname_never_takes_a_loopback_address(launches):
    """Debian's /etc/hosts often names the host 127.0.1.1 first: websockify listened there,
    where NGINX on another host cannot reach it. A host whose name resolves to loopback only
    (as here) is told so; one with another address listens on that."""
    out = subprocess.run(["getent", "ahostsv4", socket.gethostname()], capture_output=True, text=True).stdout
    routable = [line.split()[0] for line in out.splitlines() if line and not line.startswith("127.")]
    one = launches(listen="hostname")
    if routable:
        assert one.session()["host"] == routable[0]
        return
    assert one.proc.wait(timeout=60) != 0
    assert "other than loopback" in one.err.read_text(), one.err.read_text()[-500:]


def test_a_missing_program_is_named(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("sh", "getent", "id", "cut", "mkdir", "chmod", "rm", "mktemp", "hostname", "awk", "od", "tr"):
        path = shutil.which(tool)
        if path:
            os.symlink(path, bindir / tool)
    script = tmp_path / "vis.sh"
    script.write_text(launcher_script("xterm", geometry="800x600", options=load_vis_options({})))
    res = subprocess.run(["/bin/sh", str(script)], env={"PATH": str(bindir), "GATEWAY_JOB_ID": "t1"},
                         capture_output=True, timeout=30)
    assert res.returncode == 127
    assert b"missing on" in res.stderr and b"Xvnc" in res.stderr and b"websockify" in res.stderr


def test_no_job_id_no_session(tmp_path):
    script = tmp_path / "vis.sh"
    script.write_text(launcher_script("xterm", geometry="800x600", options=load_vis_options({})))
    res = subprocess.run(["/bin/sh", str(script)], env={"PATH": os.environ["PATH"]}, capture_output=True, timeout=30)
    assert res.returncode == 2 and b"no usable job id" in res.stderr
