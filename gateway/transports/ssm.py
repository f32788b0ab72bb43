"""Run an argument list on an EC2 instance through AWS Systems Manager Run Command.

Each :meth:`SsmTransport.run` sends one ``AWS-RunShellScript`` command (``send_command``)
and polls ``get_command_invocation`` until it ends, starting 50 ms after sending and backing
off exponentially to ``poll_max`` (1 s), so a quick command costs ~0.1 s, not seconds.
``InvocationDoesNotExist`` right after sending is expected (the invocation is created
asynchronously) and simply polled again.

The script (see :func:`build_script`) is plain POSIX sh, because the agent runs it with
``sh``:

- the command line is :func:`~gateway.transports.ssh.remote_command_line` (every argument
  single-quoted with :func:`shlex.join`): nothing is interpreted by the shell. It travels
  base64-encoded, decoded into the script's private temporary directory and run with ``sh``:
  Run Command resolves ``{{ssm:name}}`` (and ``{{ssm-secure:...}}``) references in the
  ``commands`` parameter *before* the agent sees it, with the gateway's IAM rights, so client
  text (a job named ``{{ssm:/prod/db/password}}``) must never appear there. The ``commands``
  text holds only the fixed script, base64 and gateway-made URLs;
- SSM has no stdin, so stdin is carried base64-encoded in a here-document, decoded into a
  temporary file and redirected into the command;
- stdout and stderr go to temporary files, and the script prints a frame
  ``GW-SSM-1 <exit code>`` / base64(stdout) / base64(stderr) / ``GW-SSM-END``. Base64 makes
  the output byte-exact for arbitrary bytes (SSM's inline output is text and would mangle
  NUL bytes and invalid UTF-8); the end marker tells a complete inline answer from one SSM
  cut short (StandardOutputContent keeps only the first 24,000 characters);
- when the inline frame is incomplete, the full output is read from the S3 output bucket
  (``OutputS3BucketName``/``OutputS3KeyPrefix``, key
  ``<prefix>/<command-id>/<instance-id>/awsrunShellScript/0.awsrunShellScript/stdout``).
  Without ``output_bucket`` such output cannot be recovered and the run fails with a message
  saying so. Base64 costs 4/3: outputs up to ~18 KB come back inline.
- SSM keeps what the script prints (command history, output bucket). A ``private=True`` run
  (a vis session file: the VNC password) uploads its frame with curl to a presigned S3 PUT
  (``<output_prefix>/private/<uuid>``, valid for the timeout + 10 s, written only if absent:
  ``If-None-Match: *``, signed into the URL) and prints only ``GW-SSM-PUT <curl exit code>``; the gateway reads
  the object once and deletes it (again after the URL expired, when the run failed after
  the command may have been sent; one shared background thread does those late deletes).
  Without ``output_bucket`` it runs as usual and a warning is logged;
- the exit code travels in the frame and also as the script's own exit code (ResponseCode),
  except 194, which would make the SSM agent *reboot the instance*: the script exits 1
  instead and the frame keeps the true 194.

Timeouts: ``TimeoutSeconds`` (delivery, at least 30 s by the API's rules) and the document's
``executionTimeout`` are set from ``timeout``; locally the poll stops at the deadline, the
command is cancelled (``cancel_command``, best effort) and :class:`SchedulerTimeout` (504)
raised. Every API call's read timeout is clamped to the time left before the deadline (a
per-request ``read_timeout`` in botocore's request context; botocore releases without it
fall back to ``api_timeout``), so an endpoint that stops answering gives the 504 at about
``timeout`` + 1 s, not at a multiple of it.

Errors, and what may be retried. botocore's own retries are off (one attempt per call):
only this module knows whether an attempt may have started the command.

- ``SendCommand`` is retried (up to ``max_attempts``, within the deadline) only when nothing
  was sent (cannot connect) or SSM throttled it. Any failure after the request went out (no
  answer, connection closed, 5xx) means the command may or may not run: resending could
  submit a job twice, so the run ends with :class:`SchedulerTimeout` (504, no Retry-After).
  A refusal that certainly did not run it keeps its own mapping: unreachable endpoint,
  missing or refused credentials, an unmanaged/offline instance, throttling that outlasted
  the retries: :class:`SchedulerUnavailable` (503, Retry-After); a validation error:
  :class:`SchedulerRefused`.
- Once ``SendCommand`` succeeded the command runs whatever happens to the gateway, so no
  later failure may invite the client to try again (Retry-After): throttling, 5xx,
  connection errors and expired credentials while polling are polled again until the
  deadline; then the command is cancelled and :class:`SchedulerTimeout` says its outcome is
  unknown. Other polling errors cancel it and give that 504 at once. Reading its output from
  S3 is retried the same way (504 at the deadline; 502 for a permanent S3 error).
- A command that ended but could not run as asked (not delivered, cancelled by someone else,
  the agent could not start the script): :class:`SchedulerUnavailable` (503).
- A command the caller marks ``retry_safe`` (it only reads: squeue, bjobs, stat...) may run
  twice: its SendCommand is sent again after a lost answer or a 5xx too (not one with
  private output, with or without an output bucket), and its last failure is what it is:
  an endpoint that does not answer in time a 504, a closed connection or a 5xx a 503 with
  Retry-After; not "may or may not run". Polling is as for any command.

Credentials come from boto3's normal chain (environment, ``profile``, instance role...).
"""
from __future__ import annotations

