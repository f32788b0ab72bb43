"""Job scripts read from S3 (``scriptLocation: s3://bucket/key``), for the plugins that offer it.

The gateway fetches the object with its own AWS credentials, which usually reach far more
than any one user's scripts. So a user may name only objects under the prefixes the
operator allows (``allow``), where ``{user}`` stands for the user's own name; with no
``allow`` list, ``s3://`` locations are refused. A location outside the list is refused
before anything is asked of S3, with the same answer whether the object exists or not.
Keep ``{user}`` under a folder of its own (``users/{user}/``): at a bucket's top level, a
user named like another folder there would reach it.

Options (a plugin's ``s3:`` section)::

    s3:
      allow: ["s3://hpc-scripts/users/{user}/", "s3://hpc-scripts/shared/"]
      endpoint_url: null          # e.g. a VPC endpoint or a local S3 server
      region_name: null
      max_script_bytes: 1048576
      connect_timeout: 5           # seconds to connect to S3
      read_timeout: 10             # seconds S3 may stay silent while answering
      max_attempts: 2              # attempts in all (botocore retries transient failures)

A fetch happens inside a submit request, so it is bounded like the scheduler's own commands:
an S3 endpoint that stops answering costs at most about ``max_attempts`` x (``connect_timeout``
+ ``read_timeout``) seconds (botocore's defaults, 60 s each and 3 attempts, held a worker
for minutes) and answers 504 (S3 did not answer in time); one that cannot be reached, 503.

Credentials come from boto3's usual chain (instance role, environment, ~/.aws); the
``aws_access_key_id``/``aws_secret_access_key`` options exist for S3-compatible stores.
"""
from __future__ import annotations

import re
import threading

from marshmallow import Schema, ValidationError, fields, validate, validates

from .errors import Forbidden, InvalidInput, SchedulerRefused, SchedulerTimeout, SchedulerUnavailable

#: Bucket names as S3 allows them (3-63 characters; lower case, digits, dots, hyphens).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class S3ScriptOptions(Schema):
    """A plugin's ``s3:`` options: which objects users may name, and how to reach S3."""
    #: ``s3://bucket/prefix/`` entries, each ending in "/"; ``{user}`` is the user's name.
    #: Empty (the default): ``s3://`` script locations are refused.
    allow = fields.List(fields.String(), load_default=list)
    endpoint_url = fields.String(load_default=None, allow_none=True)
    region_name = fields.String(load_default=None, allow_none=True)
    aws_access_key_id = fields.String(load_default=None, allow_none=True)
    aws_secret_access_key = fields.String(load_default=None, allow_none=True)
    max_script_bytes = fields.Integer(load_default=1024 * 1024, validate=validate.Range(min=1))
    #: botocore's connect and read timeouts (seconds) and attempts in all: see the module doc.
    connect_timeout = fields.Float(load_default=5.0, validate=validate.Range(min=0.1, max=300))
    read_timeout = fields.Float(load_default=10.0, validate=validate.Range(min=0.1, max=600))
    max_attempts = fields.Integer(load_default=2, validate=validate.Range(min=1, max=10))

    @validates("allow")
    def _check_allow(self, value, **kwargs):
        for entry in value:
            try:
                bucket, prefix = split_url(entry.replace("{user}", "user"), what="allow entry")
            except InvalidInput as exc:
                raise ValidationError(f"{entry!r}: {exc.msg}") from None
            if not entry.endswith("/"):
                raise ValidationError(f"{entry!r}: must end with '/' (a prefix, not a partial name)")
            if "{user}" in entry[len("s3://"):].partition("/")[0]:
                raise ValidationError(f"{entry!r}: {{user}} may stand only in the key prefix")
            if "{" in entry.replace("{user}", "") or "}" in entry.replace("{user}", ""):
                raise ValidationError(f"{entry!r}: the only placeholder is {{user}}")


