"""SsmTransport specifics: the script, output framing, S3, polling, errors.

Pure parts run the generated script with the real shells (dash as Debian's sh, and bash);
the rest talks to the SSM test double and moto's S3 (tests/support).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from contextlib import contextmanager

import pytest
from botocore.exceptions import (ClientError, ConnectionClosedError, ConnectTimeoutError,
                                 EndpointConnectionError, ReadTimeoutError)
from botocore.stub import Stubber

from gateway.errors import (GatewayError, SchedulerRefused, SchedulerTimeout,
                            SchedulerUnavailable)
from gateway.transports import make_transport
from gateway.transports.ssh import remote_command_line
from gateway.transports.ssm import (INLINE_STDOUT_LIMIT, SsmTransport, build_script,
                                    parse_frame)

from tests.support import silent_server

from .conftest import OUTPUT_BUCKET
from .test_transport_behaviour import ALL_BYTES, NASTY


# -- pure: the script and its frame ----------------------------------------------------
@pytest.mark.parametrize("shell", ["sh", "dash", "bash"])
@pytest.mark.parametrize("stdin", [None, b"", ALL_BYTES])
def test_script_runs_under_posix_shells(shell, stdin, tmp_path):
    """The agent runs the script with sh: it must not need bash."""
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} not installed")
    argv = ["sh", "-c", 'cat; printf "%s|" "$@" >&2; exit 7', "sh", *NASTY]
    script = build_script(remote_command_line(argv), stdin)
    (tmp_path / "_script.sh").write_text(script)
    proc = subprocess.run([shell, str(tmp_path / "_script.sh")], capture_output=True,
                          cwd=tmp_path, timeout=30)
    assert proc.returncode == 7 and proc.stderr == b""
    result = parse_frame(proc.stdout.decode())
    assert result.returncode == 7
    assert result.stdout == (stdin or b"")
    assert result.stderr == "".join(f"{a}|" for a in NASTY).encode()


def test_exit_194_never_reaches_the_agent(tmp_path):
    """SSM reboots the instance when a script exits 194; the frame keeps the real code."""
    script = build_script(remote_command_line(["sh", "-c", "exit 194"]), None)
    proc = subprocess.run(["sh", "-c", script], capture_output=True)
    assert proc.returncode == 1
    assert parse_frame(proc.stdout.decode()).returncode == 194


def test_parse_frame_rejects_truncated_output():
    script = build_script(remote_command_line(["head", "-c", "40000", "/dev/zero"]), None)
    text = subprocess.run(["sh", "-c", script], capture_output=True).stdout.decode()
    assert parse_frame(text).stdout == bytes(40000)
    assert len(text) > INLINE_STDOUT_LIMIT
    assert parse_frame(text[:INLINE_STDOUT_LIMIT]) is None
    assert parse_frame("") is None
    assert parse_frame("GW-SSM-1 0\n!!!\n\nGW-SSM-END\n") is None


# -- against the test double -----------------------------------------------------------
@pytest.fixture
def ssm(ssm_double, s3):
    t = make_transport(ssm_double.transport_options(output_bucket=OUTPUT_BUCKET,
                                                     s3_endpoint_url=s3.url))
    yield t
    t.close()


def _last(ssm_double):
    return list(ssm_double.invocations.values())[-1]


def test_large_output_comes_from_s3(ssm, ssm_double):
    data = os.urandom(60_000)
    result = ssm.run(["cat"], stdin=data)
    assert result.stdout == data
    # SSM kept only 24,000 characters inline, so the transport must have used S3.
    assert len(_last(ssm_double).stdout) > INLINE_STDOUT_LIMIT


def test_small_output_needs_no_bucket(ssm_double):
    t = make_transport(ssm_double.transport_options())
    assert t.run(["printf", "\\000\\377"]).stdout == b"\x00\xff"


def test_truncated_output_without_bucket_is_an_explicit_error(ssm_double):
    t = make_transport(ssm_double.transport_options())
    with pytest.raises(GatewayError) as info:
        t.run(["head", "-c", "30000", "/dev/zero"])
    assert "output_bucket" in info.value.msg


def test_output_prefix_is_used_for_s3_keys(ssm_double, s3):
    t = make_transport(ssm_double.transport_options(output_bucket=OUTPUT_BUCKET,
                                                     output_prefix="gw/runs",
                                                     s3_endpoint_url=s3.url))
    assert t.run(["head", "-c", "30000", "/dev/zero"]).stdout == bytes(30000)
    inv = _last(ssm_double)
    key = f"gw/runs/{inv.command_id}/{inv.instance_id}/awsrunShellScript/0.awsrunShellScript/stdout"
    assert s3.get(OUTPUT_BUCKET, key) == inv.stdout


def test_send_command_parameters(ssm, ssm_double):
    ssm.run(["true"], timeout=7)
    inv = _last(ssm_double)
    assert inv.execution_timeout == 12  # timeout + 5 s; the local deadline fires first
    assert inv.bucket == OUTPUT_BUCKET and inv.prefix == "ssm"


def test_invocation_not_yet_visible_is_polled_again(ssm_double, s3):
    from tests.support.ssm_endpoint import ssm_endpoint
    with ssm_endpoint(s3_endpoint_url=s3.url, invocation_delay=0.3, start_delay=0.2) as slow:
        t = make_transport(slow.transport_options())
        assert t.run(["echo", "hi"]).stdout == b"hi\n"
        assert slow.requests["GetCommandInvocation"] >= 2


def test_timeout_cancels_the_command(ssm, ssm_double):
    with pytest.raises(SchedulerTimeout):
        ssm.run(["sleep", "30"], timeout=1)
    inv = _last(ssm_double)
    assert inv.done.wait(10)
    assert inv.status == "Cancelled"
    assert ssm_double.requests["CancelCommand"] >= 1


def test_endpoint_that_stops_answering_gives_504_and_no_second_send(ssm_double):
    t = make_transport(ssm_double.transport_options())
    sent = ssm_double.requests["SendCommand"]
    started = time.monotonic()
    with ssm_double.hanging():
        with pytest.raises(SchedulerTimeout):
            t.run(["true"], timeout=2)
    assert time.monotonic() - started < 10
    # A SendCommand whose answer was lost is never resent: it could submit a job twice.
    assert ssm_double.requests["SendCommand"] - sent == 1


def test_throttled_send_command_is_sent_again(ssm, ssm_double):
    """A throttled SendCommand was not carried out: sending it again cannot run it twice."""
    sent = ssm_double.requests["SendCommand"]
    ssm_double.throttle(1, "SendCommand")    # only SendCommand: a stray poll cannot eat it
    assert ssm.run(["echo", "ok"]).stdout == b"ok\n"
    assert ssm_double.requests["SendCommand"] - sent == 2


def test_unknown_instance_is_503(ssm_double):
    t = make_transport(ssm_double.transport_options(instance_id="i-00000000000000000"))
    with pytest.raises(SchedulerUnavailable) as info:
        t.run(["true"])
    assert "InvalidInstanceId" in info.value.msg


def test_missing_credentials_are_503(ssm_double, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    t = make_transport(ssm_double.transport_options())
    with pytest.raises(SchedulerUnavailable) as info:
        t.run(["true"])
    assert "credentials" in info.value.msg


# -- status mapping (botocore Stubber: statuses the double cannot produce quickly) -------
def _stubbed(monkeypatch, invocation: dict | None = None, send_error: str | None = None):
    t = SsmTransport("i-0123456789abcdef0", region="us-east-1", poll_initial=0.001)
    import boto3
    client = boto3.client("ssm", region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
    stub = Stubber(client)
    if send_error:
        for _ in range(t.max_attempts):  # a throttled send is sent again: every attempt sees it
            stub.add_client_error("send_command", service_error_code=send_error,
                                  service_message="nope", http_status_code=400)
    else:
        stub.add_response("send_command", {"Command": {"CommandId": "c" * 36}})
        stub.add_client_error("get_command_invocation",
                              service_error_code="InvocationDoesNotExist")
        stub.add_response("get_command_invocation", {"Status": "InProgress"})
        stub.add_response("get_command_invocation", invocation)
    stub.activate()
    monkeypatch.setattr(t, "_client", lambda *a, **k: client)
    return t


@pytest.mark.parametrize("invocation, error", [
    ({"Status": "TimedOut", "StatusDetails": "ExecutionTimedOut"}, SchedulerTimeout),
    ({"Status": "TimedOut", "StatusDetails": "DeliveryTimedOut"}, SchedulerUnavailable),
    ({"Status": "Cancelled", "StatusDetails": "Cancelled"}, SchedulerUnavailable),
    ({"Status": "Undeliverable", "StatusDetails": "Undeliverable"}, SchedulerUnavailable),
    ({"Status": "Terminated", "StatusDetails": "Terminated"}, SchedulerUnavailable),
    ({"Status": "Failed", "StatusDetails": "Failed", "ResponseCode": -1,
      "StandardErrorContent": "failed to run commands: exec: sh: not found"}, SchedulerUnavailable),
    ({"Status": "Failed", "StatusDetails": "Failed", "ResponseCode": 3,
      "StandardOutputContent": "GW-SSM-1 3\naGk=\n\nGW-SSM-END\n"}, None),
])
def test_final_status_mapping(monkeypatch, invocation, error):
    t = _stubbed(monkeypatch, invocation)
    if error is None:
        result = t.run(["x"])
        assert (result.returncode, result.stdout) == (3, b"hi")
    else:
        with pytest.raises(error):
            t.run(["x"])


@pytest.mark.parametrize("code, error", [
    ("AccessDeniedException", SchedulerUnavailable),
    ("UnrecognizedClientException", SchedulerUnavailable),
    ("ExpiredTokenException", SchedulerUnavailable),
    ("ThrottlingException", SchedulerUnavailable),
    ("InvalidDocument", SchedulerUnavailable),
    ("ValidationException", SchedulerRefused),
])
def test_api_error_mapping(monkeypatch, code, error):
    t = _stubbed(monkeypatch, send_error=code)
    with pytest.raises(error) as info:
        t.run(["x"])
    assert code in info.value.msg


def test_retry_configuration():
    """botocore makes one attempt per call: the transport decides what may be repeated."""
    t = SsmTransport("i-1", endpoint_url="http://127.0.0.1:9", api_timeout=10)
    client = t._client("ssm")
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 1}
    assert client.meta.config.read_timeout == 10
    assert t._client("ssm") is client


@contextmanager
def _connects_hang():
    """A port on 127.0.0.1 whose connects hang: a listen queue of one, filled and never
    accepted (Linux then drops further SYNs, as a firewall that drops packets would)."""
    import socket
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=2)
    probe = socket.socket()
    probe.settimeout(0.5)
    try:
        with pytest.raises(TimeoutError):                    # not refused: it hangs
            probe.connect(("127.0.0.1", port))
        yield port
    finally:
        for sock in (probe, filler, server):
            sock.close()


def test_a_connect_that_hangs_ends_at_the_runs_timeout(ssm_double):
    """botocore keeps the client's connect timeout for every call; the run's deadline bounds
    it too. Before, an endpoint whose connects hang held a 2 s run for connect_timeout (30 s
    here)."""
    with _connects_hang() as port:
        t = make_transport(ssm_double.transport_options(endpoint_url=f"http://127.0.0.1:{port}",
                                                         connect_timeout=30, api_timeout=30))
        start = time.monotonic()
        with pytest.raises(GatewayError) as info:
            t.run(["true"], timeout=2)
        took = time.monotonic() - start
        t.close()
    assert took < 6, f"the run took {took:.1f} s"
    assert info.value.status in (503, 504) and "reach" in info.value.msg, info.value.msg


def test_one_client_per_service_whatever_the_timeouts(ssm_double, s3):
    """Clients are cached per service only: runs with many different timeouts (each one's
    calls bounded by its own deadline) do not each build and keep clients of their own."""
    t = make_transport(ssm_double.transport_options(output_bucket=OUTPUT_BUCKET,
                                                     s3_endpoint_url=s3.url))
    for timeout in (2, 2.5, 3.1, 3.7, 4.4, 5.2, 6.3, 8.8):
        assert t.run(["head", "-c", "30000", "/dev/zero"], timeout=timeout).stdout == bytes(30000)
    assert len(t._clients) <= 2       # ssm and s3


# -- what may be sent again, and what a failure after sending means ---------------------
class _FakeSsm:
    """Stands in for the boto3 SSM client: each operation answers (or raises) its scripted
    outcomes in turn, the last one for ever; calls are counted."""

    def __init__(self, send=(), poll=()):
        self.outcomes = {"SendCommand": list(send) or [{"Command": {"CommandId": "c" * 36}}],
                         "GetCommandInvocation": list(poll) or [{"Status": "InProgress"}],
                         "CancelCommand": [{}]}
        self.calls = Counter()

    def _answer(self, operation):
        self.calls[operation] += 1
        queue = self.outcomes[operation]
        outcome = queue[0] if len(queue) == 1 else queue.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def send_command(self, **_):
        return self._answer("SendCommand")

    def get_command_invocation(self, **_):
        return self._answer("GetCommandInvocation")

    def cancel_command(self, **_):
        return self._answer("CancelCommand")


def _faked(monkeypatch, fake) -> SsmTransport:
    t = SsmTransport("i-0123456789abcdef0", region="us-east-1", poll_initial=0.01, poll_max=0.1)
    monkeypatch.setattr(t, "_client", lambda *a, **k: fake)
    monkeypatch.setattr("random.uniform", lambda a, b: 0.0)  # no backoff waits
    return t


def _client_error(code: str, status: int = 400, operation: str = "SendCommand") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


_OK_INVOCATION = {"Status": "Success", "ResponseCode": 0,
                  "StandardOutputContent": "GW-SSM-1 0\naGk=\n\nGW-SSM-END\n"}


@pytest.mark.parametrize("error, attempts, raised", [
    # Nothing went out, or SSM throttled it: it did not run, so it is sent again.
    (EndpointConnectionError(endpoint_url="http://ssm"), 3, SchedulerUnavailable),
    (ConnectTimeoutError(endpoint_url="http://ssm"), 3, SchedulerUnavailable),
    (_client_error("ThrottlingException"), 3, SchedulerUnavailable),
    # Sent and the answer lost (or a 5xx): it may run; sending again could submit twice.
    (ConnectionClosedError(endpoint_url="http://ssm"), 1, SchedulerTimeout),
    (ReadTimeoutError(endpoint_url="http://ssm"), 1, SchedulerTimeout),
    (_client_error("InternalServerError", 500), 1, SchedulerTimeout),
    # Refused: it did not run, and sending again would not help.
    (_client_error("ValidationException"), 1, SchedulerRefused),
])
def test_send_command_is_sent_again_only_when_it_did_not_run(monkeypatch, error, attempts, raised):
    fake = _FakeSsm(send=[error])
    t = _faked(monkeypatch, fake)
    with pytest.raises(raised) as info:
        t.run(["sbatch", "--wrap=hostname"], timeout=10)
    assert fake.calls["SendCommand"] == attempts
    assert fake.calls["GetCommandInvocation"] == 0
    if raised is SchedulerTimeout:
        assert "may or may not" in info.value.msg
        assert "Retry-After" not in info.value.headers   # no invitation to submit again


def test_send_command_whose_answer_is_lost_is_not_sent_again(ssm_double):
    """The connection closes after SendCommand went out (the double carried it out): it is
    not sent again, and the client's 504 does not invite another submission."""
    t = make_transport(ssm_double.transport_options())
    sent, runs = ssm_double.requests["SendCommand"], len(ssm_double.invocations)
    ssm_double.lose_answers(3, "SendCommand")
    try:
        with pytest.raises(SchedulerTimeout) as info:
            t.run(["true"], timeout=5)
    finally:
        ssm_double.lose_answers(0)
    assert ssm_double.requests["SendCommand"] - sent == 1
    assert len(ssm_double.invocations) - runs == 1
    assert "may or may not" in info.value.msg and "Retry-After" not in info.value.headers


