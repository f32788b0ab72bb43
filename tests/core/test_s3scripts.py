"""Job scripts from S3 (gateway.s3scripts): only objects under the operator's allow list, with
{user} standing for the caller, are read; the rest is refused before S3 is asked anything. A
silent S3 endpoint costs a bounded time and answers 504."""
from __future__ import annotations

import time

import pytest
from marshmallow import ValidationError

from gateway.errors import Forbidden, InvalidInput, SchedulerTimeout
from gateway.s3scripts import S3ScriptOptions, S3ScriptSource, split_url
from tests.support import silent_server
from tests.support.remote_fixtures import s3  # noqa: F401  (fixture)

BUCKET = "gw-core-scripts"
ALLOW = [f"s3://{BUCKET}/users/{{user}}/", f"s3://{BUCKET}/shared/"]
# Nothing listens here: a source pointed at it fails with SchedulerUnavailable if it asks S3.
UNREACHABLE = {"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"}


@pytest.fixture(scope="session")
def s3_buckets():
    return [BUCKET]


@pytest.fixture
def source(s3):  # noqa: F811
    return S3ScriptSource({"allow": ALLOW, "endpoint_url": s3.url, "region_name": s3.region,
                           "max_script_bytes": 100})


@pytest.mark.parametrize("url", [
    "s3://", "s3://bucket", "s3:/bucket/key", "/bucket/key", "s3://Bad_Bucket/key", "s3://ab/key",
    f"s3://{BUCKET}/users/alice/../bob/x.sh", f"s3://{BUCKET}/users/alice/./x.sh",
    f"s3://{BUCKET}/users//alice/x.sh", f"s3://{BUCKET}/users/alice\\..\\bob/x.sh",
    f"s3://{BUCKET}/users/alice/x\n.sh", f"s3://{BUCKET}/users/alice/x\x00.sh", f"s3://{BUCKET}/..",
])
def test_urls_that_are_not_plain_bucket_and_key_are_refused(url):
    with pytest.raises(InvalidInput) as e:
        split_url(url)
    assert e.value.errors == {"scriptLocation": e.value.errors["scriptLocation"]}


def test_a_plain_url_splits():
    assert split_url(f"s3://{BUCKET}/users/alice/run job.sh") == (BUCKET, "users/alice/run job.sh")


@pytest.mark.parametrize("entry,why", [
    (f"s3://{BUCKET}/users/{{user}}", "must end with '/'"),
    ("s3://{user}-bucket/x/", "only in the key prefix"),
    (f"s3://{BUCKET}/{{name}}/", "only placeholder"),
    (f"https://{BUCKET}/x/", "not an s3:// URL"),
    (f"s3://{BUCKET}/a/../b/", "'..' segment"),
])
def test_allow_entries_are_checked_when_the_options_load(entry, why):
    with pytest.raises(ValidationError) as e:
        S3ScriptOptions().load({"allow": [entry]})
    assert why in str(e.value.messages)


def test_without_an_allow_list_s3_locations_are_refused():
    src = S3ScriptSource(UNREACHABLE)
    with pytest.raises(Forbidden) as e:
        src.fetch(f"s3://{BUCKET}/users/alice/x.sh", "alice")
    assert "not enabled" in e.value.msg


@pytest.mark.parametrize("url", [
    f"s3://{BUCKET}/users/bob/x.sh",          # another user's prefix
    f"s3://{BUCKET}/users/alice2/x.sh",       # a name that merely starts with the user's
    f"s3://{BUCKET}/users/alicex.sh",
    f"s3://{BUCKET}/secrets/db.env",          # elsewhere in the bucket
    f"s3://{BUCKET}-other/users/alice/x.sh",  # another bucket
    "s3://other-bucket/shared/x.sh",
])
def test_locations_outside_the_list_are_refused_without_asking_s3(url):
    src = S3ScriptSource({"allow": ALLOW, **UNREACHABLE})
    with pytest.raises(Forbidden) as e:
        src.fetch(url, "alice")
    assert e.value.msg == f"{url} is outside the S3 locations this gateway reads scripts from for you"


