"""TEST DOUBLE of AWS Systems Manager Run Command that really runs commands on this host.

It is not AWS: a small HTTP server (stdlib ``http.server`` in a thread) on 127.0.0.1 that
speaks the AWS JSON 1.1 protocol (``X-Amz-Target: AmazonSSM.<Operation>``) for the three
operations the gateway's ``SsmTransport`` uses, so boto3 talks to it with ``endpoint_url``:

- ``SendCommand``: only ``AWS-RunShellScript`` on the one configured ``instance_id``
  (others: ``InvalidDocument`` / ``InvalidInstanceId``). ``TimeoutSeconds`` must be
  30..2592000 as in the real API. The ``commands`` are joined with newlines into
  ``_script.sh`` and run with ``bash`` (``shell=``) as root, in a fresh orchestration
  directory, in a session of their own, asynchronously: the invocation appears after
  ``invocation_delay`` (``GetCommandInvocation`` answers ``InvocationDoesNotExist`` until
  then, as the real service does right after sending), is ``Pending`` for ``start_delay``,
  then ``InProgress``, then ``Success`` / ``Failed`` (ResponseCode = exit code) /
  ``TimedOut`` (``ExecutionTimedOut`` after the ``executionTimeout`` parameter, process group
  killed) / ``Cancelled``.
- ``GetCommandInvocation``: ``StandardOutputContent`` holds the first 24,000 characters of
  stdout and ``StandardErrorContent`` the first 8,000 of stderr (decoded as UTF-8 with
  replacement), like SSM. With ``OutputS3BucketName`` the full stdout and stderr are uploaded
  (boto3, to ``s3_endpoint_url``) to
  ``<prefix>/<command-id>/<instance-id>/awsrunShellScript/0.awsrunShellScript/stdout|stderr``
  before the final status is reported.
- ``CancelCommand``: kills the command's process group; status ``Cancelled``.

Request signatures are not checked. API::

    from tests.support.ssm_endpoint import ssm_endpoint

    with s3_server(buckets=["out"]) as s3, \\
         ssm_endpoint(s3_endpoint_url=s3.url) as ssm:    # -> SsmEndpoint
        ssm.url, ssm.instance_id, ssm.region
        ssm.transport_options(output_bucket="out", s3_endpoint_url=s3.url)
        # -> {"type": "ssm", "instance_id": ..., "region": ..., "endpoint_url": ..., ...}
        with ssm.hanging():        # every request blocks unanswered (504 tests)
            ...
        ssm.hang() / ssm.resume()  # the same, by hand
        ssm.throttle(2)            # the next 2 requests get ThrottlingException
        ssm.lose_answers(1, "SendCommand")  # carried out, then the connection is closed
                                   # without an answer (the reply was lost on the way)
        ssm.requests["SendCommand"]  # how many requests of each operation arrived
        ssm.invocations            # command id -> Invocation (script, status, pid, ...)

boto3 needs credentials to sign: use it inside ``s3_server`` (or ``dummy_aws_env``), which
sets dummy ones. Stopping the endpoint kills commands still running.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

DEFAULT_INSTANCE_ID = "i-0123456789abcdef0"
INLINE_STDOUT_CHARS = 24000
INLINE_STDERR_CHARS = 8000


@dataclass
class Invocation:
    command_id: str
    instance_id: str
    commands: list
    execution_timeout: float
    bucket: str | None
    prefix: str
    workdir: Path
    visible_at: float
    status: str = "Pending"
    details: str = "Pending"
    response_code: int = -1
    stdout: bytes = b""
    stderr: bytes = b""
    started: str = ""
    ended: str = ""
    pid: int | None = None
    cancel_requested: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def script(self) -> str:
        return "\n".join(self.commands)

    def key(self, stream: str) -> str:
        parts = [self.prefix] if self.prefix else []
        return "/".join(parts + [self.command_id, self.instance_id, "awsrunShellScript",
                                 "0.awsrunShellScript", stream])


class _ApiError(Exception):
    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "gateway-ssm-test-double"

    def log_message(self, fmt, *args):  # quiet
        pass

    def setup(self):
        super().setup()
        # Headers and body go out in separate writes; without NODELAY, Nagle + delayed ACK
        # would add ~40 ms to every keep-alive request (an artefact real AWS does not have).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self):
        endpoint: SsmEndpoint = self.server.endpoint  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        target = self.headers.get("X-Amz-Target", "")
        operation = target.split(".", 1)[1] if target.startswith("AmazonSSM.") else ""
        with endpoint._lock:
            endpoint.requests[operation] += 1
            endpoint._arrivals += 1
            arrival = endpoint._arrivals
        # "Stop answering": hold the request until resumed or stopped.
        while not endpoint._answering.wait(0.05):
            if endpoint._stopping.is_set():
                self.close_connection = True
                return
        with endpoint._lock:
            # Only requests that arrived after throttle(): one held by hanging() and released
            # later (its client long gone) must not eat the next test's throttle.
            throttled = (endpoint._throttle > 0 and arrival > endpoint._throttle_after
                         and endpoint._throttle_operation in (None, operation))
            if throttled:
                endpoint._throttle -= 1
        try:
            if throttled:
                raise _ApiError("ThrottlingException", "Rate exceeded")
            payload = json.loads(body or b"{}")
            method = {"SendCommand": endpoint._send_command,
                      "GetCommandInvocation": endpoint._get_command_invocation,
                      "CancelCommand": endpoint._cancel_command}.get(operation)
            if method is None:
                raise _ApiError("UnknownOperationException", f"unsupported operation {target!r}")
            status, data = 200, method(payload)
        except _ApiError as exc:
            status, data = exc.status, {"__type": exc.code, "message": exc.message}
        except (ValueError, KeyError, TypeError) as exc:
            status, data = 400, {"__type": "ValidationException", "message": str(exc)}
        with endpoint._lock:
            lose = endpoint._lose > 0 and endpoint._lose_operation in (None, operation)
            if lose:
                endpoint._lose -= 1
        if lose:  # the request was carried out; its answer never arrives
            self.close_connection = True
            return
        raw = json.dumps(data).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(raw)))
            self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
            self.end_headers()
            self.wfile.write(raw)
        except OSError:
            pass


class SsmEndpoint:
    def __init__(self, instance_id: str = DEFAULT_INSTANCE_ID, *, host: str = "127.0.0.1",
                 region: str = "us-east-1", s3_endpoint_url: str | None = None,
                 shell: str = "bash", invocation_delay: float = 0.02,
                 start_delay: float = 0.0):
        self.instance_id = instance_id
        self.host = host
        self.region = region
        self.s3_endpoint_url = s3_endpoint_url
        self.shell = shutil.which(shell) or shell
        self.invocation_delay = invocation_delay
        self.start_delay = start_delay
        self.invocations: dict[str, Invocation] = {}
        self.requests: Counter = Counter()  # operation name -> requests received
        self._throttle = 0
        self._throttle_operation: str | None = None
        self._throttle_after = 0            # throttle only requests arriving after this one
        self._lose = 0                      # answers still to lose (lose_answers)
        self._lose_operation: str | None = None
        self._arrivals = 0
        self._lock = threading.Lock()
        self._answering = threading.Event()
        self._answering.set()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._workdir: Path | None = None

    # -- lifecycle --------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> "SsmEndpoint":
        self._workdir = Path(tempfile.mkdtemp(prefix="gw-ssm-double-"))
        self._server = ThreadingHTTPServer((self.host, 0), _Handler)
        self._server.daemon_threads = True
        self._server.endpoint = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="ssm-test-double", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            running = list(self.invocations.values())
        for inv in running:
            inv.cancel_requested = True
            self._kill(inv)
        for inv in running:
            inv.done.wait(5)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> "SsmEndpoint":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def hang(self) -> None:
        """Stop answering: requests are read but get no reply until resume()."""
        self._answering.clear()

    def resume(self) -> None:
        self._answering.set()

    @contextmanager
    def hanging(self) -> Iterator[None]:
        self.hang()
        try:
            yield
        finally:
            self.resume()

    def throttle(self, count: int, operation: str | None = None) -> None:
        """Answer the next ``count`` requests arriving from now on (of ``operation`` only,
        when given) with ThrottlingException (HTTP 400)."""
        with self._lock:
            self._throttle = int(count)
            self._throttle_operation = operation
            self._throttle_after = self._arrivals

    def lose_answers(self, count: int, operation: str | None = None) -> None:
        """Carry out the next ``count`` requests (of ``operation`` only, when given) but close
        the connection instead of answering: the client sees ConnectionClosedError."""
        with self._lock:
            self._lose = int(count)
            self._lose_operation = operation

    def transport_options(self, **extra) -> dict:
        opts = {"type": "ssm", "instance_id": self.instance_id, "region": self.region,
                "endpoint_url": self.url}
        opts.update(extra)
        return opts

    # -- operations -------------------------------------------------------------------
    def _send_command(self, req: dict) -> dict:
        if req.get("DocumentName") != "AWS-RunShellScript":
            raise _ApiError("InvalidDocument", f"document {req.get('DocumentName')!r} is not "
                            "supported by the test double")
        ids = req.get("InstanceIds") or []
        if ids != [self.instance_id]:
            raise _ApiError("InvalidInstanceId", "Instances [%s] not in a valid state for account"
                            % ", ".join(ids))
        timeout_seconds = req.get("TimeoutSeconds")
        if timeout_seconds is not None and not 30 <= int(timeout_seconds) <= 2592000:
            raise _ApiError("ValidationException", "1 validation error detected: Value at "
                            "'timeoutSeconds' failed to satisfy constraint: Member must have "
                            "value between 30 and 2592000")
        params = req.get("Parameters") or {}
        commands = params.get("commands")
        if not commands:
            raise _ApiError("InvalidParameters", "commands is required")
        execution_timeout = float((params.get("executionTimeout") or ["3600"])[0])
        bucket = req.get("OutputS3BucketName") or None
        if bucket and not self.s3_endpoint_url:
            raise _ApiError("InvalidOutputFolder", "the test double has no s3_endpoint_url")
        command_id = str(uuid.uuid4())
        workdir = (self._workdir / "orchestration" / command_id / "awsrunShellScript"
                   / "0.awsrunShellScript")
        inv = Invocation(command_id=command_id, instance_id=self.instance_id,
                         commands=list(commands), execution_timeout=execution_timeout,
                         bucket=bucket, prefix=(req.get("OutputS3KeyPrefix") or "").strip("/"),
                         workdir=workdir, visible_at=time.monotonic() + self.invocation_delay)
        with self._lock:
            self.invocations[command_id] = inv
        threading.Thread(target=self._execute, args=(inv,), daemon=True,
                         name=f"ssm-double-{command_id[:8]}").start()
        return {"Command": {
            "CommandId": command_id, "DocumentName": "AWS-RunShellScript",
            "InstanceIds": [self.instance_id], "Parameters": params, "Status": "Pending",
            "StatusDetails": "Pending", "OutputS3BucketName": bucket or "",
            "OutputS3KeyPrefix": inv.prefix, "TargetCount": 1, "CompletedCount": 0,
            "RequestedDateTime": time.time(),
        }}

    def _get_command_invocation(self, req: dict) -> dict:
        inv = self.invocations.get(req.get("CommandId", ""))
        if (inv is None or req.get("InstanceId") != inv.instance_id
                or time.monotonic() < inv.visible_at):
            raise _ApiError("InvocationDoesNotExist", "")
        with self._lock:
            def url(stream):
                if not inv.bucket:
                    return ""
                return f"https://s3.{self.region}.amazonaws.com/{inv.bucket}/{inv.key(stream)}"
            return {
                "CommandId": inv.command_id, "InstanceId": inv.instance_id,
                "DocumentName": "AWS-RunShellScript", "DocumentVersion": "$DEFAULT",
                "PluginName": "aws:runShellScript", "ResponseCode": inv.response_code,
                "ExecutionStartDateTime": inv.started, "ExecutionEndDateTime": inv.ended,
                "ExecutionElapsedTime": "", "Status": inv.status, "StatusDetails": inv.details,
                "StandardOutputContent": inv.stdout.decode("utf-8", "replace")[:INLINE_STDOUT_CHARS],
                "StandardOutputUrl": url("stdout"),
                "StandardErrorContent": inv.stderr.decode("utf-8", "replace")[:INLINE_STDERR_CHARS],
                "StandardErrorUrl": url("stderr"),
            }

    def _cancel_command(self, req: dict) -> dict:
        inv = self.invocations.get(req.get("CommandId", ""))
        if inv is None:
            raise _ApiError("InvalidCommandId", "")
        inv.cancel_requested = True
        self._kill(inv)
        return {}

    # -- the "agent" ------------------------------------------------------------------
    def _kill(self, inv: Invocation) -> None:
        if inv.pid is not None and not inv.done.is_set():
            try:
                os.killpg(inv.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _set(self, inv: Invocation, status: str, details: str | None = None, **fields) -> None:
        with self._lock:
            inv.status, inv.details = status, details or status
            for name, value in fields.items():
                setattr(inv, name, value)

    def _execute(self, inv: Invocation) -> None:
        try:
            if self.start_delay:
                time.sleep(self.start_delay)
            if inv.cancel_requested:
                self._set(inv, "Cancelled")
                return
            inv.workdir.mkdir(parents=True)
            script = inv.workdir / "_script.sh"
            script.write_text(inv.script + "\n")
            script.chmod(0o700)
            out_path, err_path = inv.workdir / "stdout", inv.workdir / "stderr"
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                proc = subprocess.Popen([self.shell, str(script)], cwd=inv.workdir,
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        start_new_session=True, close_fds=True)
                self._set(inv, "InProgress", pid=proc.pid, started=_now())
                if inv.cancel_requested:
                    self._kill(inv)
                timed_out = False
                try:
                    rc = proc.wait(timeout=inv.execution_timeout)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    os.killpg(proc.pid, signal.SIGKILL)
                    rc = proc.wait()
            stdout, stderr = out_path.read_bytes(), err_path.read_bytes()
            if inv.bucket:
                self._upload(inv, stdout, stderr)
            fields = dict(stdout=stdout, stderr=stderr, ended=_now())
            if inv.cancel_requested:
                self._set(inv, "Cancelled", **fields)
            elif timed_out:
                self._set(inv, "TimedOut", "ExecutionTimedOut", **fields)
            elif rc == 0:
                self._set(inv, "Success", response_code=0, **fields)
            else:
                self._set(inv, "Failed", response_code=rc if rc > 0 else -1, **fields)
        except Exception as exc:  # report, like the agent, instead of dying silently
            self._set(inv, "Failed", stderr=f"test double error: {exc!r}".encode(),
                      ended=_now())
        finally:
            inv.done.set()

    def _upload(self, inv: Invocation, stdout: bytes, stderr: bytes) -> None:
        import boto3
        from botocore.config import Config
        s3 = boto3.client("s3", endpoint_url=self.s3_endpoint_url, region_name=self.region,
                          config=Config(s3={"addressing_style": "path"}))
        s3.put_object(Bucket=inv.bucket, Key=inv.key("stdout"), Body=stdout)
        if stderr:
            s3.put_object(Bucket=inv.bucket, Key=inv.key("stderr"), Body=stderr)


def ssm_available() -> tuple[bool, str]:
    if shutil.which("bash") is None:
        return False, "bash is needed to run commands like AWS-RunShellScript"
    try:
        import boto3  # noqa: F401
    except ImportError:
        return False, "boto3 is not installed"
    return True, ""


@contextmanager
def ssm_endpoint(instance_id: str = DEFAULT_INSTANCE_ID, **kwargs) -> Iterator[SsmEndpoint]:
    endpoint = SsmEndpoint(instance_id, **kwargs)
    endpoint.start()
    try:
        yield endpoint
    finally:
        endpoint.stop()
