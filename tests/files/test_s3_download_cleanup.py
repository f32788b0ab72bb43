"""A download over the S3 channel (SSM transport) must not leave its staging object behind.

The file goes from the cluster into a staging object, which is streamed to the client and
deleted when the response ends: closed by the WSGI server or, if it is never closed, when its
iterator is dropped. Runs the real channel: curl (as the service account, through the local
transport) PUTs the file to moto's S3 server with a presigned URL, boto3 streams it back.
"""
from __future__ import annotations

import gc
import os
import shutil
import time

import pytest

from gateway.files.channels import S3Channel
from gateway.files.settings import load_files_settings
from gateway.transports.local import LocalTransport
from tests.support import require
from tests.support.s3_server import moto_available, s3_server

BUCKET = "gw-files-staging"
SIZE = 3 * 1024 * 1024


@pytest.fixture(scope="module")
def s3():
    ok, why = moto_available()
    require(ok, why)
    require(shutil.which("curl") is not None, "curl is needed")
    with s3_server(buckets=[BUCKET]) as server:
        yield server


@pytest.fixture
def channel(s3):
    settings = load_files_settings({"chunk_bytes": 64 * 1024, "staging": {
        "bucket": BUCKET, "endpoint_url": s3.url, "region": s3.region}})
    return S3Channel(LocalTransport(timeout=30), None, settings)


@pytest.fixture
def big_file(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(SIZE))
    return str(path)


def staged(s3) -> list[str]:
    return [o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def gone_within(s3, seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := staged(s3)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def first_chunk(channel, s3, path):
    stream = channel.read(path, 0, SIZE)
    chunk = next(iter(stream))
    assert chunk and len(chunk) < SIZE
    assert staged(s3), "no staging object: nothing would be tested"
    return stream


def test_a_staging_key_taken_first_fails_the_download_instead_of_serving_it(channel, s3, big_file, monkeypatch):
    """The download's presigned PUT is in the Run Command, which SSM's history shows. An
    object put there first by whoever read it (forged content) makes curl's conditional PUT
    fail (412): a clear error, never the forged bytes; and the URL is signed with the
    condition, so a later PUT with it cannot replace the user's file either."""
    from urllib.parse import parse_qs, urlparse

    from gateway.errors import GatewayError
    key = "forged-" + os.urandom(4).hex()
    url = channel._url("put_object", key)
    assert "if-none-match" in parse_qs(urlparse(url).query)["X-Amz-SignedHeaders"][0].split(";")
    monkeypatch.setattr(channel, "_key", lambda: key)
    s3.put(BUCKET, key, b"forged")
    with pytest.raises(GatewayError) as refused:
        b"".join(channel.read(big_file, 0, SIZE))
    assert "412" in refused.value.msg or "Precondition" in refused.value.msg, refused.value.msg
    assert gone_within(s3, 5) == []


def test_a_whole_download_deletes_its_staging_object(channel, s3, big_file):
    stream = channel.read(big_file, 0, SIZE)
    data = b"".join(stream)
    stream.close()
    with open(big_file, "rb") as fh:
        assert data == fh.read()
    assert gone_within(s3, 5) == []


def test_a_download_closed_early_deletes_its_staging_object(channel, s3, big_file):
    first_chunk(channel, s3, big_file).close()
    assert gone_within(s3, 5) == []


def test_a_download_dropped_unclosed_deletes_its_staging_object(channel, s3, big_file):
    first_chunk(channel, s3, big_file)            # dropped here, never closed
    gc.collect()
    assert gone_within(s3, 5) == []