import base64
import functools
import heapq
import itertools
import logging
import math
import random
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Sequence

from ..errors import GatewayError, SchedulerRefused, SchedulerTimeout, SchedulerUnavailable
from . import CommandResult, Transport
from .ssh import remote_command_line

FRAME_HEADER = "GW-SSM-1"
FRAME_END = "GW-SSM-END"
PUT_HEADER = "GW-SSM-PUT"
log = logging.getLogger(__name__)

INLINE_STDOUT_LIMIT = 24000  # characters of StandardOutputContent SSM returns inline

_RUNNING = {"Pending", "InProgress", "Delayed", "Cancelling"}
_CREDENTIAL_CODES = {
    "UnrecognizedClientException", "InvalidClientTokenId", "InvalidSignatureException",
    "SignatureDoesNotMatch", "AccessDeniedException", "AccessDenied", "ExpiredTokenException",
    "ExpiredToken", "AuthFailure", "MissingAuthenticationToken", "IncompleteSignature",
}
_UNAVAILABLE_CODES = {
    "InvalidInstanceId", "InternalServerError", "InternalFailure", "ServiceUnavailable",
    "ThrottlingException", "Throttling", "TooManyUpdates", "RequestLimitExceeded",
    "InvalidDocument", "InvalidOutputFolder", "UnsupportedPlatformType",
}
# "Not now": the service rejected the request before acting on it, so even SendCommand may
# be sent again (botocore's list of throttling codes, plus SSM's TooManyUpdates).
_THROTTLING_CODES = {
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "RequestThrottled", "SlowDown", "PriorRequestNotComplete", "EC2ThrottledException",
    "TooManyUpdates",
}
# Worth asking again (a poll, an S3 read: they change nothing): the service is busy or
# failing for now, or the credentials expired and boto3 refreshes them.
_TRANSIENT_CODES = _THROTTLING_CODES | {
    "InternalServerError", "InternalFailure", "ServiceUnavailable", "RequestTimeout",
    "RequestTimeoutException", "ExpiredTokenException", "ExpiredToken",
}


