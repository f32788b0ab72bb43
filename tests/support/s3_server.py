"""moto's S3 server (server mode, in a thread) on 127.0.0.1, for the tests.

API::

    from tests.support.s3_server import s3_server

    with s3_server(buckets=("gw-ssm-output",)) as s3:   # -> S3Server
        s3.url          # "http://127.0.0.1:PORT" (use as endpoint_url)
        s3.region       # "us-east-1"
        s3.client()     # a boto3 S3 client for it (path-style addressing)
        s3.create_bucket("other")
        s3.put("bucket", "key", b"bytes")  /  s3.get("bucket", "key") -> bytes
        s3.env          # the dummy AWS_* variables (for subprocesses)

While the context is open the process environment carries dummy credentials
(``AWS_ACCESS_KEY_ID=testing`` ...), a default region, and ``AWS_EC2_METADATA_DISABLED``,
so every boto3 client in this process (and in subprocesses started meanwhile) signs requests
without touching real AWS; the previous values are restored on exit. Variables the caller
already set are kept. moto keeps its state per process: buckets of one server are visible to
another server started in the same process.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@contextmanager
def dummy_aws_env() -> Iterator[dict]:
    """Set the dummy AWS variables that are not already set; restore them on exit."""
    added = {k: v for k, v in DUMMY_AWS_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield {k: os.environ[k] for k in DUMMY_AWS_ENV}
    finally:
        for key in added:
            os.environ.pop(key, None)


@dataclass
class S3Server:
    url: str
    region: str = "us-east-1"
    env: dict = field(default_factory=dict)

    def client(self):
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=self.url, region_name=self.region,
                            config=Config(s3={"addressing_style": "path"}))

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def moto_available() -> tuple[bool, str]:
    try:
        import moto.server  # noqa: F401
        import boto3  # noqa: F401
    except ImportError as exc:
        return False, f"moto[server] and boto3 are needed: {exc}"
    return True, ""


@contextmanager
def s3_server(buckets: Sequence[str] = (), *, host: str = "127.0.0.1",
              region: str = "us-east-1") -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    # werkzeug logs every request moto serves on stderr: keep the test output readable.
    werkzeug_log = logging.getLogger("werkzeug")
    level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)
    with dummy_aws_env() as env:
        server = ThreadedMotoServer(ip_address=host, port=0, verbose=False)
        server.start()
        try:
            bound_host, port = server.get_host_and_port()
            s3 = S3Server(url=f"http://{host}:{port}", region=region, env=env)
            for bucket in buckets:
                s3.create_bucket(bucket)
            yield s3
        finally:
            server.stop()
            werkzeug_log.setLevel(level)