def split_url(url: str, *, what: str = "scriptLocation") -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key), refusing what S3 or a proxy could read otherwise.

    Keys may not hold control characters, backslashes, empty segments or ``.``/``..``
    segments: S3 takes them literally, but a proxy or S3-compatible store that normalises
    paths would not, and a prefix check must mean the same to both.
    """
    if not url.startswith("s3://"):
        raise InvalidInput(f"{what} is not an s3:// URL", errors={"scriptLocation": ["expected s3://bucket/key"]})
    bucket, sep, key = url[len("s3://"):].partition("/")
    if not sep or not _BUCKET.match(bucket):
        raise InvalidInput(f"{what} must look like s3://bucket/key",
                           errors={"scriptLocation": ["expected s3://bucket/key"]})
    segments = key.split("/")
    if (_CONTROL.search(key) or "\\" in key
            or any(s in (".", "..") for s in segments) or "" in segments[:-1]):
        raise InvalidInput(f"{what} has an empty, '.' or '..' segment, a backslash or a control character",
                           errors={"scriptLocation": ["not a plain s3://bucket/key"]})
    return bucket, key


class S3ScriptSource:
    """Reads job scripts from S3 for a plugin, within the operator's ``allow`` list."""

    def __init__(self, options: dict | None):
        self.opts = S3ScriptOptions().load(options or {})
        self._client = None
        self._lock = threading.Lock()

    def allowed(self, bucket: str, key: str, user_name: str) -> bool:
        for entry in self.opts["allow"]:
            a_bucket, a_prefix = split_url(entry.replace("{user}", user_name), what="allow entry")
            if a_bucket == bucket and key.startswith(a_prefix) and key != a_prefix:
                return True
        return False

    def check(self, url: str, user_name: str) -> tuple[str, str]:
        """(bucket, key) of ``url`` if ``user_name`` may name it; else InvalidInput/Forbidden.

        Asks nothing of S3, so a plugin calls it with its other checks, before anything runs.
        """
        bucket, key = split_url(url)
        if key.endswith("/") or not key:
            raise InvalidInput("scriptLocation names a prefix, not an object",
                               errors={"scriptLocation": ["expected s3://bucket/key"]})
        if not self.opts["allow"]:
            raise Forbidden("s3:// script locations are not enabled on this gateway "
                            "(the scheduler's s3.allow option lists where scripts may come from)")
        if "/" in user_name or user_name in (".", "..") or not self.allowed(bucket, key, user_name):
            raise Forbidden(f"{url} is outside the S3 locations this gateway reads scripts from for you")
        return bucket, key

    def _s3(self):
        with self._lock:
            if self._client is None:
                try:
                    import boto3
                except ImportError:
                    raise SchedulerRefused("s3:// script locations need boto3 on the gateway") from None
                from botocore.config import Config
                kw = {k: self.opts[k] for k in ("endpoint_url", "region_name", "aws_access_key_id",
                                                 "aws_secret_access_key") if self.opts.get(k)}
                # Explicit timeouts and attempts (they also win over AWS_MAX_ATTEMPTS and the
                # profile's settings): the request that waits is a user's submit.
                config = Config(connect_timeout=self.opts["connect_timeout"],
                                read_timeout=self.opts["read_timeout"],
                                retries={"mode": "standard",
                                         "total_max_attempts": self.opts["max_attempts"]},
                                user_agent_extra="hpc-gateway-scripts")
                self._client = boto3.client("s3", config=config, **kw)
            return self._client

    def fetch(self, url: str, user_name: str) -> bytes:
        """The script at ``url``, at most ``max_script_bytes`` long (larger: InvalidInput)."""
        bucket, key = self.check(url, user_name)
        from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError
        limit = self.opts["max_script_bytes"]
        try:
            obj = self._s3().get_object(Bucket=bucket, Key=key)
            body = obj["Body"]
            try:
                if obj.get("ContentLength", 0) > limit:
                    raise InvalidInput(f"{url} is larger than {limit} bytes",
                                       errors={"scriptLocation": ["script too large"]})
                data = body.read(limit + 1)
            finally:
                body.close()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "NoSuchBucket", "404", "AccessDenied", "403"):
                raise InvalidInput(f"cannot fetch {url}: {code}",
                                   errors={"scriptLocation": [f"cannot fetch: {code}"]}) from exc
            raise SchedulerRefused(f"cannot fetch {url}: {exc}") from exc
        except ReadTimeoutError as exc:
            # Connected, but S3 did not answer in time (every attempt): a timeout, not an
            # unreachable service (ConnectTimeoutError and the like stay 503 below).
            raise SchedulerTimeout(f"S3 did not answer in time for {url}: {exc}") from exc
        except BotoCoreError as exc:
            raise SchedulerUnavailable(f"cannot reach S3 for {url}: {exc}") from exc
        if len(data) > limit:
            raise InvalidInput(f"{url} is larger than {limit} bytes",
                               errors={"scriptLocation": ["script too large"]})
        return data