def build_script(command_line: str, stdin: bytes | None, put_url: str | None = None,
                 put_timeout: float = 30) -> str:
    """The AWS-RunShellScript body that runs ``command_line`` and frames its output (pure).

    The command line travels base64-encoded, like stdin, and runs with ``sh`` from the
    script's private temporary directory: Run Command resolves ``{{ssm:...}}`` references in
    the script text with the gateway's IAM rights, so no byte of the caller's arguments or
    environment may appear in it (base64's alphabet has no ``{``).

    With ``put_url`` (a presigned S3 PUT) the frame is uploaded there with curl instead of
    printed: the agent's output (kept in SSM's command history and the output bucket) then
    holds only ``GW-SSM-PUT <curl's exit code>``."""
    lines = ['gw_d=$(mktemp -d) || exit 125',
             *_decode_into('"$gw_d/cmd"', "GW_CMD_EOF",
                           command_line.encode("utf-8", "surrogateescape") + b"\n")]
    if stdin is not None:
        lines += _decode_into('"$gw_d/in"', "GW_STDIN_EOF", stdin)
        redirect_in = '<"$gw_d/in"'
    else:
        lines.append(': >"$gw_d/in"')
        redirect_in = "</dev/null"
    frame = [
        f"printf '{FRAME_HEADER} %d\\n' \"$gw_rc\"",
        "base64 \"$gw_d/out\" | tr -d '\\n'",
        "printf '\\n'",
        "base64 \"$gw_d/err\" | tr -d '\\n'",
        f"printf '\\n{FRAME_END}\\n'",
    ]
    lines += [f'sh "$gw_d/cmd" {redirect_in} >"$gw_d/out" 2>"$gw_d/err"', "gw_rc=$?"]
    if put_url is None:
        lines += frame
    else:
        from ..files.commands import PUT_ONCE, curl_config
        lines += ["{", *frame, '} >"$gw_d/frame"',
                  "curl --silent --show-error --fail --retry 3 --max-time "
                  f'{max(1, math.ceil(put_timeout))} --config - --upload-file "$gw_d/frame" '
                  "<<'GW_URL_EOF'",
                  # First write wins (S3 conditional write, signed into the URL): whoever
                  # reads the URL in SSM's history cannot replace the frame; a frame put
                  # there first fails ours.
                  curl_config(put_url, [PUT_ONCE]).decode("ascii").rstrip("\n"),
                  "GW_URL_EOF",
                  f"printf '{PUT_HEADER} %d\\n' \"$?\""]
    lines += [
        'rm -rf "$gw_d"',
        # 194 asks the SSM agent to reboot the instance: never exit with it.
        '[ "$gw_rc" -eq 194 ] && gw_rc=1',
        'exit "$gw_rc"',
    ]
    return "\n".join(lines) + "\n"


def _decode_into(path: str, marker: str, data: bytes) -> list[str]:
    """Script lines writing ``data`` to ``path``: base64 in a quoted here-document (76-char
    lines, none of which can equal the marker)."""
    encoded = base64.encodebytes(data).decode("ascii").rstrip("\n")
    return [f"base64 -d >{path} <<'{marker}'", *([encoded] if encoded else []), marker]


def parse_frame(text: str) -> CommandResult | None:
    """Decode the script's framed stdout; None when the frame is incomplete (truncated)."""
    start = text.rfind(FRAME_HEADER + " ")
    if start < 0:
        return None
    parts = text[start:].split("\n")
    if len(parts) < 4 or parts[3] != FRAME_END:
        return None
    try:
        code = int(parts[0].split()[1])
        out = base64.b64decode(parts[1], validate=True)
        err = base64.b64decode(parts[2], validate=True)
    except (ValueError, IndexError):
        return None
    return CommandResult(code, out, err)


# -- per-call timeouts -------------------------------------------------------------------
# The read timeout of the API call this thread is making (seconds), or None: set by
# SsmTransport._bounded, handed to botocore by _apply_call_timeout. The clients are cached
# per service, so their configured read timeout (api_timeout) can only be a ceiling.
_call = threading.local()


def _apply_call_timeout(context=None, **_):
    """botocore ``before-call`` handler: put this thread's per-call read timeout in the request
    context, where botocore's HTTP session takes it as that request's read timeout."""
    seconds = getattr(_call, "read_timeout", None)
    if seconds is not None and context is not None:
        context["read_timeout"] = seconds


def _bound_connects(client) -> None:
    """Bound each call's connect timeout by its read timeout too, i.e. by the run's time left.

    botocore takes a per-request read timeout from the request context (above), but keeps
    the client's connect timeout for every request: an endpoint whose connects hang (a
    firewall dropping packets, a full listen queue) held a run up to ``connect_timeout``
    past its deadline. There is no public hook for it, so the client's HTTP session becomes
    a subclass that clamps the connect part of the timeout it already computes; on a
    botocore without that method the client is left as it is (the overshoot stays at most
    ``connect_timeout``)."""
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    base = type(session)
    if not callable(getattr(base, "_get_request_timeout", None)):
        log.debug("ssm transport: botocore's HTTP session has no _get_request_timeout; "
                  "connect timeouts are not bounded by the deadline")
        return
    session.__class__ = _deadline_session(base)


