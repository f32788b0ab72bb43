"""HTTPS: gunicorn with ssl: 1 (deploy/gunicorn.conf.py), and NGINX terminating TLS.

The certificate is self-signed, made by the test with the openssl CLI (for 127.0.0.1 and
localhost); clients verify against it, so a wrong certificate would fail the test too.
"""
from __future__ import annotations

import os
import shutil
import ssl
import socket
import subprocess

import pytest
import requests

from tests.helpers import require

from .servers import PREFIX, GunicornReplica, Nginx, free_port, render, write_config
from .test_gunicorn import over_the_limit_answers


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    require(bool(shutil.which("openssl")), "openssl is not installed (Debian: apt-get install openssl)")
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "server.crt", tmp / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    key.chmod(0o600)
    return cert, key


def _gateway_config(tmp, **cfg):
    return write_config(tmp / "gateway.yaml", bind="127.0.0.1", work_dir=str(tmp / "work"), log_level="info",
                        scheduler={"backend": "mock", "options": {"state_dir": str(tmp / "mock")}}, **cfg)


def _admin_password(tmp) -> str:
    return (tmp / "work" / "initial-admin-password").read_text().strip()


def _tls_replica(tmp_path, procs, certificate) -> tuple[GunicornReplica, int, int]:
    """A replica with ssl: 1 on the mock backend, answering: (it, http_port, https_port)."""
    cert, key = certificate
    http_port, https_port = free_port(), free_port()
    config = _gateway_config(tmp_path, ssl=1, http_port=http_port, https_port=https_port,
                             cert=str(cert), key=str(key))
    replica = GunicornReplica(procs, "tls", config, tmp_path / "log", workers=1, threads=4,
                              scheme="https", verify=str(cert)).start()
    return replica, http_port, https_port


def test_ssl_1_serves_https_on_https_port_and_nothing_else(tmp_path, procs, certificate, need_gunicorn):
    cert, _ = certificate
    replica, http_port, https_port = _tls_replica(tmp_path, procs, certificate)

    base = f"https://127.0.0.1:{https_port}{PREFIX}"
    health = requests.get(base + "/health", verify=str(cert), timeout=10)
    assert health.status_code == 200 and health.json()["msg"] == "Success"
    login = requests.post(base + "/login", json={"username": "admin", "password": _admin_password(tmp_path)},
                          verify=str(cert), timeout=10)
    assert login.status_code == 200, login.text
    token = login.json()["data"]["token"]["token"]
    jobs = requests.get(base + "/jobs", headers={"Authorization": f"Bearer {token}"}, verify=str(cert), timeout=10)
    assert jobs.status_code == 200

    # Plain HTTP to the TLS port gets no HTTP answer: the handshake fails and the connection closes.
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{https_port}{PREFIX}/health", timeout=10)
    # An untrusted certificate is not silently accepted by a verifying client.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(base + "/health", timeout=10)
    # With ssl: 1 nothing listens on http_port.
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", http_port)) != 0
    assert replica.proc.alive()


def test_a_body_over_the_limit_sent_in_full_gets_its_413_under_tls_too(tmp_path, procs, certificate,
                                                                        need_gunicorn):
    """test_gunicorn.py's test of a refused body's 413, over ssl: 1. Before the replica read
    what still came, every one of these ended in the client's SSLEOFError."""
    cert, _ = certificate
    _, _, port = _tls_replica(tmp_path, procs, certificate)
    login = requests.post(f"https://127.0.0.1:{port}{PREFIX}/login", verify=str(cert), timeout=10,
                          json={"username": "admin", "password": _admin_password(tmp_path)})
    context = ssl.create_default_context(cafile=str(cert))
    answers = over_the_limit_answers(
        lambda: context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                    server_hostname="127.0.0.1"),
        login.json()["data"]["token"]["token"])
    assert answers == ["413"] * 10, answers


