"""Run an argument list on an EC2 instance through AWS Systems Manager Run Command.

Each :meth:`SsmTransport.run` sends one ``AWS-RunShellScript`` command (``send_command``)
and polls ``get_command_invocation`` until it ends, starting 50 ms after sending and backing
off exponentially to ``poll_max`` (1 s), so a quick command costs ~0.1 s, not seconds.
``InvocationDoesNotExist`` right after sending is expected (the invocation is created
asynchronously) and simply polled again.

The script (see :func:`build_script`) is plain POSIX sh, because the agent runs it with
``sh``:

- the command line is :func:`~gateway.transports.ssh.remote_command_line` (every argument
  single-quoted with :func:`shlex.join`): nothing is interpreted by the shell;
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
  ``If-None-Match: *``) and prints only ``GW-SSM-PUT <curl exit code>``; the gateway reads
  the object once and deletes it (again after the URL expired, when the run failed). Without
  ``output_bucket`` it runs as usual and a warning is logged;
- the exit code travels in the frame and also as the script's own exit code (ResponseCode),
  except 194, which would make the SSM agent *reboot the instance*: the script exits 1
  instead and the frame keeps the true 194.

Timeouts: ``TimeoutSeconds`` (delivery, at least 30 s by the API's rules) and the document's
``executionTimeout`` are set from ``timeout``; locally the poll stops at the deadline, the
command is cancelled (``cancel_command``) and :class:`SchedulerTimeout` (504) raised. An
endpoint that stops answering also gives 504. Unreachable endpoint, missing or refused
credentials, an unmanaged/offline instance, a command the agent could not run or that was
cancelled by someone else: :class:`SchedulerUnavailable` (503).

Throttling and connection errors are retried by botocore (``retries={"mode": "standard"}``).
``SendCommand`` is never retried after a *read* timeout (the command may already be running:
a retry could submit a job twice); that is enforced with a botocore ``needs-retry`` handler.

Credentials come from boto3's normal chain (environment, ``profile``, instance role...).
"""
from __future__ import annotations

import base64
import logging
import math
import threading
import time
import uuid
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


def build_script(command_line: str, stdin: bytes | None, put_url: str | None = None,
                 put_timeout: float = 30) -> str:
    """The AWS-RunShellScript body that runs ``command_line`` and frames its output (pure).

    With ``put_url`` (a presigned S3 PUT) the frame is uploaded there with curl instead of
    printed: the agent's output (kept in SSM's command history and the output bucket) then
    holds only ``GW-SSM-PUT <curl's exit code>``."""
    lines = ['gw_d=$(mktemp -d) || exit 125']
    if stdin is not None:
        encoded = base64.encodebytes(stdin).decode("ascii")  # 76-char lines
        lines += ["base64 -d >\"$gw_d/in\" <<'GW_STDIN_EOF'", encoded.rstrip("\n"), "GW_STDIN_EOF"]
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
    lines += [f'{command_line} {redirect_in} >"$gw_d/out" 2>"$gw_d/err"', "gw_rc=$?"]
    if put_url is None:
        lines += frame
    else:
        from ..files.commands import curl_config
        lines += ["{", *frame, '} >"$gw_d/frame"',
                  "curl --silent --show-error --fail --retry 3 --max-time "
                  f'{max(1, math.ceil(put_timeout))} --config - --upload-file "$gw_d/frame" '
                  "<<'GW_URL_EOF'",
                  curl_config(put_url).decode("ascii").rstrip("\n"),
                  # First write wins (S3 conditional write): whoever reads the URL in SSM's
                  # history cannot replace the frame; a frame put there first fails ours.
                  'header = "If-None-Match: *"',
                  "GW_URL_EOF",
                  f"printf '{PUT_HEADER} %d\\n' \"$?\""]
    lines += [
        'rm -rf "$gw_d"',
        # 194 asks the SSM agent to reboot the instance: never exit with it.
        '[ "$gw_rc" -eq 194 ] && gw_rc=1',
        'exit "$gw_rc"',
    ]
    return "\n".join(lines) + "\n"


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


class _MaybeSent(Exception):
    """SendCommand's answer was lost: the command may run, so it must not be resent."""

    def __init__(self, original: Exception):
        super().__init__(str(original))
        self.original = original


def _no_resend_after_read_timeout(caught_exception=None, **_):
    from botocore.exceptions import ReadTimeoutError
    if isinstance(caught_exception, ReadTimeoutError):
        raise _MaybeSent(caught_exception)
    return None