_POLL_TROUBLE = [
    _client_error("ThrottlingException", operation="GetCommandInvocation"),
    _client_error("ExpiredTokenException", operation="GetCommandInvocation"),
    _client_error("InternalServerError", 500, operation="GetCommandInvocation"),
    EndpointConnectionError(endpoint_url="http://ssm"),
    ConnectionClosedError(endpoint_url="http://ssm"),
    ReadTimeoutError(endpoint_url="http://ssm"),
]


@pytest.mark.parametrize("error", _POLL_TROUBLE, ids=lambda e: type(e).__name__ + ":" + str(e)[:30])
def test_trouble_while_polling_is_polled_again(monkeypatch, error):
    """The command was sent: a failed poll is no reason to give up on it (nor to tell the
    client to try again while it runs)."""
    fake = _FakeSsm(poll=[error, error, error, _OK_INVOCATION])
    t = _faked(monkeypatch, fake)
    assert t.run(["x"], timeout=10).stdout == b"hi"
    assert fake.calls["SendCommand"] == 1 and fake.calls["CancelCommand"] == 0


@pytest.mark.parametrize("error", _POLL_TROUBLE, ids=lambda e: type(e).__name__ + ":" + str(e)[:30])
def test_trouble_while_polling_until_the_deadline_is_a_504_without_retry_after(monkeypatch, error):
    fake = _FakeSsm(poll=[error])
    t = _faked(monkeypatch, fake)
    started = time.monotonic()
    with pytest.raises(SchedulerTimeout) as info:
        t.run(["sbatch", "--wrap=hostname"], timeout=1)
    assert time.monotonic() - started < 1 + 3
    assert fake.calls["GetCommandInvocation"] >= 2          # polled again until the deadline
    assert fake.calls["CancelCommand"] == 1 and fake.calls["SendCommand"] == 1
    assert "may or may not" in info.value.msg and "Retry-After" not in info.value.headers