@functools.lru_cache(maxsize=None)
def _deadline_session(base: type) -> type:
    from urllib3.util.timeout import Timeout

    class DeadlineSession(base):
        def _get_request_timeout(self, request):
            timeout = super()._get_request_timeout(request)
            if not isinstance(timeout, Timeout) or timeout.read_timeout is None:
                return timeout
            read = timeout.read_timeout
            connect = timeout.connect_timeout
            if isinstance(connect, (int, float)):
                connect = min(connect, read)
            else:                           # no connect timeout of its own: the read one
                connect = read
            # total: the connect and the answer together, not each the time left.
            return Timeout(connect=connect, read=read, total=read)
    DeadlineSession.__name__ = DeadlineSession.__qualname__ = f"Deadline{base.__name__}"
    return DeadlineSession


# -- delayed clean-ups -------------------------------------------------------------------
class _Later:
    """Best-effort clean-ups run later (deleting a private frame once its PUT URL expired) by
    one daemon thread shared by every transport, started on first use. A timer thread per
    failed run would pile up during an outage, in proportion to the request rate."""

    def __init__(self):
        self._due: list = []                 # heap of (when, sequence, function, args)
        self._sequence = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def call(self, delay: float, function, *args) -> None:
        with self._cond:
            heapq.heappush(self._due, (time.monotonic() + delay, next(self._sequence),
                                       function, args))
            # is_alive: a worker forked away (gunicorn's preload) does not run in the child.
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="gw-ssm-cleanup",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._cond.wait(self._due[0][0] - time.monotonic() if self._due else None)
                _, _, function, args = heapq.heappop(self._due)
            try:
                function(*args)
            except Exception:  # noqa: BLE001 - the worker must outlive one failed clean-up
                log.exception("ssm transport: a delayed clean-up failed")


_later = _Later()