def _tls_site(tmp_path, procs, certificate, *, novnc: bool = False) -> tuple[str, int]:
    """A plain replica behind NGINX with hpc-gateway-ha-tls.conf (and, with ``novnc``, the
    noVNC snippet included where the site says): (https origin, NGINX's port, the replica),
    answering."""
    cert, key = certificate
    http_port = free_port()
    config = _gateway_config(tmp_path, http_port=http_port, trusted_proxies=1)
    replica = GunicornReplica(procs, "plain", config, tmp_path / "log", workers=1, threads=4).start()
    listen = free_port()
    site = render("hpc-gateway-ha-tls.conf", "--replica", f"127.0.0.1:{http_port}",
                  "--listen", f"127.0.0.1:{listen}", "--cert", str(cert), "--key", str(key))
    if novnc:
        from tests.vis.support import NOVNC_SNIPPET
        site = site.replace("# include /etc/nginx/snippets/hpc-gateway-novnc.conf;", f"include {NOVNC_SNIPPET};")
        assert "hpc-gateway-novnc.conf;" in site
    nginx = Nginx(procs, tmp_path / "nginx", site)
    origin = f"https://127.0.0.1:{listen}"
    from .servers import wait_until
    wait_until(lambda: requests.get(origin + PREFIX + "/health", verify=str(cert), timeout=5).status_code == 200,
               20, "NGINX (TLS) to answer /health", proc=nginx.proc)
    return origin, listen, replica


def test_nginx_terminates_tls_in_front_of_a_plain_replica(tmp_path, procs, certificate, need_gunicorn, need_nginx):
    cert, _ = certificate
    origin, listen, replica = _tls_site(tmp_path, procs, certificate)
    base = origin + PREFIX
    login = requests.post(base + "/login", json={"username": "admin", "password": _admin_password(tmp_path)},
                          verify=str(cert), timeout=10)
    assert login.status_code == 200, login.text
    assert login.headers.get("Strict-Transport-Security")
    token = login.json()["data"]["token"]["token"]
    submitted = requests.post(base + "/jobs", json={"command": "true", "name": "over-tls"},
                              headers={"Authorization": f"Bearer {token}"}, verify=str(cert), timeout=10)
    assert submitted.status_code == 200, submitted.text

    # NGINX answers plain HTTP on its TLS port with an error, never with the API.
    plain = requests.get(f"http://127.0.0.1:{listen}{PREFIX}/health", timeout=10)
    assert plain.status_code == 400
    assert "Success" not in plain.text

    # The replica gone: NGINX's own 502 keeps the site's HSTS (a location's add_header drops
    # the server's) and invites a repeat of a GET only.
    replica.kill()
    gone = requests.get(base + "/health", verify=str(cert), timeout=30)
    assert gone.status_code == 502 and gone.json()["data"] is None, (gone.status_code, gone.text[:300])
    assert gone.headers.get("Strict-Transport-Security") == "max-age=31536000", gone.headers
    assert gone.headers.get("Retry-After") == "2", gone.headers
    posted = requests.post(base + "/jobs", json={"command": "true"}, verify=str(cert), timeout=30)
    assert posted.status_code == 502 and "Retry-After" not in posted.headers, (posted.status_code, posted.headers)
    assert posted.headers.get("Strict-Transport-Security") == "max-age=31536000", posted.headers


