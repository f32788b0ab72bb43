"""Upload bodies read as streams (gateway.files.body): raw and multipart, never whole."""
import io
import os

import pytest
from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from gateway.errors import GatewayError
from gateway.files.body import MultipartBody, is_multipart, limit_body, raw_chunks
from tests.helpers import in_fresh_interpreter

CHUNK = 64 * 1024


@pytest.fixture
def app():
    return make_app()


def make_app():
    app = Flask("t")

    @app.route("/up", methods=["POST"])
    def up():
        limit_body(request, 5_000_000)
        sizes, data = [], bytearray()
        if is_multipart(request):
            body = MultipartBody(request, CHUNK)
            chunks = body.chunks()
            meta = {"fields": body.fields, "filename": body.filename, "field": body.field_name}
        else:
            chunks = raw_chunks(request, CHUNK)
            meta = {}
        for chunk in chunks:
            sizes.append(len(chunk))
            data += chunk
        return jsonify(meta, max(sizes or [0]), len(data), data[:64].hex(), bytes(data[-64:]).hex())

    @app.errorhandler(GatewayError)
    def gw_error(exc):
        return jsonify(msg=exc.msg), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc):
        return jsonify(msg=exc.description), exc.code

    return app


def tricky(size):
    # Data that looks like boundaries and header breaks, cut across chunk borders.
    piece = b"\r\n--XyZ\r\n--XyZ-\r\n\r\n\x00" + os.urandom(977)
    return (piece * (size // len(piece) + 1))[:size]


def post_measured(app, body: bytes):
    """POST a multipart body (boundary B) as a stream: (response, tracemalloc's peak bytes)."""
    import tracemalloc
    tracemalloc.start()
    try:
        r = app.test_client().post("/up", input_stream=io.BytesIO(body), content_type="multipart/form-data; boundary=B",
                                   environ_overrides={"CONTENT_LENGTH": str(len(body))})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return r, peak


def _post_in_fresh_interpreter(body: bytes):
    r, peak = post_measured(make_app(), body)
    return r.status_code, r.get_json(), peak


def test_multipart_streams_in_chunks_with_fields_before_the_file(app):
    data = tricky(1_000_000)
    r = app.test_client().post("/up", data={"workdir": "/w", "sha256": "ab", "file": (io.BytesIO(data), "in.dat")},
                               content_type="multipart/form-data")
    meta, biggest, total, head, tail = r.get_json()
    assert r.status_code == 200
    assert meta == {"fields": {"workdir": "/w", "sha256": "ab"}, "filename": "in.dat", "field": "file"}
    assert total == len(data) and head == data[:64].hex() and tail == data[-64:].hex()
    assert biggest <= 2 * CHUNK          # never more than about a chunk in memory


def test_raw_body_streams(app):
    data = tricky(300_000)
    r = app.test_client().post("/up", data=data, content_type="application/octet-stream")
    _, biggest, total, _, tail = r.get_json()
    assert total == len(data) and biggest <= CHUNK and tail == data[-64:].hex()


def test_multipart_without_a_file_part_is_400(app):
    r = app.test_client().post("/up", data={"workdir": "/w"}, content_type="multipart/form-data")
    assert r.status_code == 400 and "no file part" in r.get_json()["msg"]


def test_multipart_cut_short_is_400(app):
    body = (b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n" + b"x" * 100_000)
    r = app.test_client().post("/up", data=body, content_type="multipart/form-data; boundary=B")
    assert r.status_code == 400 and "ended before" in r.get_json()["msg"]


def test_multipart_without_boundary_is_400(app):
    r = app.test_client().post("/up", data=b"x", content_type="multipart/form-data")
    assert r.status_code == 400


def test_limit_applies_per_request(app):
    r = app.test_client().post("/up", data=b"x" * 5_000_001, content_type="application/octet-stream")
    assert r.status_code == 413


@pytest.mark.parametrize("multipart", [False, True])
def test_a_body_shorter_than_declared_is_an_interrupted_upload(app, multipart):
    """As gunicorn hands it over: input marked terminated, the stream just ends early."""
    if multipart:
        body = b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n" + b"x" * 100_000
        ctype = "multipart/form-data; boundary=B"
    else:
        body, ctype = b"x" * 100_000, "application/octet-stream"
    r = app.test_client().post("/up", input_stream=io.BytesIO(body), content_type=ctype,
                               environ_overrides={"wsgi.input_terminated": True, "CONTENT_LENGTH": "900000"})
    assert r.status_code == 400 and "interrupted" in r.get_json()["msg"]


@pytest.mark.parametrize("body", [
    b"a" * 4_000_000,                                                     # a preamble with no boundary
    b"--B\r\nContent-Disposition: form-data; name=\"f\"; X-Pad: " + b"a" * 4_000_000,  # headers with no end
])
def test_multipart_without_an_end_in_sight_is_refused_after_a_bounded_read(app, body):
    """The decoder holds back what it has not matched: such a body was held whole (a 300 MiB
    one grew a worker by 241 MB). Now it is a 400 once a read plus the fields' room is held."""
    status, doc, peak = in_fresh_interpreter(_post_in_fresh_interpreter, body)
    assert status == 400 and "no boundary or end of part headers" in doc["msg"]
    assert peak < 1_500_000, f"peak {peak} bytes"


def test_many_fields_before_the_file_are_refused_not_held(app):
    """The names and the count of the fields count too: 300,000 empty fields with distinct
    names held ~56 MB when only their values counted (a review's measurement)."""
    fields = b"".join(b"--B\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\n\r\n" % i for i in range(20_000))
    body = fields + b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\nx\r\n--B--\r\n"
    status, doc, peak = in_fresh_interpreter(_post_in_fresh_interpreter, body)
    assert status == 400 and "fields" in doc["msg"], doc
    assert peak < 1_500_000, f"peak {peak} bytes"
    few = b"".join(b"--B\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\nv\r\n" % i for i in range(50))
    body = few + b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\nx\r\n--B--\r\n"
    r = app.test_client().post("/up", data=body, content_type="multipart/form-data; boundary=B")
    assert r.status_code == 200 and len(r.get_json()[0]["fields"]) == 50


def test_a_boundary_that_is_not_ascii_is_400(app):
    r = app.test_client().post("/up", data=b"x", content_type="multipart/form-data; boundary*=UTF-8''%E2%82%AC")
    assert r.status_code == 400, r.get_json()