class SsmTransport(Transport):
    """Commands on one SSM-managed instance (``instance_id``) through Run Command."""

    name = "ssm"
    keeps_output = True
    tells_retry_safe = True
    late_delete_grace = 30.0     # seconds after a private PUT URL expires: its last delete
    delete_timeout = 1.0         # seconds for a run's own delete of its private frame

    def __init__(self, instance_id: str, region: str = "us-east-1",
                 endpoint_url: str | None = None, output_bucket: str | None = None,
                 output_prefix: str = "ssm", timeout: float = 30.0,
                 poll_initial: float = 0.05, poll_max: float = 1.0,
                 document: str = "AWS-RunShellScript", sudo: Sequence[str] = ("sudo", "-n"),
                 profile: str | None = None, s3_endpoint_url: str | None = None,
                 output_region: str | None = None, max_attempts: int = 3,
                 api_timeout: float = 10.0, connect_timeout: float = 5.0):
        super().__init__(timeout=timeout, sudo=sudo)
        if not instance_id:
            from ..errors import ConfigError
            raise ConfigError("ssm transport: instance_id is required")
        self.instance_id = instance_id
        self.region = region
        self.endpoint_url = endpoint_url
        self.output_bucket = output_bucket or None
        self.output_prefix = (output_prefix or "").strip("/")
        self.poll_initial = float(poll_initial)
        self.poll_max = float(poll_max)
        self.document = document
        self.profile = profile
        self.s3_endpoint_url = s3_endpoint_url
        self.output_region = output_region or region
        self.max_attempts = max(1, int(max_attempts))
        self.api_timeout = float(api_timeout)
        self.connect_timeout = float(connect_timeout)
        self._session = None
        self._clients: dict = {}
        self._lock = threading.Lock()
        self._warned_private = False

    # -- boto3 ------------------------------------------------------------------------
    def _client(self, service: str):
        """The cached client of ``service`` ("ssm" or "s3"): one per service. Thread-safe.

        One attempt per call: botocore's retries are off because only the caller knows
        whether a call may be repeated (a SendCommand whose answer was lost may have started
        a job) and how much of the run's time is left. The read timeout configured here
        (``api_timeout``) is a ceiling; each call is bounded by :meth:`_bounded`."""
        client = self._clients.get(service)
        if client is not None:
            return client
        from botocore.config import Config
        with self._lock:
            client = self._clients.get(service)
            if client is not None:
                return client
            import boto3
            try:
                if self._session is None:
                    self._session = boto3.session.Session(profile_name=self.profile,
                                                          region_name=self.region)
                config = Config(retries={"mode": "standard", "total_max_attempts": 1},
                                connect_timeout=min(self.connect_timeout, self.api_timeout),
                                read_timeout=self.api_timeout,
                                user_agent_extra="hpc-gateway")
                if service == "s3":
                    config = config.merge(Config(signature_version="s3v4"))   # presigned URLs
                    if self.s3_endpoint_url:
                        config = config.merge(Config(s3={"addressing_style": "path"}))
                    client = self._session.client("s3", region_name=self.output_region,
                                                  endpoint_url=self.s3_endpoint_url, config=config)
                else:
                    client = self._session.client("ssm", endpoint_url=self.endpoint_url,
                                                  config=config)
                client.meta.events.register("before-call", _apply_call_timeout)
                _bound_connects(client)
            except Exception as exc:  # ProfileNotFound, bad region, ...
                raise SchedulerUnavailable(f"cannot set up the AWS client: {exc}") from exc
            self._clients[service] = client
            return client

    @contextmanager
    def _bounded(self, deadline: float, cap: float | None = None):
        """API calls in this block wait for an answer until ``deadline`` at the latest (and
        at most ``cap``, default ``api_timeout``, seconds): a hung endpoint cannot hold a run
        past its timeout. The connect timeout is bounded the same way (_bound_connects)."""
        left = deadline - time.monotonic()
        _call.read_timeout = max(0.05, min(self.api_timeout if cap is None else cap, left))
        try:
            yield
        finally:
            _call.read_timeout = None

    # -- run --------------------------------------------------------------------------
    def _run(self, argv, *, stdin, timeout, env, private=False, retry_safe=False):
        from botocore.exceptions import BotoCoreError

        deadline = time.monotonic() + timeout
        private_key = put_url = None
        if private and self.output_bucket:
            private_key = self._private_key()
            try:
                # Valid only while the script may run (executionTimeout is timeout + 5 s).
                from ..files.commands import PUT_ONCE_PARAMS       # signed: see build_script
                put_url = self._client("s3").generate_presigned_url(
                    "put_object", Params={"Bucket": self.output_bucket, "Key": private_key, **PUT_ONCE_PARAMS},
                    ExpiresIn=self._put_expiry(timeout))
            except BotoCoreError as exc:                  # no credentials
                raise SchedulerUnavailable(f"cannot sign an S3 URL for the output: {exc}") from exc
        elif private and not self._warned_private:
            self._warned_private = True
            log.warning("ssm transport: no output_bucket, so private output (vis session "
                        "files with their VNC passwords) is kept in SSM's command history")
        script = build_script(remote_command_line(argv, env), stdin, put_url=put_url, put_timeout=timeout)
        ssm = self._client("ssm")
        params = {
            "InstanceIds": [self.instance_id],
            "DocumentName": self.document,
            "TimeoutSeconds": max(30, math.ceil(timeout)),
            "Comment": "hpc-gateway",
            "Parameters": {"commands": [script],
                           "executionTimeout": [str(max(1, math.ceil(timeout) + 5))]},
        }
        if self.output_bucket:
            params["OutputS3BucketName"] = self.output_bucket
            if self.output_prefix:
                params["OutputS3KeyPrefix"] = self.output_prefix
            params["OutputS3Region"] = self.output_region
        if private_key is None:
            # Private output without an output bucket lands in SSM's command history: a copy
            # sent again after a lost answer would put it there twice.
            command_id = self._send(ssm, params, deadline, retry_safe and not private)
            invocation = self._wait(ssm, command_id, deadline, timeout)
            return self._result(invocation, command_id, deadline)
        sent = False
        try:
            # Never sent twice: each copy would PUT to the one presigned URL, and the copy
            # that lost the race (If-None-Match) fails, or puts after the read deleted the key.
            command_id = self._send(ssm, params, deadline)
            sent = True
            invocation = self._wait(ssm, command_id, deadline, timeout)
            result = self._private_result(invocation, private_key, deadline)
        except BaseException as exc:
            # Unless SendCommand certainly did not run (_send raised anything but a 504), the
            # script may still put its frame after this (it finished late, or SendCommand's
            # answer was lost): delete now, and again once the URL has expired.
            if sent or isinstance(exc, SchedulerTimeout) or not isinstance(exc, GatewayError):
                self._delete_private(private_key, self.delete_timeout)
                _later.call(self._put_expiry(timeout) + self.late_delete_grace,
                            self._delete_private, private_key)
            raise
        if not self._delete_private(private_key, self.delete_timeout):
            _later.call(1.0, self._delete_private, private_key)
        return result

    def _send(self, ssm, params: dict, deadline: float, retry_safe: bool = False) -> str:
        """SendCommand; its CommandId.

        Sent again (up to ``max_attempts``, within the deadline) only when the command
        certainly did not start: the request never left (no connection) or SSM throttled it.
        Raises :class:`SchedulerTimeout` exactly when the command may have been sent (the
        answer was lost, or a 5xx: SSM may have acted on it); any other error means it did
        not run, and keeps its usual mapping (:meth:`_api_error`). A ``retry_safe`` command
        (one that only reads) is also sent again after a lost answer or a 5xx: running it
        twice costs a read; its last failure keeps that mapping too (an endpoint that does not
        answer in time: 504; a closed connection or a 5xx: 503), not "may or may not run"."""
        from botocore.exceptions import BotoCoreError, ClientError
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import (ConnectTimeoutError, EndpointConnectionError,
                                         HTTPClientError, ProxyConnectionError)
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._bounded(deadline):
                    return ssm.send_command(**params)["Command"]["CommandId"]
            except (EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError) as exc:
                error: Exception = exc        # could not connect: nothing was sent
            except (HTTPClientError, BotoConnectionError) as exc:
                # Sent, answer lost: read timeout, connection closed, TLS failure...
                if not retry_safe:
                    raise self._maybe_sent(f"SSM did not answer SendCommand ({exc})") from exc
                error = exc
            except ClientError as exc:
                if retry_safe and _http_status(exc) >= 500:
                    error = exc
                elif _code(exc) not in _THROTTLING_CODES:
                    if _http_status(exc) >= 500:
                        raise self._maybe_sent(f"SSM SendCommand failed ({_code(exc)}: "
                                               f"{_message(exc)})") from exc
                    raise self._api_error("SendCommand", exc) from exc
                error = exc
            except BotoCoreError as exc:    # raised before sending: credentials, parameters
                raise self._api_error("SendCommand", exc) from exc
            pause = random.uniform(0, min(2.0 ** (attempt - 1), 5.0))  # jittered backoff
            if attempt >= self.max_attempts or time.monotonic() + pause >= deadline:
                raise self._api_error("SendCommand", error) from error
            time.sleep(pause)

    def _maybe_sent(self, what: str) -> SchedulerTimeout:
        # No Retry-After (504): trying again could run the command (submit the job) twice.
        return SchedulerTimeout(f"{what}; the command may or may not run on {self.instance_id}")

    # -- private output: through a presigned PUT, read once, deleted ---------------------
    def _private_key(self) -> str:
        name = f"private/{uuid.uuid4().hex}"
        return f"{self.output_prefix}/{name}" if self.output_prefix else name

    @staticmethod
    def _put_expiry(timeout: float) -> int:
        return math.ceil(timeout) + 10

    def _private_result(self, invocation: dict, key: str, deadline: float) -> CommandResult:
        self._check_ended(invocation)
        inline = invocation.get("StandardOutputContent") or ""
        start = inline.rfind(PUT_HEADER + " ")
        words = inline[start:].split() if start >= 0 else []
        if len(words) < 2 or words[1] != "0":
            why = f"curl exit code {words[1]}" if len(words) >= 2 else "no report from the script"
            raise SchedulerUnavailable(
                f"the command on {self.instance_id} could not upload its output to "
                f"s3://{self.output_bucket} ({why})" + _tail(invocation.get("StandardErrorContent")))
        body = self._read_output(key, deadline, appear=False)
        result = parse_frame(body.decode("ascii", "replace"))
        if result is None:
            raise GatewayError(f"the output of the command on {self.instance_id} arrived incomplete")
        return result

    def _delete_private(self, key: str, cap: float | None = None) -> bool:
        """Delete a private frame (one attempt, at most ``cap`` seconds); False if that failed."""
        try:
            with self._bounded(time.monotonic() + (cap or self.api_timeout), cap):
                self._client("s3").delete_object(Bucket=self.output_bucket, Key=key)
            return True
        except Exception as exc:  # noqa: BLE001 - the answer matters more; the key is logged
            log.warning("cannot delete s3://%s/%s (a command's private output): %s",
                        self.output_bucket, key, exc)
            return False

    def _wait(self, ssm, command_id: str, deadline: float, timeout: float) -> dict:
        """Poll until the command ends; at the deadline cancel it and raise SchedulerTimeout.

        The command was sent: whatever fails now, it may be running (sbatch may submit), so
        nothing raised here carries Retry-After. Throttling, 5xx, expired credentials and
        connection errors are polled again until the deadline; other errors (SSM refusing
        the poll for good) cancel the command at once."""
        from botocore.exceptions import BotoCoreError, ClientError

        delay = self.poll_initial
        status = "Pending"
        trouble = None    # why the polls have been failing, while they are
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._cancel(command_id)
                if trouble is None:
                    raise SchedulerTimeout(
                        f"command on {self.instance_id} did not finish within {timeout:g} s "
                        f"(last SSM status {status}); it was cancelled")
                raise SchedulerTimeout(
                    f"SSM did not tell within {timeout:g} s how the command on "
                    f"{self.instance_id} went ({trouble}): it may or may not have run; "
                    "it was cancelled")
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, self.poll_max)
            try:
                with self._bounded(deadline):
                    invocation = ssm.get_command_invocation(CommandId=command_id,
                                                            InstanceId=self.instance_id)
            except ClientError as exc:
                if _code(exc) == "InvocationDoesNotExist":
                    continue  # created asynchronously after SendCommand
                trouble = f"GetCommandInvocation failed: {_code(exc)} {_message(exc)}".rstrip()
                if _transient(exc):
                    continue
                self._cancel(command_id)
                raise SchedulerTimeout(
                    f"SSM {trouble}, so how the command on {self.instance_id} went is "
                    "unknown: it may or may not have run; it was cancelled") from exc
            except BotoCoreError as exc:  # no answer, connection lost, credentials refresh
                trouble = f"GetCommandInvocation failed: {exc}"
                continue
            trouble = None
            status = invocation.get("Status", "Pending")
            if status not in _RUNNING:
                return invocation

    def _check_ended(self, invocation: dict) -> None:
        """Raise unless the command ran to its end (Success, or Failed: a non-zero exit)."""
        status = invocation.get("Status")
        details = invocation.get("StatusDetails") or status
        if status == "TimedOut":
            if details == "DeliveryTimedOut":
                raise SchedulerUnavailable(
                    f"SSM could not deliver the command to {self.instance_id} (agent offline?)")
            raise SchedulerTimeout(f"command on {self.instance_id} timed out ({details})")
        if status not in ("Success", "Failed"):  # Cancelled, Undeliverable, Terminated, ...
            raise SchedulerUnavailable(
                f"SSM command on {self.instance_id} ended as {details}"
                + _tail(invocation.get("StandardErrorContent")))

    def _result(self, invocation: dict, command_id: str, deadline: float) -> CommandResult:
        self._check_ended(invocation)
        details = invocation.get("StatusDetails") or invocation.get("Status")
        inline = invocation.get("StandardOutputContent") or ""
        result = parse_frame(inline)
        if result is None and self.output_bucket:
            body = self._read_output(self._output_key(command_id, "stdout"), deadline, appear=True)
            result = parse_frame(body.decode("utf-8", "replace"))
        if result is not None:
            return result
        if invocation.get("ResponseCode", -1) == -1 or FRAME_HEADER not in inline:
            # The wrapper itself did not run (agent error, no sh/mktemp/base64).
            raise SchedulerUnavailable(
                f"SSM could not run the command on {self.instance_id} ({details})"
                + _tail(invocation.get("StandardErrorContent")))
        raise GatewayError(
            f"the output of the command on {self.instance_id} was truncated by SSM "
            f"({len(inline)} characters inline); set the ssm transport's output_bucket "
            "so that the full output can be read from S3")

    def _output_key(self, command_id: str, stream: str) -> str:
        parts = [self.output_prefix] if self.output_prefix else []
        parts += [command_id, self.instance_id, "awsrunShellScript", "0.awsrunShellScript", stream]
        return "/".join(parts)

    def _read_output(self, key: str, deadline: float, *, appear: bool) -> bytes:
        """The object ``key`` of the output bucket, read by the run's deadline.

        The command has ended: a failure now loses its output, not its effects, so no
        Retry-After. Transient errors, and with ``appear`` a key not there yet (the agent
        uploads around the time it reports the final status), are tried again until the
        deadline (a command that ended just in time still gets a second for this)."""
        from botocore.exceptions import BotoCoreError, ClientError

        deadline = max(deadline, time.monotonic() + 1.0)
        where = f"s3://{self.output_bucket}/{key}"
        delay = self.poll_initial
        while True:
            try:
                with self._bounded(deadline):
                    return self._client("s3").get_object(
                        Bucket=self.output_bucket, Key=key)["Body"].read()
            except ClientError as exc:
                trouble = _code(exc)
                if not (_transient(exc) or appear and trouble in ("NoSuchKey", "404")):
                    raise SchedulerRefused(
                        f"the command on {self.instance_id} ended, but its output {where} "
                        f"cannot be read ({trouble})") from exc
            except BotoCoreError as exc:
                trouble = str(exc)
            if time.monotonic() + delay >= deadline:
                raise SchedulerTimeout(
                    f"the command on {self.instance_id} ended, but its output {where} could "
                    f"not be read in time ({trouble})")
            time.sleep(delay)
            delay = min(delay * 2, self.poll_max)

    def _cancel(self, command_id: str) -> None:
        # Best effort, and briefly: the run is already at its deadline, and the command's
        # executionTimeout (timeout + 5 s) stops it anyway.
        try:
            with self._bounded(time.monotonic() + 1.0):
                self._client("ssm").cancel_command(CommandId=command_id,
                                                   InstanceIds=[self.instance_id])
        except Exception:  # noqa: BLE001
            pass

    def _api_error(self, operation: str, exc: Exception) -> GatewayError:
        from botocore.exceptions import (ClientError, ConnectTimeoutError,
                                         EndpointConnectionError, NoCredentialsError,
                                         PartialCredentialsError, ReadTimeoutError)
        where = self.endpoint_url or f"SSM in {self.region}"
        if isinstance(exc, ReadTimeoutError):
            return SchedulerTimeout(f"{where} did not answer {operation} in time")
        if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
            return SchedulerUnavailable(f"cannot reach {where}: {exc}")
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return SchedulerUnavailable(f"no usable AWS credentials for {where}: {exc}")
        if isinstance(exc, ClientError):
            code = _code(exc)
            message = _message(exc)
            if code in _CREDENTIAL_CODES:
                return SchedulerUnavailable(f"AWS refused the gateway's credentials ({code}): {message}")
            if code in _UNAVAILABLE_CODES or _http_status(exc) >= 500:
                return SchedulerUnavailable(f"SSM {operation} failed ({code}): {message}")
            return SchedulerRefused(f"SSM {operation} refused ({code}): {message}")
        return SchedulerUnavailable(f"SSM {operation} failed: {exc}")


def _code(exc) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _message(exc) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Message", "") or "")


def _http_status(exc) -> int:
    try:
        return int(getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    except (TypeError, ValueError):
        return 0


def _transient(exc) -> bool:
    """A ClientError worth asking again about (busy, failing for now, credentials expired)."""
    return _code(exc) in _TRANSIENT_CODES or _http_status(exc) >= 500


def _tail(text: str | None) -> str:
    text = (text or "").strip()
    return f": {text[-500:]}" if text else ""