def test_the_novnc_snippet_keeps_hsts_on_the_tls_site(tmp_path, procs, certificate, need_gunicorn, need_nginx):
    """NGINX drops a server's add_header in a location that has its own: the noVNC pages
    (which carry the desktops' passwords in their addresses) lost the TLS site's HSTS."""
    require(os.path.isfile("/usr/share/novnc/vnc.html"), "noVNC is not installed (Debian: apt-get install novnc)")
    cert, _ = certificate
    base, _, _ = _tls_site(tmp_path, procs, certificate, novnc=True)
    page = requests.get(base + "/novnc/vnc.html", verify=str(cert), timeout=10)
    assert page.status_code == 200 and "noVNC" in page.text
    assert page.headers.get("Strict-Transport-Security") == "max-age=31536000"
    assert page.headers.get("Referrer-Policy") == "no-referrer"
    assert page.headers.get("Content-Security-Policy") == "frame-ancestors 'none'"     # not framed
    # A websocket path without the upgrade: refused by the websocket location, with HSTS too.
    refused = requests.get(base + "/novnc-ws/127.0.0.1/6100/WyJhIl0.forged", verify=str(cert), timeout=10)
    assert refused.status_code == 403 and refused.headers.get("Strict-Transport-Security")
    # A websocket with a ticket the gateway did not sign: NGINX's ticket check reaches the
    # gateway through this site's API location and is refused (403, with HSTS; a check that
    # could not reach the gateway, or reached another route, would be a 500 or a 401).
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    forged = requests.get(base + "/novnc-ws/127.0.0.1/6100/WyJhIl0.forged", headers=upgrade,
                          verify=str(cert), timeout=10)
    assert forged.status_code == 403 and forged.headers.get("Strict-Transport-Security"), forged.headers


def test_a_desktop_opens_through_the_deployed_tls_site_with_its_ticket_and_not_after_its_job(
        tmp_path, procs, certificate, need_gunicorn, need_nginx):
    """The deployed site (hpc-gateway-ha-tls.conf: keep-alive HTTP/1.1 upstream, the proxy
    headers) with the noVNC snippet included, a gunicorn replica on the mock backend: the
    address GET /vis/url gives opens the desktop over wss:// (VNC authentication with its
    password succeeds; NGINX's ticket check reaches the gateway through the site's API
    location and is let through, several times over the same upstream connections), and
    the same address is refused once the job has been killed."""
    from urllib.parse import parse_qs, urlsplit

    import websocket

    from tests.vis.conftest import require_vis_components
    from tests.vis.support import rfb_auth, wait_until
    require_vis_components()
    cert, _ = certificate
    origin, _, _ = _tls_site(tmp_path, procs, certificate, novnc=True)
    base = origin + PREFIX
    login = requests.post(base + "/login", json={"username": "admin", "password": _admin_password(tmp_path)},
                          verify=str(cert), timeout=10)
    assert login.status_code == 200, login.text
    auth = {"Authorization": f"Bearer {login.json()['data']['token']['token']}"}
    r = requests.post(base + "/vis/submit", json={"command": "sleep 300", "type": "vnc"}, headers=auth,
                      verify=str(cert), timeout=30)
    assert r.status_code == 200, r.text
    job_id = r.json()["data"]["vis"]["jobId"]
    try:
        def address():
            got = requests.get(f"{base}/vis/url/{job_id}", headers=auth, verify=str(cert), timeout=10)
            assert got.status_code in (200, 409), got.text
            return got.json()["data"]["visurl"]["url"] if got.status_code == 200 else None
        url = wait_until(address, 90, f"the desktop of job {job_id}", interval=0.5)
        parts = urlsplit(url)
        password = parse_qs(parts.fragment)["password"][0]
        ws = origin.replace("https://", "wss://", 1) + "/" + parse_qs(parts.query)["path"][0]
        tls = {"ca_certs": str(cert)}
        for _ in range(3):
            assert rfb_auth(ws, password, sslopt=tls) == (0, "")
        result, _ = rfb_auth(ws, password[::-1] + "x", sslopt=tls)        # the desktop's own lock
        assert result != 0
    finally:
        killed = requests.post(f"{base}/jobs/{job_id}/kill", headers=auth, verify=str(cert), timeout=30)
    assert killed.status_code == 200, killed.text

    def refused():
        try:
            rfb_auth(ws, password, sslopt=tls)
        except websocket.WebSocketBadStatusException as exc:
            return exc.status_code == 403
        except (websocket.WebSocketException, OSError):      # the desktop going away meanwhile
            return False
        return False
    wait_until(refused, 30, "NGINX to refuse the ended job's desktop address")