class SsmTransport(Transport):
    """Commands on one SSM-managed instance (``instance_id``) through Run Command."""

    name = "ssm"
    keeps_output = True
    late_delete_grace = 30.0     # seconds after a private PUT URL expires: its last delete

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
        self.max_attempts = int(max_attempts)
        self.api_timeout = float(api_timeout)
        self.connect_timeout = float(connect_timeout)
        self._session = None
        self._clients: dict = {}
        self._lock = threading.Lock()
        self._warned_private = False

    # -- boto3 ------------------------------------------------------------------------
    def _client(self, service: str, read_timeout: float, attempts: int | None = None):
        """A cached client; one per (service, read timeout, attempts). Thread-safe."""
        from botocore.config import Config
        read_timeout = round(max(0.5, min(self.api_timeout, read_timeout)), 1)
        attempts = self.max_attempts if attempts is None else attempts
        key = (service, read_timeout, attempts)
        client = self._clients.get(key)
        if client is not None:
            return client
        with self._lock:
            client = self._clients.get(key)
            if client is not None:
                return client
            import boto3
            try:
                if self._session is None:
                    self._session = boto3.session.Session(profile_name=self.profile,
                                                          region_name=self.region)
                config = Config(retries={"mode": "standard", "total_max_attempts": attempts},
                                connect_timeout=min(self.connect_timeout, read_timeout),
                                read_timeout=read_timeout,
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
                    client.meta.events.register_first("needs-retry.ssm.SendCommand",
                                                      _no_resend_after_read_timeout)
            except Exception as exc:  # ProfileNotFound, bad region, ...
                raise SchedulerUnavailable(f"cannot set up the AWS client: {exc}") from exc
            self._clients[key] = client
            return client

    def _per_call_timeout(self, timeout: float) -> float:
        # All of botocore's attempts of one call must fit in the run's timeout.
        return timeout / max(1, self.max_attempts)

    # -- run --------------------------------------------------------------------------
    def _run(self, argv, *, stdin, timeout, env, private=False):
        from botocore.exceptions import BotoCoreError

        deadline = time.monotonic() + timeout
        private_key = put_url = None
        if private and self.output_bucket:
            private_key = self._private_key()
            try:
                # Valid only while the script may run (executionTimeout is timeout + 5 s).
                put_url = self._s3(timeout).generate_presigned_url(
                    "put_object", Params={"Bucket": self.output_bucket, "Key": private_key},
                    ExpiresIn=self._put_expiry(timeout))
            except BotoCoreError as exc:                  # no credentials
                raise SchedulerUnavailable(f"cannot sign an S3 URL for the output: {exc}") from exc
        elif private and not self._warned_private:
            self._warned_private = True
            log.warning("ssm transport: no output_bucket, so private output (vis session "
                        "files with their VNC passwords) is kept in SSM's command history")
        script = build_script(remote_command_line(argv, env), stdin, put_url=put_url, put_timeout=timeout)
        ssm = self._client("ssm", self._per_call_timeout(timeout))
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
            command_id = self._send(ssm, params)
            invocation = self._wait(ssm, command_id, deadline, timeout)
            return self._result(invocation, command_id, deadline)
        try:
            command_id = self._send(ssm, params)
            invocation = self._wait(ssm, command_id, deadline, timeout)
            result = self._private_result(invocation, private_key)
        except BaseException:
            # The script may still put its frame after this (it finished late, or SendCommand's
            # answer was lost): delete now, and again once the URL has expired.
            self._delete_private(private_key)
            later = threading.Timer(self._put_expiry(timeout) + self.late_delete_grace,
                                    self._delete_private, (private_key,))
            later.daemon = True
            later.start()
            raise
        self._delete_private(private_key)
        return result

    def _send(self, ssm, params: dict) -> str:
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return ssm.send_command(**params)["Command"]["CommandId"]
        except _MaybeSent as exc:
            raise SchedulerTimeout(
                f"SSM did not answer SendCommand in time; the command may or may not run on "
                f"{self.instance_id}") from exc.original
        except (ClientError, BotoCoreError) as exc:
            raise self._api_error("SendCommand", exc) from exc

    # -- private output: through a presigned PUT, read once, deleted ---------------------
    def _private_key(self) -> str:
        name = f"private/{uuid.uuid4().hex}"
        return f"{self.output_prefix}/{name}" if self.output_prefix else name

    @staticmethod
    def _put_expiry(timeout: float) -> int:
        return math.ceil(timeout) + 10

    def _s3(self, timeout: float):
        return self._client("s3", self._per_call_timeout(timeout))

    def _private_result(self, invocation: dict, key: str) -> CommandResult:
        from botocore.exceptions import BotoCoreError, ClientError

        self._check_ended(invocation)
        inline = invocation.get("StandardOutputContent") or ""
        start = inline.rfind(PUT_HEADER + " ")
        words = inline[start:].split() if start >= 0 else []
        if len(words) < 2 or words[1] != "0":
            why = f"curl exit code {words[1]}" if len(words) >= 2 else "no report from the script"
            raise SchedulerUnavailable(
                f"the command on {self.instance_id} could not upload its output to "
                f"s3://{self.output_bucket} ({why})" + _tail(invocation.get("StandardErrorContent")))
        try:
            body = self._s3(self.api_timeout).get_object(Bucket=self.output_bucket, Key=key)["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise SchedulerUnavailable(f"cannot read the command's output from S3: {exc}") from exc
        result = parse_frame(body.decode("ascii", "replace"))
        if result is None:
            raise GatewayError(f"the output of the command on {self.instance_id} arrived incomplete")
        return result

    def _delete_private(self, key: str) -> None:
        try:
            self._s3(self.api_timeout).delete_object(Bucket=self.output_bucket, Key=key)
        except Exception as exc:  # noqa: BLE001 - the answer matters more; the key is logged
            log.warning("cannot delete s3://%s/%s (a command's private output): %s",
                        self.output_bucket, key, exc)

    def _wait(self, ssm, command_id: str, deadline: float, timeout: float) -> dict:
        from botocore.exceptions import BotoCoreError, ClientError

        delay = self.poll_initial
        status = "Pending"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._cancel(command_id)
                raise SchedulerTimeout(
                    f"command on {self.instance_id} did not finish within {timeout:g} s "
                    f"(last SSM status {status}); it was cancelled")
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, self.poll_max)
            try:
                invocation = ssm.get_command_invocation(CommandId=command_id,
                                                        InstanceId=self.instance_id)
            except ClientError as exc:
                if _code(exc) == "InvocationDoesNotExist":
                    continue  # created asynchronously after SendCommand
                raise self._api_error("GetCommandInvocation", exc) from exc
            except BotoCoreError as exc:
                error = self._api_error("GetCommandInvocation", exc)
                if isinstance(error, SchedulerTimeout):
                    self._cancel(command_id)
                raise error from exc
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
            result = parse_frame(self._read_s3_stdout(command_id, deadline))
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

    def _read_s3_stdout(self, command_id: str, deadline: float) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        s3 = self._client("s3", max(1.0, deadline - time.monotonic()))
        key = self._output_key(command_id, "stdout")
        delay = self.poll_initial
        while True:
            try:
                body = s3.get_object(Bucket=self.output_bucket, Key=key)["Body"].read()
                return body.decode("utf-8", "replace")
            except ClientError as exc:
                # The agent uploads around the time it reports the final status: give the
                # object a moment to appear, within the run's deadline.
                if _code(exc) in ("NoSuchKey", "404") and time.monotonic() + delay < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, self.poll_max)
                    continue
                raise SchedulerUnavailable(
                    f"cannot read the command's output s3://{self.output_bucket}/{key}: "
                    f"{_code(exc)}") from exc
            except BotoCoreError as exc:
                raise SchedulerUnavailable(
                    f"cannot read the command's output from S3: {exc}") from exc

    def _cancel(self, command_id: str) -> None:
        try:
            self._client("ssm", 2.0, attempts=1).cancel_command(
                CommandId=command_id, InstanceIds=[self.instance_id])
        except Exception:  # best effort: the executionTimeout stops it anyway
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
            message = exc.response.get("Error", {}).get("Message", "")
            if code in _CREDENTIAL_CODES:
                return SchedulerUnavailable(f"AWS refused the gateway's credentials ({code}): {message}")
            if code in _UNAVAILABLE_CODES or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500:
                return SchedulerUnavailable(f"SSM {operation} failed ({code}): {message}")
            return SchedulerRefused(f"SSM {operation} refused ({code}): {message}")
        return SchedulerUnavailable(f"SSM {operation} failed: {exc}")


def _code(exc) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _tail(text: str | None) -> str:
    text = (text or "").strip()
    return f": {text[-500:]}" if text else ""