def test_poll_refused_for_good_cancels_at_once_without_retry_after(monkeypatch):
    fake = _FakeSsm(poll=[_client_error("AccessDeniedException", operation="GetCommandInvocation")])
    t = _faked(monkeypatch, fake)
    with pytest.raises(SchedulerTimeout) as info:
        t.run(["x"], timeout=30)
    assert fake.calls["GetCommandInvocation"] == 1 and fake.calls["CancelCommand"] == 1
    assert "AccessDeniedException" in info.value.msg and "Retry-After" not in info.value.headers


def test_throttled_polls_do_not_abandon_a_sent_command(ssm, ssm_double):
    """More throttled polls in a row than botocore would have retried."""
    cancels = ssm_double.requests["CancelCommand"]
    ssm_double.throttle(5, "GetCommandInvocation")
    try:
        assert ssm.run(["echo", "ok"], timeout=20).stdout == b"ok\n"
    finally:
        ssm_double.throttle(0)
    assert ssm_double.requests["CancelCommand"] == cancels


# -- an endpoint that stops answering: the 504 comes at the timeout, not a multiple of it -
@contextmanager
def _silent_server():
    """An HTTP "server" on 127.0.0.1 that accepts connections and never answers."""
    with silent_server() as port:
        yield f"http://127.0.0.1:{port}"


