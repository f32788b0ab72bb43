"""gateway/serving.py: gunicorn sends an answer's headers with its first body bytes, in one write.

Each case parses a real request with gunicorn's parser, builds the response with
``gunicorn.http.wsgi.create`` (as the gthread worker does) after ``install()``, runs a WSGI
app through it the way the worker does, and looks at the socket's writes: how many, and
whether together they are the HTTP answer the app meant.
"""
from __future__ import annotations

import http.client
import io
import os
import subprocess
import sys
import tempfile

import pytest
from gunicorn.config import Config
from gunicorn.http import RequestParser, wsgi

from gateway import serving
from tests.deploy.servers import GUNICORN_CONF, ROOT


class RecordingSocket:
    """What a worker's client socket is to a Response: sendall and sendfile."""

    def __init__(self):
        self.writes: list[bytes] = []

    def sendall(self, data):
        self.writes.append(bytes(data))

    def sendfile(self, file, offset=0, count=None):
        file.seek(offset)
        self.writes.append(file.read(count))

    @property
    def wire(self) -> bytes:
        return b"".join(self.writes)


@pytest.fixture
def one_write(monkeypatch):
    monkeypatch.setattr(wsgi, "Response", wsgi.Response)     # undone after the test
    assert serving.install(), "this gunicorn has no Response._emit_body: one-write answers are off"


def serve(app, method="GET", path="/aip/v9.2/jobs/1"):
    cfg = Config()
    raw = f"{method} {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode()
    req = next(iter(RequestParser(cfg, [raw], ("127.0.0.1", 50000))))
    sock = RecordingSocket()
    resp, environ = wsgi.create(req, sock, ("127.0.0.1", 50000), ("127.0.0.1", 8088), cfg)
    body = app(environ, resp.start_response)
    if isinstance(body, environ["wsgi.file_wrapper"]):
        resp.write_file(body)
    else:
        for chunk in body:
            resp.write(chunk)
    resp.close()
    return resp, sock


def parse(wire: bytes, method="GET"):
    class Source:
        def makefile(self, *a, **kw):
            return io.BytesIO(wire)
    answer = http.client.HTTPResponse(Source(), method=method)
    answer.begin()
    return answer, answer.read()


BODY = b'{"code": "0", "data": {"job": {"jobId": "1"}}}'


def json_app(status="200 OK", chunks=(BODY,), length=True):
    def app(environ, start_response):
        headers = [("Content-Type", "application/json")]
        if length:
            headers.append(("Content-Length", str(sum(len(c) for c in chunks))))
        start_response(status, headers)
        return list(chunks)
    return app


def test_an_answer_of_one_chunk_is_one_write(one_write):
    resp, sock = serve(json_app())
    assert type(resp) is serving.OneWriteResponse
    assert len(sock.writes) == 1, sock.writes
    answer, body = parse(sock.wire)
    assert answer.status == 200 and answer.getheader("Content-Type") == "application/json"
    assert body == BODY


def test_more_chunks_the_headers_ride_with_the_first(one_write):
    _, sock = serve(json_app(chunks=(b"[1, ", b"2, ", b"3]")))
    assert len(sock.writes) == 3 and sock.writes[0].endswith(b"\r\n\r\n[1, "), sock.writes
    assert parse(sock.wire)[1] == b"[1, 2, 3]"


def test_no_body_the_headers_go_at_close(one_write):
    for status, chunks, method in (("204 No Content", (), "GET"), ("200 OK", (b"",), "GET"),
                                   ("200 OK", (b"not sent to a HEAD",), "HEAD")):
        _, sock = serve(json_app(status=status, chunks=chunks), method=method)
        assert len(sock.writes) == 1, (status, method, sock.writes)
        answer, body = parse(sock.wire, method=method)
        assert answer.status == int(status.split()[0]) and body == b"", (status, method, body)


def test_a_stream_keeps_its_framing(one_write):
    _, sock = serve(json_app(chunks=(b"line 1\n", b"line 2\n"), length=False))
    assert sock.writes[0].endswith(b"\r\n\r\n") and b"Transfer-Encoding: chunked" in sock.writes[0]
    answer, body = parse(sock.wire)
    assert answer.status == 200 and body == b"line 1\nline 2\n"


def test_a_file_by_sendfile_follows_its_headers(one_write):
    with tempfile.TemporaryFile() as fh:
        fh.write(b"x" * 5000)
        fh.seek(0)

        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", "5000")])
            return environ["wsgi.file_wrapper"](fh)
        _, sock = serve(app)
    assert sock.writes[0].endswith(b"\r\n\r\n") and sock.writes[1] == b"x" * 5000, [len(w) for w in sock.writes]
    assert parse(sock.wire)[1] == b"x" * 5000


def test_gunicorns_own_response_writes_twice(monkeypatch):
    """What install() changes: gunicorn's Response sends the same answer in two writes."""
    monkeypatch.setattr(wsgi, "Response", serving.OneWriteResponse.__bases__[0])
    resp, sock = serve(json_app())
    assert type(resp) is not serving.OneWriteResponse
    assert len(sock.writes) == 2 and sock.writes[0].endswith(b"\r\n\r\n"), sock.writes
    assert parse(sock.wire)[1] == BODY


def test_the_deployed_config_installs_it(tmp_path):
    """deploy/gunicorn.conf.py, run as gunicorn runs it, leaves gunicorn answering in one write."""
    config = tmp_path / "gateway.yaml"
    config.write_text(f"work_dir: {tmp_path / 'work'}\n")
    probe = ("import runpy; from gunicorn.http import wsgi; from gateway.serving import OneWriteResponse; "
             f"runpy.run_path({str(GUNICORN_CONF)!r}); print(wsgi.Response is OneWriteResponse)")
    env = {**os.environ, "GATEWAY_CONFIG": str(config), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=str(ROOT), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "True", (out.stdout, out.stderr[-2000:])