def test_slow_tls_clients_are_cut_by_the_deadlines(tmp_path, procs, certificate, need_gunicorn):
    """ssl: 1 and the slow-client deadlines (tests/deploy/test_slow_clients.py has the plain
    HTTP cases): a handshake that stops half-way and a reader that stops reading each lose
    their connection, and the one worker's 4 threads serve again."""
    from tests.files.test_download_cleanup import gone_within

    from .servers import wait_until
    from .test_slow_clients import SLOW_PAUSE, closed_by_server, dd_started, health_answers, read_answer, read_slowly
    cert, key = certificate
    https_port = free_port()
    # One user stalls all 4 threads with downloads on purpose: no per-user share of file
    # operations (here it would be 2), as in test_slow_clients.py.
    config = _gateway_config(tmp_path, ssl=1, http_port=free_port(), https_port=https_port, cert=str(cert),
                             key=str(key), client_header_timeout=2, client_io_timeout=2,
                             max_file_ops_per_user=0)
    replica = GunicornReplica(procs, "tls-slow", config, tmp_path / "log", workers=1, threads=4,
                              scheme="https", verify=str(cert)).start()
    base = f"https://127.0.0.1:{https_port}{PREFIX}"

    # Half a ClientHello: a TLS record header announcing 512 bytes, and 10 of them.
    halves = [socket.create_connection(("127.0.0.1", https_port)) for _ in range(4)]
    try:
        for sock in halves:
            sock.sendall(b"\x16\x03\x01\x02\x00" + b"\x01" * 10)
        assert all(closed_by_server(sock, 5 + 2 + 4) for sock in halves), "a stalled handshake kept its connection"
        assert health_answers(replica)
    finally:
        for sock in halves:
            sock.close()

    token = requests.post(base + "/login", json={"username": "admin", "password": _admin_password(tmp_path)},
                          verify=str(cert), timeout=10).json()["data"]["token"]["token"]
    home = tmp_path / "mock" / "home" / "admin"
    home.mkdir(parents=True, exist_ok=True)
    big = home / "big.bin"
    with open(big, "wb") as fh:
        fh.truncate(256 * 1024 * 1024)
    context = ssl.create_default_context(cafile=str(cert))
    readers = []
    try:
        for _ in range(4):
            raw = socket.socket()
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            raw.connect(("127.0.0.1", https_port))
            sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
            sock.sendall(f"GET {PREFIX}/files/content?path=big.bin HTTP/1.1\r\nHost: x\r\n"
                         f"Authorization: Bearer {token}\r\n\r\n".encode())
            readers.append(sock)
        dd_started(big, 4)
        assert gone_within(str(big), 2 + 3 + 5) == [], "a stalled TLS download kept its dd"
        assert health_answers(replica)
    finally:
        for sock in readers:
            sock.close()
        big.unlink()

    # An upload that stops: a 408 over TLS too, and nothing left behind.
    with context.wrap_socket(socket.create_connection(("127.0.0.1", https_port)), server_hostname="127.0.0.1") as sock:
        sock.sendall((f"PUT {PREFIX}/files/content?path=cut.bin HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n"
                      f"Content-Length: {8 * 1024 * 1024}\r\n\r\n").encode() + b"\xab" * (1024 * 1024))
        _, _, head = read_answer(sock, 2 + 3 + 5)
    assert head.startswith(b"HTTP/1.1 408"), head[:300]
    wait_until(lambda: not os.listdir(home), 10, "the partial upload to be removed")

    # A slow reader that keeps reading gets the whole file: under TLS too, the timeout is
    # per pause, not per 1 MiB piece of the download.
    data = os.urandom(2 * 1024 * 1024)
    (home / "slow.bin").write_bytes(data)
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    raw.connect(("127.0.0.1", https_port))
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(f"GET {PREFIX}/files/content?path=slow.bin HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode())
        try:
            head, _, body = read_slowly(sock, SLOW_PAUSE).partition(b"\r\n\r\n")
        except ssl.SSLError as exc:           # a reset mid-answer
            raise AssertionError(f"the slow TLS reader was cut: {exc!r}") from exc
    assert head.startswith(b"HTTP/1.1 200"), head[:300]
    assert body == data
