"""End to end: a VNC desktop started as a job, opened through NGINX in headless Chromium.

For each backend (mock, mock-sudo, the real single-node Slurm): submit ``xterm`` through
the API, wait for its address, check the VNC authentication directly (right and wrong
password, over websockify's websocket through NGINX), open the address in Chromium and
prove the desktop is on screen (screenshot saved under test-artifacts/, canvas not blank),
see noVNC refuse a wrong password, then kill the job and find no Xvnc or websockify left.
"""
from __future__ import annotations

import json
import os
import pwd
import re
import stat
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from .support import (canvas_stats, chromium, process_alive, processes_named, rfb_auth, wait_until)

pytestmark = pytest.mark.timeout(300)

XTERM = ("xterm -geometry 90x26+40+40 -bg white -fg black -T 'HPC Gateway' "
         "-e sh -c 'echo \"HPC Gateway visualization job $SLURM_JOB_ID$GATEWAY_JOB_ID on $(hostname)\"; "
         "echo \"display $DISPLAY, user $(id -un)\"; echo; ls -la /; exec sleep 3600'")
# A canvas showing a drawn desktop: measured ~60-110 for xterm's white window on Xvnc's black
# root; a blank (all-black or all-one-colour) canvas has 0.
MIN_STDDEV = 20.0


def wait_for_url(client, job_id, timeout=90):
    """Poll GET /vis/url/{id}: 409 while starting, then 200 with the address."""
    seen = []

    def ready():
        r = client.get(f"/vis/url/{job_id}")
        seen.append(r.status)
        if r.status == 409:
            assert "not ready yet" in r.msg and r.headers.get("Retry-After")
            return None
        assert r.status == 200, r.body
        return r.body["data"]["visurl"]["url"]

    url = wait_until(ready, timeout, f"the desktop of job {job_id}", interval=0.5)
    return url, seen


def ws_url(front_url: str, vis_url: str) -> str:
    q = parse_qs(urlsplit(vis_url).query)
    return front_url.replace("http://", "ws://", 1) + "/" + q["path"][0]


def open_novnc(page, url, timeout=45):
    page.navigate(url)
    page.wait_for("document.readyState === 'complete' && !!document.getElementById('noVNC_status')", 30,
                  "noVNC's page")


