"""The files S3 channel's client is bounded by the files settings, not botocore's defaults.

botocore waits 60 s to connect and 60 s for each read, three attempts: an S3 endpoint that
accepts connections and then says nothing held a request's worker for about three minutes,
and the answer was a 503 "unreachable". Now the read timeout is ``command_timeout`` (at most
60 s), two attempts in all, and a read timeout answers 504.
"""
from __future__ import annotations

import time

import pytest

from gateway.errors import SchedulerTimeout
from gateway.files.channels import S3Channel
from gateway.files.settings import load_files_settings
from tests.support import silent_server


class _Transport:
    """Just what S3Channel reads from an SSM transport."""
    name = "ssm"
    output_bucket = "gw-staging"
    output_region = region = "us-east-1"
    profile = None

    def __init__(self, s3_endpoint_url: str):
        self.s3_endpoint_url = s3_endpoint_url


@pytest.fixture
def silent_endpoint():
    """http://127.0.0.1:PORT that accepts connections and never answers."""
    with silent_server() as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def dummy_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_PROFILE", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        monkeypatch.delenv(name, raising=False)


def _channel(endpoint: str, **settings) -> S3Channel:
    return S3Channel(_Transport(endpoint), "alice", load_files_settings(settings))


@pytest.mark.parametrize("command_timeout,connect,read", [(30, 5, 30), (2, 2, 2), (3600, 5, 60)])
def test_client_timeouts_and_attempts_follow_the_command_timeout(command_timeout, connect, read):
    config = _channel("http://127.0.0.1:9", command_timeout=command_timeout).s3.meta.config
    assert (config.connect_timeout, config.read_timeout) == (connect, read)
    assert config.retries["total_max_attempts"] == 2


def test_a_silent_s3_endpoint_answers_504_within_the_limits(silent_endpoint):
    channel = _channel(silent_endpoint, command_timeout=1)
    start = time.monotonic()
    with pytest.raises(SchedulerTimeout) as info:
        channel._stream_object("gw-staging-object")
    # get_object: 2 attempts x 1 s, then the best-effort delete of the staging object, the same
    # again; generous bound (before: about 3 minutes, then a 503).
    assert time.monotonic() - start < 20
    assert info.value.status == 504 and "Retry-After" not in info.value.headers