def test_endpoint_that_hangs_while_polling_gives_504_at_the_timeout(ssm_double, s3):
    from tests.support.ssm_endpoint import ssm_endpoint
    timeout = 6
    with ssm_endpoint() as endpoint:
        t = make_transport(endpoint.transport_options())
        hang = threading.Timer(3.0, endpoint.hang)        # mid-poll: the command is running
        hang.start()
        started = time.monotonic()
        try:
            with pytest.raises(SchedulerTimeout) as info:
                t.run(["sleep", "30"], timeout=timeout)
            elapsed = time.monotonic() - started
        finally:
            hang.cancel()
            endpoint.resume()
        assert endpoint.requests["GetCommandInvocation"] >= 2
    assert elapsed < timeout + 3, f"returned after {elapsed:.1f} s"
    assert "Retry-After" not in info.value.headers


def test_s3_that_hangs_while_reading_the_output_gives_504_at_the_timeout(ssm_double):
    """The command ended but its (large) output must come from S3, which does not answer."""
    timeout = 4
    with _silent_server() as url:
        t = make_transport(ssm_double.transport_options(output_bucket=OUTPUT_BUCKET,
                                                         s3_endpoint_url=url))
        started = time.monotonic()
        with pytest.raises(SchedulerTimeout) as info:
            t.run(["head", "-c", "30000", "/dev/zero"], timeout=timeout)
        elapsed = time.monotonic() - started
    assert elapsed < timeout + 3, f"returned after {elapsed:.1f} s"
    assert "Retry-After" not in info.value.headers


