"""Pure parts of the vis core: the job script, the session file, the noVNC address, options."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.errors import ConfigError, Conflict, NotImplementedByPlugin
from gateway.models import Job, JobState, User, VisSession
from gateway.vis import (is_vis_job, launcher_script, load_vis_options, parse_session, read_vis_session,
                         session_path, submit_hook, vis_job_spec, vis_url)
from gateway.vis.launcher import job_name
from gateway.vis.session import WebsocketTickets

OPTS = load_vis_options({})
NASTY = [
    "xterm",
    "/usr/bin/xterm -e 'top -d 1'",
    "echo \"$HOME\" `id` $(id) ; rm -rf / # not run by the gateway",
    "printf '%s\\n' 'it''s' \"a \\\"quoted\\\" word\"",
    "line one\nline two\n",
    "unicode: 桌面 ✓ — and a trailing backslash \\",
    "'",
]


@pytest.mark.parametrize("shell", ["/bin/sh", "bash"])
@pytest.mark.parametrize("command", NASTY)
def test_the_command_reaches_the_job_exactly_as_given(shell, command):
    """The header assigns VIS_COMMAND the user's command verbatim: quoting only, no expansion."""
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} missing")
    script = launcher_script(command, geometry="1024x768", options=OPTS)
    header = script.split("\n\n", 1)[0]
    out = subprocess.run([shell, "-c", header + '\nprintf %s "$VIS_COMMAND"'], capture_output=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode() == command
    assert out.stderr == b""


def test_the_whole_script_is_valid_posix_shell():
    script = launcher_script("xterm", geometry="1024x768", options=OPTS)
    assert script.startswith("#!/bin/sh\n")
    for shell in ("/bin/sh", "bash"):
        if shutil.which(shell):
            args = [shell, "--posix", "-n"] if shell == "bash" else [shell, "-n"]
            res = subprocess.run(args, input=script.encode(), capture_output=True, timeout=10)
            assert res.returncode == 0, res.stderr


def test_settings_in_the_script():
    opts = load_vis_options({"vis": {"listen": "hostname", "port_min": 7000, "port_max": 7009}})
    script = launcher_script("xclock", geometry="800x600", options=opts)
    header = script.split("\n\n", 1)[0].splitlines()
    assert "VIS_GEOMETRY=800x600" in header
    assert "VIS_LISTEN=hostname" in header
    assert "VIS_PORT_MIN=7000" in header and "VIS_PORT_MAX=7009" in header


def test_vis_job_spec():
    spec = vis_job_spec("/usr/bin/xterm -e top", options=OPTS, queue="vnc", time_limit_minutes=30)
    assert spec.name == "vnc-xterm" and is_vis_job(spec.name)
    assert spec.queue == "vnc" and spec.time_limit_minutes == 30 and spec.nodes == 1 and spec.cpus == 1
    assert spec.command is None and spec.script_location is None and spec.script.startswith("#!/bin/sh")
    assert "VIS_GEOMETRY=1280x800" in spec.script
    defaults = load_vis_options({"vis": {"queue": "viz", "time_limit_minutes": 240, "geometry": "1920x1080"}})
    spec = vis_job_spec("xclock", options=defaults)
    assert spec.queue == "viz" and spec.time_limit_minutes == 240 and "VIS_GEOMETRY=1920x1080" in spec.script


@pytest.mark.parametrize("command,name", [
    ("xterm", "vnc-xterm"),
    ("/opt/app/bin/paraview --mesa", "vnc-paraview"),
    ("'/opt/My App/run me' -x", "vnc-run_me"),
    ("'unbalanced", "vnc-_unbalanced"),
    ("   ", "vnc-desktop"),
    ("DISPLAY=:1 xclock", "vnc-DISPLAY__1"),
])
def test_job_name(command, name):
    assert job_name(command) == name
    assert not is_vis_job("sleep") and not is_vis_job(None)


def _session_bytes(**over):
    doc = {"jobId": "42", "host": "127.0.0.1", "port": 6123, "display": 12, "password": "Ab3dE6gH",
           "execHost": "node-1", "xvncPid": 10, "websockifyPid": 11, "launcherPid": 9, "started": 1000}
    doc.update(over)
    return json.dumps(doc).encode()


def test_parse_session():
    s = parse_session(_session_bytes(), "42")
    assert s == VisSession(host="127.0.0.1", port=6123, password="Ab3dE6gH", display=12, exec_host="node-1")
    assert session_path("42") == "~/.hpc-gateway/vis/42.json"


@pytest.mark.parametrize("data,job_id,not_before", [
    (None, "42", None),
    (b"", "42", None),
    (b"{\"jobId\": \"42\", \"host\"", "42", None),            # half written
    (_session_bytes(), "43", None),                             # another job's file
    (_session_bytes(started=1000), "42", 1001),                 # older than the job's start: a leftover
    (_session_bytes(host="evil host;rm"), "42", None),
    (_session_bytes(port=0), "42", None),
    (_session_bytes(password="short"), "42", None),
    (_session_bytes(password="has space1"), "42", None),
    (b"\xff\xfe", "42", None),
    (b"[1, 2]", "42", None),
    (_session_bytes(key="0123456789ABCDEF" * 2), "42", None),       # not the launcher's hex
    (_session_bytes(key="0123456789abcdef&token=x"), "42", None),
    (_session_bytes(key="abc"), "42", None),
])
def test_parse_session_refuses(data, job_id, not_before):
    assert parse_session(data, job_id, not_before) is None


SESSION = VisSession(host="10.1.0.21", port=6105, password="Ab3dE6gH", display=10, exec_host="node1")


def _query(url):
    """(the query as written, its values); the password is in the fragment, never the query."""
    parts = urlsplit(url)
    assert parts.path == "/novnc/vnc.html"
    assert parts.fragment == "password=Ab3dE6gH" and "password" not in parts.query, url
    return parts.query, {k: v[0] for k, v in parse_qs(parts.query).items()}


def test_url_through_nginx_from_the_request():
    raw, q = _query(vis_url(SESSION, OPTS, "http://gw.example.org:8080/"))
    assert raw == ("autoconnect=true&host=gw.example.org&port=8080&resize=remote&quality=9"
                   "&compression=5&exec=node1&sid=10&path=novnc-ws%2F10.1.0.21%2F6105&encrypt=0")
    assert q["path"] == "novnc-ws/10.1.0.21/6105"


def test_url_through_nginx_carries_the_websocket_ticket_in_its_path():
    raw, q = _query(vis_url(SESSION, OPTS, "http://gw/", ticket="WyJh.Ig_x-Y"))
    assert "path=novnc-ws%2F10.1.0.21%2F6105%2FWyJh.Ig_x-Y&" in raw
    assert q["path"] == "novnc-ws/10.1.0.21/6105/WyJh.Ig_x-Y"


def test_a_websocket_ticket_opens_one_desktop_and_only_its_own_gateways():
    tickets = WebsocketTickets(b"k" * 32)
    key = "0123456789abcdef" * 2
    ticket = tickets.issue("alice", "42", "10.1.0.21", 6105, "2026-12-07T09:00:00+00:00", key)
    assert tickets.check(ticket, "10.1.0.21", 6105) == ("alice", "42", "2026-12-07T09:00:00+00:00", key)
    assert tickets.check(tickets.issue("alice", "42", "10.1.0.21", 6105), "10.1.0.21", 6105) == ("alice", "42", None, None)
    # A ticket of the release before websockify tokens (five fields) still opens its desktop.
    from itsdangerous import URLSafeSerializer
    old = URLSafeSerializer(b"k" * 32, salt=WebsocketTickets.SALT).dumps(["alice", "42", "10.1.0.21", 6105, None])
    assert tickets.check(old, "10.1.0.21", 6105) == ("alice", "42", None, None)
    # The same ticket is issued every time (a reloaded page reconnects), in path-safe characters.
    assert tickets.issue("alice", "42", "10.1.0.21", 6105, "2026-12-07T09:00:00+00:00", key) == ticket
    assert set(ticket) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
    assert len(ticket) <= WebsocketTickets.MAX_CHARS
    # Another desktop (address, port), another secret, a changed or cut ticket: refused.
    assert tickets.check(ticket, "10.1.0.22", 6105) is None
    assert tickets.check(ticket, "10.1.0.21", 6106) is None
    assert WebsocketTickets(b"x" * 32).check(ticket, "10.1.0.21", 6105) is None
    assert tickets.check(ticket[:-1], "10.1.0.21", 6105) is None
    middle = len(ticket) // 4                      # a whole base64 character of the payload
    changed = ticket[:middle] + ("A" if ticket[middle] != "A" else "B") + ticket[middle + 1:]
    assert tickets.check(changed, "10.1.0.21", 6105) is None
    sig = ticket.rsplit(".", 1)[1]
    forged = WebsocketTickets(b"x" * 32).issue("bob", "42", "10.1.0.21", 6105, None)
    assert tickets.check(forged.rsplit(".", 1)[0] + "." + sig, "10.1.0.21", 6105) is None
    assert tickets.check("", "10.1.0.21", 6105) is None
    assert tickets.check("a" * 401, "10.1.0.21", 6105) is None
    # A session token (signed with the same secret, another salt) is no ticket.
    other = URLSafeSerializer(b"k" * 32, salt="hpc-gateway-session").dumps(["alice", "42", "10.1.0.21", 6105, None])
    assert tickets.check(other, "10.1.0.21", 6105) is None


def test_url_through_nginx_https_and_public_url():
    _, q = _query(vis_url(SESSION, OPTS, "https://gw.example.org/"))
    assert q["port"] == "443" and q["encrypt"] == "1"
    opts = load_vis_options({"vis": {"public_url": "https://hpc.example.org:8443"}})
    _, q = _query(vis_url(SESSION, opts, "http://127.0.0.1:8088/"))
    assert (q["host"], q["port"], q["encrypt"]) == ("hpc.example.org", "8443", "1")
    _, q = _query(vis_url(SESSION, OPTS, "http://[::1]:8080/"))
    assert q["host"] == "[::1]"


def test_url_direct_is_the_seeds_form():
    opts = load_vis_options({"vis": {"websocket": "direct", "listen": "hostname"}})
    raw, _ = _query(vis_url(SESSION, opts, "http://gw/"))
    assert raw == ("autoconnect=true&host=10.1.0.21&port=6105&resize=remote&quality=9"
                   "&compression=5&exec=node1&sid=10")
    # A desktop with a websockify token: noVNC's default path, naming it.
    keyed = dataclasses.replace(SESSION, key="0123456789abcdef" * 2)
    raw, q = _query(vis_url(keyed, opts, "http://gw/"))
    assert raw.endswith("&sid=10&path=websockify%3Ftoken%3D" + "0123456789abcdef" * 2)
    assert q["path"] == "websockify?token=" + "0123456789abcdef" * 2


def test_a_session_files_key_is_read():
    assert parse_session(_session_bytes(key="0123456789abcdef" * 2), "42").key == "0123456789abcdef" * 2
    assert parse_session(_session_bytes(), "42").key is None            # a launcher without keys


def test_every_value_is_url_encoded():
    odd = VisSession(host="10.0.0.1", port=6100, password="Ab3dE6gH", display=3, exec_host="n&1=x")
    raw, q = _query(vis_url(odd, OPTS, "http://gw/"))
    assert "exec=n%261%3Dx" in raw and q["exec"] == "n&1=x"


@pytest.mark.parametrize("vis", [
    {"listen": "node1"}, {"listen": "::1"}, {"port_min": 7000, "port_max": 6999}, {"port_min": 80},
    {"display_min": 50, "display_max": 10}, {"geometry": "huge"}, {"geometry": "100x100"},
    {"websocket": "tunnel"}, {"websocket": "direct"}, {"websocket": "direct", "listen": "127.0.1.1"},
    {"websocket": "direct", "listen": "0.0.0.0"},
    {"public_url": "ftp://x"}, {"public_url": "https://x/sub/path"},
    {"novnc_path": "novnc/vnc.html"}, {"unknown_key": 1},
])
def test_bad_vis_options_are_refused(vis):
    with pytest.raises(ConfigError, match="vis"):
        load_vis_options({"vis": vis})


def test_bad_vis_options_fail_the_start_up(make_app):
    with pytest.raises(ConfigError, match="vis: .*listen"):
        make_app(vis={"listen": "node1"})


class FakeScheduler:
    name = "fake"

    def __init__(self, hooks: dict):
        self.hooks = hooks
        self.calls = []

    def implements(self, hook):
        return hook in self.hooks

    def call(self, hook, **kw):
        self.calls.append((hook, kw))
        return self.hooks[hook](**kw)


def test_submit_hook_prefers_the_plugins_own():
    assert submit_hook(FakeScheduler({"submit_job": None})) == "submit_job"
    assert submit_hook(FakeScheduler({"submit_job": None, "submit_vis_job": None})) == "submit_vis_job"


def test_read_vis_session_paths():
    from datetime import datetime, timezone
    user = User("alice")
    job = Job(job_id="42", state=JobState.RUNNING, start_time=datetime.fromtimestamp(1000, tz=timezone.utc))
    # The plugin's own vis_session wins.
    own = FakeScheduler({"vis_session": lambda user, job_id: SESSION, "read_user_file": None})
    assert read_vis_session(own, user, job, OPTS) is SESSION
    # Else the session file, read as the user.
    files = FakeScheduler({"read_user_file": lambda user, path, limit: _session_bytes(started=950)})
    assert read_vis_session(files, user, job, OPTS).port == 6123
    assert files.calls[0][1]["path"] == "~/.hpc-gateway/vis/42.json" and files.calls[0][1]["user"] == user
    # A file from long before the job started is a leftover.
    old = FakeScheduler({"read_user_file": lambda user, path, limit: _session_bytes(started=1000 - 121)})
    assert read_vis_session(old, user, job, OPTS) is None
    # Neither hook: 501, saying what is missing.
    with pytest.raises(NotImplementedByPlugin, match="read_user_file"):
        read_vis_session(FakeScheduler({}), user, job, OPTS)
    assert Conflict.status == 409


def test_read_vis_session_through_the_file_transport(tmp_path):
    """A plugin with only file_transport (the files feature's hook): the file is read with
    ``head`` through that transport, from the passwd home of the account it runs as."""
    import os
    import pwd
    import secrets
    from datetime import datetime, timezone
    from pathlib import Path

    from gateway.transports.local import LocalTransport
    job_id = f"u{secrets.token_hex(4)}"
    home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    target = home / ".hpc-gateway" / "vis" / f"{job_id}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    job = Job(job_id=job_id, state=JobState.RUNNING, start_time=datetime.fromtimestamp(1000, tz=timezone.utc))
    sched = FakeScheduler({"file_transport": lambda user: (LocalTransport(), None, "/not/this/one")})
    try:
        assert read_vis_session(sched, User("alice"), job, OPTS) is None          # not written yet
        target.write_bytes(_session_bytes(jobId=job_id))
        session = read_vis_session(sched, User("alice"), job, OPTS)
        assert session is not None and session.port == 6123 and session.exec_host == "node-1"
    finally:
        target.unlink(missing_ok=True)