def test_a_prefix_is_not_an_object():
    src = S3ScriptSource({"allow": ALLOW, **UNREACHABLE})
    for url in (f"s3://{BUCKET}/users/alice/", f"s3://{BUCKET}/shared/"):
        with pytest.raises(InvalidInput):
            src.check(url, "alice")


def test_own_and_shared_scripts_are_read(source, s3):  # noqa: F811
    s3.put(BUCKET, "users/alice/job.sh", b"#!/bin/sh\necho alice\n")
    s3.put(BUCKET, "shared/tools/common.sh", b"#!/bin/sh\necho shared\n")
    assert source.fetch(f"s3://{BUCKET}/users/alice/job.sh", "alice") == b"#!/bin/sh\necho alice\n"
    assert source.fetch(f"s3://{BUCKET}/shared/tools/common.sh", "bob") == b"#!/bin/sh\necho shared\n"


def test_another_users_object_is_refused_like_a_missing_one(source, s3):  # noqa: F811
    s3.put(BUCKET, "users/bob/secret.sh", b"#!/bin/sh\necho bob\n")
    answers = []
    for key in ("users/bob/secret.sh", "users/bob/nothing-here.sh"):
        with pytest.raises(Forbidden) as e:
            source.fetch(f"s3://{BUCKET}/{key}", "alice")
        answers.append(e.value.msg.replace(key, "KEY"))
    assert answers[0] == answers[1]
    assert source.fetch(f"s3://{BUCKET}/users/bob/secret.sh", "bob") == b"#!/bin/sh\necho bob\n"


def test_a_missing_own_object_and_an_oversized_one_are_client_errors(source, s3):  # noqa: F811
    with pytest.raises(InvalidInput) as e:
        source.fetch(f"s3://{BUCKET}/users/alice/nope.sh", "alice")
    assert "NoSuchKey" in e.value.msg
    s3.put(BUCKET, "users/alice/limit.sh", b"x" * 100)
    assert source.fetch(f"s3://{BUCKET}/users/alice/limit.sh", "alice") == b"x" * 100
    s3.put(BUCKET, "users/alice/big.sh", b"x" * 101)
    with pytest.raises(InvalidInput) as e:
        source.fetch(f"s3://{BUCKET}/users/alice/big.sh", "alice")
    assert e.value.errors == {"scriptLocation": ["script too large"]}


# -- a silent S3 endpoint -----------------------------------------------------------------
def test_the_s3_client_is_bounded_not_botocores_defaults(monkeypatch):
    """botocore's defaults (60 s to connect, 60 s per read, 3 attempts) held a submit for
    minutes; the options' defaults bound it to about 2 x (5 + 10) s."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")          # explicit options win over these
    config = S3ScriptSource({"allow": ALLOW, **UNREACHABLE})._s3().meta.config
    assert (config.connect_timeout, config.read_timeout) == (5, 10)
    assert config.retries["total_max_attempts"] == 2


@pytest.fixture
def silent_endpoint():
    """http://127.0.0.1:PORT that accepts connections and never answers."""
    with silent_server() as port:
        yield f"http://127.0.0.1:{port}"


def test_a_silent_s3_endpoint_is_a_504_within_the_configured_limits(silent_endpoint):
    src = S3ScriptSource({"allow": ALLOW, "endpoint_url": silent_endpoint, "region_name": "us-east-1",
                          "aws_access_key_id": "x", "aws_secret_access_key": "x",
                          "connect_timeout": 1, "read_timeout": 1, "max_attempts": 2})
    start = time.monotonic()
    with pytest.raises(SchedulerTimeout) as e:
        src.fetch(f"s3://{BUCKET}/users/alice/job.sh", "alice")
    assert time.monotonic() - start < 10       # 2 attempts x 1 s, generously
    assert e.value.status == 504 and "Retry-After" not in e.value.headers