# -- client text and SSM's parameter interpolation ------------------------------------------
_SSM_REFERENCES = ["{{ssm:/prod/db/password}}", "{{ssm-secure:/prod/key}}",
                   "{{resolve:ssm:/x}}", "{{ commands }}"]


def test_client_text_never_reaches_the_commands_parameter(ssm, ssm_double):
    """Run Command resolves {{ssm:name}} in the commands parameter with the gateway's IAM
    rights before the agent sees it: argv and environment travel base64-encoded, and still
    arrive literally."""
    argv = ["sh", "-c", 'printf "%s|" "$@" "$GW_REF"', "sh", *_SSM_REFERENCES]
    result = ssm.run(argv, env={"GW_REF": "{{ssm:/env/secret}}"})
    assert result.stdout == "".join(f"{a}|" for a in [*_SSM_REFERENCES, "{{ssm:/env/secret}}"]).encode()
    script = _last(ssm_double).script
    assert "{{" not in script and "ssm:" not in script
    pure = build_script(remote_command_line(argv, {"GW_REF": "{{ssm:/x}}"}), b"{{ssm:/in}}")
    assert "{{" not in pure


# -- private output (a vis session file's VNC password) ------------------------------------
def _bucket_keys(s3) -> list[str]:
    client = s3.client()
    return [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=OUTPUT_BUCKET)
            for o in page.get("Contents", [])]