def test_desktop_opens_in_the_browser_and_goes_with_the_job(vis_stack, artifacts_dir, tmp_path):
    s = vis_stack
    r = s.alice.post("/vis/submit", json={"command": XTERM, "type": "vnc"})
    assert r.status == 200, r.body
    job_id = r.body["data"]["vis"]["jobId"]

    t0 = time.monotonic()
    url, statuses = wait_for_url(s.alice, job_id)
    ready_s = time.monotonic() - t0
    print(f"[{s.backend}] job {job_id}: address after {ready_s:.1f} s (answers: {statuses[:3]}...{statuses[-1:]})")

    # The address is the seed's form, every value URL-encoded, joined to NGINX.
    parts = urlsplit(url)
    assert parts.path == "/novnc/vnc.html"
    q = parse_qs(parts.query)
    front = urlsplit(s.front_url)
    assert q["autoconnect"] == ["true"] and q["resize"] == ["remote"]
    assert q["quality"] == ["9"] and q["compression"] == ["5"]
    assert q["host"] == [front.hostname] and q["port"] == [str(front.port)]
    # The password in the fragment: never sent to NGINX (nor in its error log), which noVNC
    # reads first.
    assert "password" not in q and re.fullmatch(r"password=[A-Za-z0-9]{8}", parts.fragment), url
    q["password"] = [parts.fragment.split("=", 1)[1]]
    assert re.fullmatch(r"novnc-ws/127\.0\.0\.1/61\d\d/[A-Za-z0-9_.-]+", q["path"][0])
    assert q["sid"][0].isdigit() and q["exec"][0]
    assert "novnc-ws%2F127.0.0.1%2F" in url          # encoded
    password, display = q["password"][0], int(q["sid"][0])

    # GET /vis/{id}: the same address, with the job's state.
    r = s.alice.get(f"/vis/{job_id}")
    assert r.status == 200, r.body
    assert r.body["data"]["visurl"]["url"] == url
    assert r.body["data"]["vis"]["state"] == "RUNNING" and r.body["data"]["vis"]["display"] == display

    # Another user's session is not theirs to open, admins included.
    for other in (s.bob, s.admin):
        r = other.get(f"/vis/url/{job_id}")
        assert r.status == 403, r.body
        assert password not in json.dumps(r.body)

    # The session file: only its owner can read it; it names the live processes.
    path = s.session_file("alice", job_id)
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert st.st_uid == pwd.getpwnam(s.job_account("alice")).pw_uid
    session = json.loads(path.read_text())
    assert session["password"] == password and session["display"] == display
    pids = {"Xvnc": session["xvncPid"], "websockify": session["websockifyPid"]}
    assert all(process_alive(pid) for pid in pids.values()), pids

    # The password never reaches the job's output.
    out = s.alice.output(job_id)["data"] + s.alice.output(job_id, stream="stderr")["data"]
    assert password not in out
    assert "is ready" in out

    # VNC authentication, straight over the websocket through NGINX.
    ws = ws_url(s.front_url, url)
    assert rfb_auth(ws, password) == (0, "")
    wrong = ("x" if password[0] != "x" else "y") + password[1:]
    result, reason = rfb_auth(ws, wrong)
    assert result == 1, (result, reason)
    print(f"[{s.backend}] wrong password refused by the server: {reason!r}")
    # NGINX proxies only the allowed addresses and ports.
    import requests
    assert requests.get(s.front_url + "/novnc-ws/10.0.0.1/6100", timeout=10).status_code == 403
    assert requests.get(s.front_url + "/novnc-ws/127.0.0.1/22", timeout=10).status_code == 403
    # ... and only with the ticket the gateway gave the desktop's owner: without it, with a
    # changed one or with another desktop's, no websocket (the VNC password is not the only lock).
    ticket = q["path"][0].rsplit("/", 1)[1]
    desktop = ws.rsplit("/", 1)[0]
    other_port = 6100 + (session["port"] - 6100 + 1) % 100
    middle = len(ticket) // 4                      # a whole base64 character of the payload
    changed = ticket[:middle] + ("A" if ticket[middle] != "A" else "B") + ticket[middle + 1:]
    for bad in (desktop, f"{desktop}/{changed}", f"{ws.rsplit('/', 2)[0]}/{other_port}/{ticket}"):
        assert _upgrade_status(bad) == 403, bad
    assert _upgrade_status(ws) == 101
    assert _upgrade_status(ws, method="POST") == 403              # a handshake is a GET
    # A handshake with a body (there is none in a websocket's): refused before the check, whose
    # subrequest would carry the Content-Length and hold a gateway thread waiting for it.
    assert _upgrade_status(ws, {"Content-Length": "1"}, b"x") == 400
    _novnc_route_carries_websockets_only(s, job_id)

    # The desktop in the browser.
    with chromium(tmp_path) as browser:
        page = browser.new_page()
        open_novnc(page, s.front_url + url)
        page.wait_for("document.documentElement.classList.contains('noVNC_connected')", 45, "noVNC to connect")
        rect_js = ("(() => { const c = document.querySelector('#noVNC_container canvas'); "
                   "if (!c) return null; const r = c.getBoundingClientRect(); "
                   "return {x: r.x, y: r.y, width: r.width, height: r.height}; })()")
        stats = {}

        def drawn():
            rect = page.eval(rect_js)
            if not rect or rect["width"] < 100:
                return None
            png = page.screenshot()
            stats.update(canvas_stats(png, rect), rect=rect, png=png)
            return stats["stddev"] > MIN_STDDEV
        try:
            wait_until(drawn, 30, "the desktop to be drawn on noVNC's canvas", interval=0.5)
        finally:
            if stats.get("png"):
                shot = os.path.join(artifacts_dir, f"vis-session-{s.backend}.png")
                with open(shot, "wb") as fh:
                    fh.write(stats["png"])
        print(f"[{s.backend}] canvas {stats['size']}: grey mean {stats['mean']:.1f}, stddev {stats['stddev']:.1f}, "
              f"{stats['colours']} colours; screenshot {shot}")
        assert stats["colours"] > 2

        # A wrong password: noVNC shows the server's refusal.
        bad = browser.new_page()
        open_novnc(bad, s.front_url + url.replace(f"password={password}", f"password={wrong}"))
        status = bad.wait_for("(() => { const e = document.getElementById('noVNC_status'); "
                              "return e.classList.contains('noVNC_status_error') ? e.textContent : null; })()",
                              45, "noVNC to report the refusal")
        print(f"[{s.backend}] noVNC with a wrong password: {status!r}")
        assert re.search(r"fail|rejected", status, re.I), status
        assert not bad.eval("document.documentElement.classList.contains('noVNC_connected')")
        page.close()
        bad.close()

    # Nothing in NGINX's access log carries the password.
    assert password not in s.nginx_access_log()

    # Killing the job ends the session: no Xvnc, no websockify, no session file.
    r = s.alice.post(f"/jobs/{job_id}/kill")
    assert r.status == 200, r.body
    t0 = time.monotonic()
    s.alice.wait_for(job_id, {"CANCELLED", "FAILED"}, timeout=90)
    wait_until(lambda: not any(process_alive(pid) for pid in pids.values()), 45,
               f"Xvnc and websockify of job {job_id} to end")
    gone_s = time.monotonic() - t0
    leftovers = [p for p in processes_named("Xvnc") if f" :{display} " in p[1] + " "]
    leftovers += [p for p in processes_named("websockify") if f":{session['port']} " in p[1] + " "]
    assert leftovers == [], leftovers
    assert not path.exists()
    assert not os.path.exists(f"/tmp/.X11-unix/X{display}")
    r = s.alice.get(f"/vis/url/{job_id}")
    assert r.status == 410, r.body
    # Its ticket ended with it: the port is free for another desktop, not open to this one's.
    assert _upgrade_status(ws) == 403
    print(f"[{s.backend}] killed: processes gone {gone_s:.1f} s after the kill request")


