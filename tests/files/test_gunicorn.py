"""Uploads against a real gunicorn (gthread, the deployed settings) on the mock backend:
what a real client disconnect and an oversized declaration do on the wire."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests
import yaml

from gateway.auth.users_file import UsersFile
from tests.support import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREFIX = "/aip/v9.2"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gunicorn-files")
    port = free_port()
    UsersFile(str(tmp / "users.yaml")).set_password("gwfiles", "pw-files-123")
    config = {"bind": "127.0.0.1", "http_port": port, "work_dir": str(tmp), "log_level": "warning",
              "auth": {"users_file": str(tmp / "users.yaml")},
              "scheduler": {"backend": "mock", "options": {"state_dir": str(tmp / "mock")}},
              "files": {"max_upload_bytes": 200 * 1024 * 1024}}
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "GATEWAY_CONFIG": str(tmp / "gateway.yaml"), "GATEWAY_WORKERS": "1", "GATEWAY_THREADS": "4"}
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    log = open(tmp / "gunicorn.log", "w")  # noqa: SIM115 - gunicorn's stderr for the module's life
    proc = subprocess.Popen([gunicorn, "--config", os.path.join(ROOT, "deploy", "gunicorn.conf.py"),
                             "gateway:create_app()"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}{PREFIX}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(base + "/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp / "gunicorn.log").read_text()[-2000:]
            time.sleep(0.2)
        http = requests.Session()
        token = http.post(base + "/login", json={"username": "gwfiles", "password": "pw-files-123"}).json()
        http.headers["Authorization"] = "Bearer " + token["data"]["token"]["token"]
        yield base, http, port, tmp / "mock" / "home" / "gwfiles"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_a_client_that_goes_away_mid_upload_leaves_nothing(server):
    base, http, port, home = server
    token = http.headers["Authorization"]
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall((f"PUT {PREFIX}/files/content?path=cut.bin HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: {token}\r\nContent-Type: application/octet-stream\r\n"
                  f"Content-Length: {100 * 1024 * 1024}\r\n\r\n").encode())
    sent = 0
    while sent < 20 * 1024 * 1024:
        sock.sendall(b"\xab" * 65536)
        sent += 65536
    # The temporary file exists while the upload runs...
    deadline = time.monotonic() + 30
    while not [n for n in os.listdir(home) if n.endswith(".part")] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [n for n in os.listdir(home) if n.endswith(".part")], "the upload never started"
    sock.close()                                  # ...and the client vanishes.
    deadline = time.monotonic() + 60
    while os.listdir(home) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert os.listdir(home) == [], "an interrupted upload must leave nothing behind"
    # The worker is fine afterwards.
    r = http.put(base + "/files/content", params={"path": "after.bin"}, data=b"ok")
    assert r.status_code == 200, r.text
    assert http.get(base + "/files/content", params={"path": "after.bin"}).content == b"ok"


def test_an_oversized_declaration_is_refused_before_the_body(server):
    _, http, port, home = server
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(30)
    sock.sendall((f"PUT {PREFIX}/files/content?path=huge.bin HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: {http.headers['Authorization']}\r\n"
                  f"Content-Type: application/octet-stream\r\nContent-Length: {300 * 1024 * 1024}\r\n\r\n").encode())
    answer = b""                                    # no byte of the body was sent
    while b"}" not in answer:
        piece = sock.recv(65536)
        if not piece:
            break
        answer += piece
    answer = answer.decode("latin-1")
    sock.close()
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert "209715200" in answer
    assert "huge.bin" not in os.listdir(home)


def test_a_large_upload_and_ranged_download_over_http(server):
    base, http, _, _ = server
    data = os.urandom(1024 * 1024) * 8
    r = http.put(base + "/files/content", params={"path": "big.bin", "overwrite": "true"}, data=iter([data[i:i + 65536] for i in range(0, len(data), 65536)]))
    assert r.status_code == 200, r.text                # chunked transfer encoding
    assert r.json()["data"]["file"]["size"] == len(data)
    part = http.get(base + "/files/content", params={"path": "big.bin"}, headers={"Range": "bytes=1000000-1999999"})
    assert part.status_code == 206 and part.content == data[1000000:2000000]
    whole = http.get(base + "/files/content", params={"path": "big.bin"}, stream=True)
    assert b"".join(whole.iter_content(1 << 20)) == data


def test_a_client_that_goes_away_mid_download_ends_its_dd(server):
    """gunicorn closes the response when the client vanishes: the dd streaming the file
    must be gone within seconds, not left blocked on a full pipe."""
    from tests.files.test_download_cleanup import gone_within, leftovers
    _, http, port, home = server
    path = home / "sparse.bin"
    with open(path, "wb") as fh:
        fh.truncate(64 * 1024 * 1024)
    try:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.settimeout(30)
        sock.sendall((f"GET {PREFIX}/files/content?path=sparse.bin HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: {http.headers['Authorization']}\r\n\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < 256 * 1024:
            piece = sock.recv(65536)
            assert piece, answer[:500]
            answer += piece
        assert answer.startswith(b"HTTP/1.1 200"), answer[:500]
        assert leftovers(str(path)), "the download's dd is not running: nothing would be tested"
        sock.close()                              # unread data: the close resets the connection
        assert gone_within(str(path), 5) == []
    finally:
        path.unlink()