def _bucket_objects(s3) -> dict[str, bytes]:
    """Every object's content; one deleted between the listing and the read (a run's own
    clean-up) is left out."""
    out = {}
    for key in _bucket_keys(s3):
        try:
            out[key] = s3.get(OUTPUT_BUCKET, key)
        except s3.client().exceptions.NoSuchKey:
            pass
    return out


def test_private_output_stays_out_of_ssm_history_and_the_output_bucket(ssm, ssm_double, s3, tmp_path):
    """SSM keeps every command's output (command history, the output bucket). A private run's
    frame goes to a presigned S3 PUT instead, is read once and deleted: the secret is found
    in no invocation's output and in no object left in the bucket."""
    import base64
    secret = b"vnc-password-" + os.urandom(24).hex().encode() + bytes(range(256))
    path = tmp_path / "session.json"
    path.write_bytes(secret)
    before = set(_bucket_objects(s3))

    result = ssm.run(["cat", "--", str(path)], private=True)
    assert (result.returncode, result.stdout, result.stderr) == (0, secret, b"")
    failed = ssm.run(["cat", "--", str(tmp_path / "missing")], private=True)
    assert failed.returncode == 1 and b"No such file" in failed.stderr

    encoded = base64.b64encode(secret)
    for inv in list(ssm_double.invocations.values())[-2:]:
        assert inv.stdout.startswith(b"GW-SSM-PUT 0") and encoded not in inv.stdout, inv.stdout[:200]
        assert secret not in inv.stdout and encoded not in inv.stderr
    left = {k: v for k, v in _bucket_objects(s3).items() if k not in before}
    assert not [k for k in left if "/private/" in k]                  # read once, deleted
    assert not [k for k, v in left.items() if encoded in v or secret in v]
    # The same read, not private, is kept by SSM: what the test guards against.
    ssm.run(["cat", "--", str(path)])
    assert encoded in _last(ssm_double).stdout


def test_private_output_without_a_bucket_is_still_answered(ssm_double, tmp_path, caplog):
    """No output bucket: the run is answered inline, as before, and the operator is told."""
    path = tmp_path / "s"
    path.write_bytes(b"secret")
    t = make_transport(ssm_double.transport_options())
    try:
        with caplog.at_level("WARNING", logger="gateway.transports.ssm"):
            assert t.run(["cat", "--", str(path)], private=True).stdout == b"secret"
        assert "no output_bucket" in caplog.text
    finally:
        t.close()


def test_private_output_that_cannot_reach_s3_is_a_503(ssm_double, s3, tmp_path):
    """curl cannot PUT (here: a bucket that does not exist): a clear 503, not empty output."""
    path = tmp_path / "s"
    path.write_bytes(b"secret")
    t = make_transport(ssm_double.transport_options(output_bucket="gw-no-such-bucket",
                                                     s3_endpoint_url=s3.url))
    try:
        with pytest.raises(SchedulerUnavailable, match="could not upload its output"):
            t.run(["cat", "--", str(path)], private=True)
    finally:
        t.close()


def test_a_private_frame_put_first_by_someone_else_is_refused(ssm, ssm_double, s3, tmp_path, monkeypatch):
    """The presigned URL is in the command, which SSM's history shows. Whoever reads it there
    could put a forged frame (a session file pointing elsewhere): the script's PUT is a
    conditional write (If-None-Match: *), so a frame already there makes the run a 503
    instead of answering with it, and one put later cannot replace ours."""
    import base64
    path = tmp_path / "s"
    path.write_bytes(b"real")
    key = "ssm/private/forged-" + os.urandom(4).hex()
    monkeypatch.setattr(ssm, "_private_key", lambda: key)
    forged = f"GW-SSM-1 0\n{base64.b64encode(b'forged').decode()}\n\nGW-SSM-END\n".encode()
    s3.put(OUTPUT_BUCKET, key, forged)
    with pytest.raises(SchedulerUnavailable, match="could not upload its output"):
        ssm.run(["cat", "--", str(path)], private=True)
    assert key not in _bucket_objects(s3)