def _upgrade_status(ws_address: str, extra_headers: dict | None = None, body: bytes | None = None,
                    method: str = "GET") -> int:
    """The status NGINX answers a websocket handshake to this address with."""
    import base64

    import requests
    url = ws_address.replace("ws://", "http://", 1)
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), "Sec-WebSocket-Protocol": "binary",
               **(extra_headers or {})}
    with requests.request(method, url, headers=headers, data=body, timeout=10, stream=True) as r:
        return r.status_code


def _novnc_route_carries_websockets_only(s, job_id):
    """Any user's job may listen on a port of the vis range (a desktop's owner holds a ticket
    for its port). A page, script or service worker it served through /novnc-ws/ would run
    with the gateway's origin (where the desktops' addresses and the API's tokens live): NGINX
    refuses anything but a websocket upgrade, and what answers one is sandboxed and may not
    widen a service worker's scope."""
    import http.server
    import threading

    import requests

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<script>steal()</script>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Service-Worker-Allowed", "/")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    for port in range(6199, 6099, -1):
        try:
            server = http.server.HTTPServer(("127.0.0.1", port), Page)
            break
        except OSError:
            continue
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # A ticket for this port, as the gateway would sign it for alice's running desktop.
        ticket = s.app.extensions["hpc_gateway_vis_tickets"].issue(s.users["alice"], job_id, "127.0.0.1", port)
        url = f"{s.front_url}/novnc-ws/127.0.0.1/{port}/{ticket}"
        plain = requests.get(url, timeout=10)
        assert plain.status_code == 403 and b"steal" not in plain.content
        upgrade = requests.get(url, headers={"Upgrade": "websocket", "Connection": "Upgrade"}, timeout=10)
        assert upgrade.headers.get("Content-Security-Policy") == "sandbox", upgrade.headers
        assert "Service-Worker-Allowed" not in upgrade.headers
    finally:
        server.shutdown()
        server.server_close()


