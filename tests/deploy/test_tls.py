"""HTTPS: gunicorn with ssl: 1 (deploy/gunicorn.conf.py), and NGINX terminating TLS.

The certificate is self-signed, made by the test with the openssl CLI (for 127.0.0.1 and
localhost); clients verify against it, so a wrong certificate would fail the test too.
"""
from __future__ import annotations

import shutil
import socket
import subprocess

import pytest
import requests

from tests.helpers import require

from .servers import PREFIX, GunicornReplica, Nginx, free_port, render, write_config


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


def test_ssl_1_serves_https_on_https_port_and_nothing_else(tmp_path, procs, certificate, need_gunicorn):
    cert, key = certificate
    http_port, https_port = free_port(), free_port()
    config = _gateway_config(tmp_path, ssl=1, http_port=http_port, https_port=https_port,
                             cert=str(cert), key=str(key))
    replica = GunicornReplica(procs, "tls", config, tmp_path / "log", workers=1, threads=4,
                              scheme="https", verify=str(cert)).start()

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


def test_nginx_terminates_tls_in_front_of_a_plain_replica(tmp_path, procs, certificate, need_gunicorn, need_nginx):
    cert, key = certificate
    http_port = free_port()
    config = _gateway_config(tmp_path, http_port=http_port, trusted_proxies=1)
    GunicornReplica(procs, "plain", config, tmp_path / "log", workers=1, threads=4).start()
    listen = free_port()
    site = render("hpc-gateway-ha-tls.conf", "--replica", f"127.0.0.1:{http_port}",
                  "--listen", f"127.0.0.1:{listen}", "--cert", str(cert), "--key", str(key))
    nginx = Nginx(procs, tmp_path / "nginx", site)

    base = f"https://127.0.0.1:{listen}{PREFIX}"
    from .servers import wait_until
    wait_until(lambda: requests.get(base + "/health", verify=str(cert), timeout=5).status_code == 200, 20,
               "NGINX (TLS) to answer /health", proc=nginx.proc)
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