def test_a_private_frame_url_lets_no_one_replace_the_frame(ssm, ssm_double, s3, tmp_path):
    """A conditional header S3 honours only when the PUT sends it: the URL is signed with
    If-None-Match, so a PUT with it (from SSM's history) must send it too and cannot
    overwrite the frame the script put."""
    from urllib.parse import parse_qs, urlparse
    path = tmp_path / "s"
    path.write_bytes(b"real")
    assert ssm.run(["cat", "--", str(path)], private=True).stdout == b"real"
    script = _last(ssm_double).script
    url = next(line for line in script.splitlines() if line.startswith("url = "))[len('url = "'):-1]
    signed = parse_qs(urlparse(url).query)["X-Amz-SignedHeaders"][0].split(";")
    assert "if-none-match" in signed, signed
    assert 'header = "If-None-Match: *"' in script.splitlines()


def test_a_small_file_read_over_ssm_stays_out_of_the_command_history(ssm, ssm_double, s3, tmp_path):
    """The files API reads a small file (up to inline_max_bytes, often a key or a .netrc)
    in the command's own output: as private output, so SSM's history (and the output
    bucket's stdout object) holds no byte of it."""
    from urllib.parse import parse_qs, urlparse

    from gateway.files.channels import S3Channel
    from gateway.files.settings import load_files_settings
    secret = b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
    path = tmp_path / "id_ed25519"
    path.write_bytes(secret)
    channel = S3Channel(ssm, None, load_files_settings({"staging": {"prefix": "gateway-files"}}))
    assert channel.bucket == OUTPUT_BUCKET
    assert b"".join(channel.read(str(path), 0, len(secret))) == secret
    invocation = _last(ssm_double)
    import base64
    assert base64.b64encode(secret)[:24] not in invocation.stdout, invocation.stdout     # the frame is base64
    assert b"GW-SSM-PUT 0" in invocation.stdout, invocation.stdout
    assert not any(k.startswith("private/") or "/private/" in k for k in _bucket_keys(s3))   # read once, deleted
    # A staged download's URL, as the command that uses it gets it.
    url = channel._url("put_object", "gateway-files/x")
    assert int(parse_qs(urlparse(url).query)["X-Amz-Expires"][0]) == 3600 + 60   # transfer_timeout


def test_a_private_frame_put_after_a_timeout_is_deleted_later(ssm_double, s3, tmp_path, monkeypatch):
    """The gateway gave up (timeout) and its cancel did not arrive: the script still puts its
    frame when it ends. That object is deleted once the URL has expired."""
    path = tmp_path / "s"
    path.write_bytes(b"late secret")
    t = make_transport(ssm_double.transport_options(output_bucket=OUTPUT_BUCKET, s3_endpoint_url=s3.url))
    monkeypatch.setattr(t, "_cancel", lambda command_id: None)          # the cancel is lost
    monkeypatch.setattr(SsmTransport, "_put_expiry", staticmethod(lambda timeout: 6))
    monkeypatch.setattr(t, "late_delete_grace", 1.0)
    before = set(_bucket_keys(s3))

    def late():
        return [k for k in _bucket_keys(s3) if "/private/" in k and k not in before]

    try:
        started = time.monotonic()
        with pytest.raises(SchedulerTimeout):
            t.run(["sh", "-c", f"sleep 2; cat {path}"], timeout=1, private=True)
        while time.monotonic() < started + 6 and not late():
            time.sleep(0.2)
        assert late(), "the script's late frame never arrived (the test would prove nothing)"
        # Deleted at about started + 1 s (the timeout) + 6 s (expiry) + 1 s (grace).
        while time.monotonic() < started + 20 and late():
            time.sleep(0.2)
        assert not late()
    finally:
        t.close()


# -- private runs: no thread per failed run ------------------------------------------------
def _clean_up_threads() -> list:
    """Threads waiting to delete private frames: timers (one per failed run, before) or the
    transport's shared clean-up worker. (Counted by kind: the double and moto start and end
    threads of their own all the time.)"""
    return [t for t in threading.enumerate()
            if isinstance(t, threading.Timer) or t.name == "gw-ssm-cleanup"]