def _rfb_banner(ws_address: str) -> bytes | None:
    """The first 12 bytes the desktop sends over the websocket (its RFB version), or None when
    the connection is refused or closed before any."""
    import websocket
    try:
        ws = websocket.create_connection(ws_address, subprotocols=["binary"], timeout=10, suppress_origin=True)
    except (websocket.WebSocketException, OSError):
        return None
    try:
        data = ws.recv()
        return bytes(data[:12]) if data else None
    except (websocket.WebSocketException, OSError):
        return None
    finally:
        ws.close()


def test_a_session_file_naming_another_desktop_opens_nothing(vis_stack):
    """A user writes the session file of a job of their own (any job named vnc-*), so it may
    name another user's desktop: the gateway signs a ticket for that address and port, and
    NGINX lets the websocket through, but the ticket carries the user's own websockify key,
    and the other desktop's websockify wants its own: no RFB byte reaches the user."""
    s = vis_stack
    r = s.bob.post("/vis/submit", json={"command": "sleep 300", "type": "vnc"})
    assert r.status == 200, r.body
    bob_job = r.body["data"]["vis"]["jobId"]
    forged_job = None
    try:
        bob_url, _ = wait_for_url(s.bob, bob_job)
        bob_ws = ws_url(s.front_url, bob_url)
        assert (_rfb_banner(bob_ws) or b"").startswith(b"RFB "), "bob's own address does not open his desktop"
        _, address, port, _ = parse_qs(urlsplit(bob_url).query)["path"][0].split("/")
        # alice's job writes a session file naming bob's websockify, with a key of her own.
        script = (
            'id=${SLURM_JOB_ID:-${LSB_JOBID:-$GATEWAY_JOB_ID}}\n'
            'dir=$(getent passwd "$(id -u)" | cut -d: -f6)/.hpc-gateway/vis\n'
            'mkdir -p "$dir" && chmod 700 "$dir"\n'
            f'printf \'{{"jobId": "%s", "host": "{address}", "port": {port}, "display": 11, '
            f'"password": "Abcdef12", "key": "{"ab" * 16}", "execHost": "n1", "started": %s}}\' '
            '"$id" "$(date +%s)" > "$dir/$id.json"\n'
            'sleep 300\n')
        r = s.alice.post("/jobs", json={"command": script, "name": "vnc-forged"})
        assert r.status == 200, r.body
        forged_job = r.body["data"]["job"]["jobId"]
        forged_url, _ = wait_for_url(s.alice, forged_job)
        forged_ws = ws_url(s.front_url, forged_url)
        assert f"/novnc-ws/{address}/{port}/" in forged_ws          # the gateway signed it,
        import requests
        ticket = forged_ws.rsplit("/", 1)[1]
        check = requests.get(s.gateway_url + "/aip/v9.2/vis/websocket-check", timeout=10,
                             params={"address": address, "port": port, "ticket": ticket})
        # passes it (NGINX proxies it), with alice's own key for bob's websockify,
        assert check.status_code == 204 and check.headers["X-Hpcgw-Vis-Key"] == "ab" * 16, check.headers
        assert _rfb_banner(forged_ws) is None, "another desktop's websockify answered a forged session's ticket"
        assert (_rfb_banner(bob_ws) or b"").startswith(b"RFB ")
    finally:
        s.bob.post(f"/jobs/{bob_job}/kill")
        if forged_job:
            s.alice.post(f"/jobs/{forged_job}/kill")


def test_session_ends_with_its_command(vis_stack):
    s = vis_stack
    r = s.alice.post("/vis/submit", json={"command": "sleep 4", "type": "vnc", "geometry": "800x600"})
    assert r.status == 200, r.body
    job_id = r.body["data"]["vis"]["jobId"]
    url, _ = wait_for_url(s.alice, job_id)
    session = json.loads(s.session_file("alice", job_id).read_text())
    pids = [session["xvncPid"], session["websockifyPid"]]
    job = s.alice.wait_for(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=90)
    assert job["state"] == "COMPLETED", job
    wait_until(lambda: not any(process_alive(p) for p in pids), 15, "the desktop's processes to end")
    assert not s.session_file("alice", job_id).exists()
    r = s.alice.get(f"/vis/url/{job_id}")
    assert r.status == 410 and "ended" in r.msg, r.body