def test_failed_private_runs_do_not_start_a_thread_each(ssm_double, s3):
    """A private run that failed after SendCommand may have gone out must delete its frame
    again later: one shared worker does that, not a timer thread per run (an outage would
    pile them up). A SendCommand refused outright needs no late delete at all."""
    refused = make_transport(ssm_double.transport_options(
        instance_id="i-00000000000000000", output_bucket=OUTPUT_BUCKET, s3_endpoint_url=s3.url))
    lost = make_transport(ssm_double.transport_options(
        output_bucket=OUTPUT_BUCKET, output_prefix="gw-lost", s3_endpoint_url=s3.url))
    before = len(_clean_up_threads())
    for _ in range(20):
        with pytest.raises(SchedulerUnavailable):
            refused.run(["cat", "/nonexistent"], private=True, timeout=5)
    assert len(_clean_up_threads()) == before
    runs = len(ssm_double.invocations)
    ssm_double.lose_answers(10, "SendCommand")
    try:
        for _ in range(10):
            with pytest.raises(SchedulerTimeout):
                lost.run(["cat", "/nonexistent"], private=True, timeout=5)
    finally:
        ssm_double.lose_answers(0)
    assert len(_clean_up_threads()) <= 1
    # The lost runs' scripts still put their frames; the late deletes come 45 s from now:
    # remove them here, so that other tests do not find them in the bucket.
    for inv in list(ssm_double.invocations.values())[runs:]:
        inv.done.wait(10)
    client = s3.client()
    for key in _bucket_keys(s3):
        if key.startswith("gw-lost/"):
            client.delete_object(Bucket=OUTPUT_BUCKET, Key=key)


# A read (retry_safe) may run twice: a lost answer is sent again, and its last failure is
# what it is (504 for an endpoint that does not answer in time, 503 otherwise), never "may
# or may not run".
@pytest.mark.parametrize("error, raised", [
    (ConnectionClosedError(endpoint_url="http://ssm"), SchedulerUnavailable),
    (ReadTimeoutError(endpoint_url="http://ssm"), SchedulerTimeout),
    (_client_error("InternalServerError", 500), SchedulerUnavailable)], ids=lambda e: type(e).__name__)
def test_a_read_whose_send_answer_is_lost_is_sent_again(monkeypatch, error, raised):
    fake = _FakeSsm(send=[error, {"Command": {"CommandId": "c" * 36}}], poll=[_OK_INVOCATION])
    t = _faked(monkeypatch, fake)
    assert t.run(["squeue"], timeout=10, retry_safe=True).stdout == b"hi"
    assert fake.calls["SendCommand"] == 2
    fake = _FakeSsm(send=[error])
    t = _faked(monkeypatch, fake)
    with pytest.raises(raised) as info:
        t.run(["squeue"], timeout=10, retry_safe=True)
    assert fake.calls["SendCommand"] == t.max_attempts
    assert "may or may not" not in info.value.msg


def test_a_private_read_without_an_output_bucket_is_not_sent_again(monkeypatch):
    """No output_bucket: the private output stays in SSM's command history (a warning says
    so at the first such run); a copy sent again after a lost answer would put it there
    twice. Sent once; its outcome is unknown (504)."""
    fake = _FakeSsm(send=[ReadTimeoutError(endpoint_url="http://ssm"), {"Command": {"CommandId": "c" * 36}}],
                    poll=[_OK_INVOCATION])
    t = _faked(monkeypatch, fake)
    assert not t.output_bucket
    with pytest.raises(SchedulerTimeout) as info:
        t.run(["cat", "--", "/home/u/.vnc/session"], timeout=10, private=True, retry_safe=True)
    assert fake.calls["SendCommand"] == 1
    assert "may or may not" in info.value.msg


def test_a_private_read_whose_send_answer_is_lost_is_not_sent_again(ssm, ssm_double, s3, tmp_path):
    """A read may be sent again, but not one with private output: every copy would PUT its
    frame to the one presigned URL, and a copy that lost the race fails, or puts the secret
    after the read deleted it. It is sent once, and the outcome is unknown (504)."""
    path = tmp_path / "s"
    path.write_bytes(b"secret")
    sent = ssm_double.requests["SendCommand"]
    ssm_double.lose_answers(3, "SendCommand")
    try:
        with pytest.raises(SchedulerTimeout):
            ssm.run(["cat", "--", str(path)], private=True, retry_safe=True)
    finally:
        ssm_double.lose_answers(0)
    assert ssm_double.requests["SendCommand"] - sent == 1
    # Not private, the same lost answer is sent again and answered.
    ssm_double.lose_answers(1, "SendCommand")
    try:
        assert ssm.run(["cat", "--", str(path)], retry_safe=True).stdout == b"secret"
    finally:
        ssm_double.lose_answers(0)
