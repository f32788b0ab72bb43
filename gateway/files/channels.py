"""How file bytes travel between the gateway and the cluster, as the user.

- :class:`PipeChannel` (local and SSH transports): the tool's stdin/stdout *is* the stream.
  An upload is the request body piped, chunk by chunk, into ``dd of=<temp> conv=excl,fsync``;
  a download is ``dd``'s (or ``tar``'s) stdout piped, chunk by chunk, into the response.
  Nothing larger than one chunk is ever held in memory.
- :class:`S3Channel` (SSM transport): a Run Command cannot carry large data, so bytes move
  through an S3 bucket. An upload streams the body into an S3 object (multipart, one part
  in memory at a time) and then, on the cluster, ``curl`` as the user fetches it with a
  presigned GET into the temporary file; a download has ``curl`` as the user PUT the file
  to a presigned URL, then streams the object (with the requested Range) to the client.
  Presigned URLs reach curl on stdin (``--config -``), never on a command line, and expire
  with ``transfer_timeout``; a PUT's is signed with ``If-None-Match: *`` (first write wins,
  see commands.PUT_ONCE); the staging object is deleted as soon as the transfer ends.
  Small reads (``inline_max_bytes``) skip the staging object and come back in the command's
  own output, as private output (through a presigned PUT to the transport's output bucket,
  never in SSM's history).

Both run every command through the plugin's transport as the user, so Unix permissions on
the cluster decide what may be read or written.
"""
from __future__ import annotations

import hashlib
import logging
import os
import select
import signal
import subprocess
import tempfile
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import ClassVar, TypeVar

from werkzeug.wsgi import ClosingIterator

from ..errors import GatewayError, NotImplementedByPlugin, SchedulerTimeout
from ..transports import CommandResult, Transport
from . import commands
from .parse import error_for

log = logging.getLogger(__name__)
T = TypeVar("T")


class Transfer:
    """What an upload produced: bytes written and their sha256 (computed by the gateway)."""

    def __init__(self, size: int, sha256: str):
        self.size, self.sha256 = size, sha256


class Channel:
    """Runs the user's file commands through a transport; subclasses move the bulk bytes."""

    def __init__(self, transport: Transport, as_user: str | None, settings: dict):
        self.transport = transport
        self.as_user = as_user
        self.settings = settings
        self.timeout = float(settings["command_timeout"])
        self.transfer_timeout = float(settings["transfer_timeout"])
        self.chunk = int(settings["chunk_bytes"])

    def run(self, argv: list[str], *, stdin: bytes | None = None,
            timeout: float | None = None, private: bool = False) -> CommandResult:
        """``private``: the output is a file's content, kept out of a transport's history
        (SSM's); passed on only when asked, as a plugin's own transport may not take it."""
        return self.transport.run(argv, stdin=stdin, as_user=self.as_user,
                                  timeout=self.timeout if timeout is None else timeout,
                                  **({"private": True} if private else {}))

    def check(self, argv: list[str], what: str, path: str, **kw) -> CommandResult:
        result = self.run(argv, **kw)
        if result.returncode != 0:
            raise error_for(result.stderr, what, path, self.as_user)
        return result

    def scan(self, argv: list[str], consume: Callable[[Iterator[bytes]], T]) -> tuple[T, CommandResult]:
        """Run ``argv`` and give its stdout to ``consume`` (an iterator of chunks); return what
        ``consume`` returned and the command's result (its stdout left empty when streamed).

        Here the output arrives whole (the SSM transport brings it back from S3 in one piece);
        :class:`PipeChannel` streams it, so ``consume`` may keep less than the output."""
        result = self.run(argv)
        return consume(iter((result.stdout,))), result

    def quietly_remove(self, path: str, *, tree: bool = False) -> None:
        """Remove a temporary file (or, with ``tree``, a temporary directory and what it holds);
        never raises (the caller is already handling an error)."""
        try:
            result = self.run(commands.remove(path, force=True, tree=tree))
            if result.returncode != 0:
                log.warning("cannot remove %s as %s: %s", path, self.as_user, result.err.strip()[-300:])
        except Exception as exc:  # noqa: BLE001 - best effort while another error is handled
            log.warning("cannot remove %s as %s: %s", path, self.as_user, exc)

    # Implemented by subclasses.
    def write_new(self, path: str, source: Iterable[bytes]) -> Transfer:
        raise NotImplementedError

    def read(self, path: str, offset: int, length: int) -> Iterator[bytes]:
        raise NotImplementedError

    def tar(self, parent: str, name: str) -> tuple[Iterator[bytes], int | None]:
        raise NotImplementedError


def make_channel(transport: Transport, as_user: str | None, settings: dict) -> Channel:
    if callable(getattr(transport, "popen", None)):
        return PipeChannel(transport, as_user, settings)
    if getattr(transport, "name", "") == "ssm":
        return S3Channel(transport, as_user, settings)
    raise NotImplementedByPlugin(f"the {getattr(transport, 'name', '?')} transport cannot move files")


# ---------------------------------------------------------------- local and SSH: pipes
def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _close(*files) -> None:
    for fh in files:
        if fh is not None:
            try:
                fh.close()
            except OSError:
                pass


def _deadline(proc: subprocess.Popen, seconds: float) -> tuple[threading.Timer, threading.Event]:
    """A started timer that kills ``proc``'s process group after ``seconds`` (cancel it when
    done), and the event it sets first, telling a read that ended why it did."""
    expired = threading.Event()

    def expire():
        expired.set()
        _kill(proc)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer, expired


def _read_within(fd: int, size: int, seconds: float) -> bytes | None:
    """What the pipe ``fd`` has (at most ``size`` bytes; b"" at its end), as soon as it has
    something; None when nothing came for ``seconds``."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if not poller.poll(seconds * 1000):
        return None
    return os.read(fd, size)


def _write_within(fd: int, data: bytes, seconds: float) -> bool:
    """Write all of ``data`` to the non-blocking pipe ``fd``; False when no byte could go for
    ``seconds`` (the reader is stuck). A reader gone raises BrokenPipeError, as a write does."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
            continue
        except BlockingIOError:
            pass
        if not poller.poll(seconds * 1000):
            return False
    return True


def _end(proc: subprocess.Popen, errfile) -> None:
    """Kill and reap a streaming tool (its whole process group) and close its pipe."""
    _kill(proc)
    _close(proc.stdout, errfile)


class PipeChannel(Channel):
    def _spawn(self, argv, *, stdin, stdout, timeout=None):
        # stderr goes to an anonymous file: a chatty tool can never block on a full pipe.
        errfile = tempfile.TemporaryFile()  # noqa: SIM115 - closed with the process
        proc = self.transport.popen(argv, as_user=self.as_user, stdin=stdin, stdout=stdout, stderr=errfile,
                                    timeout=self.transfer_timeout if timeout is None else timeout)
        return proc, errfile

    def _ended(self, proc, errfile) -> tuple[bytes, GatewayError | None]:
        """A finished tool's stderr, and the 503 it means if the transport could not connect
        (ssh's exit code 255 with its own words), as Channel.run would have raised."""
        errfile.seek(0)
        stderr = errfile.read(64 * 1024)
        conn = getattr(self.transport, "connection_error", None)
        return stderr, (conn(proc.returncode, stderr) if callable(conn) else None)

    def _failure(self, proc, errfile, what: str, path: str) -> GatewayError:
        stderr, error = self._ended(proc, errfile)
        return error or error_for(stderr, what, path, self.as_user)

    def write_new(self, path, source):
        proc, errfile = self._spawn(commands.write_new(path, self.chunk), stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL)
        digest, size = hashlib.sha256(), 0
        fd = proc.stdin.fileno()
        os.set_blocking(fd, False)
        try:
            try:
                for chunk in source:
                    digest.update(chunk)
                    size += len(chunk)
                    # A tool stuck in its write (a hung mount) must not hold the thread for ever.
                    if not _write_within(fd, chunk, self.timeout):
                        raise SchedulerTimeout(f"writing {path}: no progress for {self.timeout:g} s")
            except BrokenPipeError:
                pass                    # dd is gone: its exit code and stderr say why
            _close(proc.stdin)
            try:
                proc.wait(timeout=self.transfer_timeout)
            except subprocess.TimeoutExpired:
                raise SchedulerTimeout(f"writing {path} did not finish within {self.transfer_timeout:g} s")
            if proc.returncode != 0:
                raise self._failure(proc, errfile, "write", path)
            return Transfer(size, digest.hexdigest())
        except BaseException:
            # The client went away or the limit was hit: end dd cleanly (EOF) so that it has
            # closed the file before the caller removes it; kill it if it will not stop.
            _close(proc.stdin)
            try:
                proc.wait(timeout=min(self.timeout, 30))
            except subprocess.TimeoutExpired:
                _kill(proc)
            raise
        finally:
            _close(errfile)

    def scan(self, argv, consume):
        proc, errfile = self._spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, timeout=self.timeout)
        # command_timeout bounds the whole command, as Channel.run's does: a timer ends the
        # tool's process group (sudo, ssh and the tool), and the read below sees EOF.
        timer, expired = _deadline(proc, self.timeout)
        try:
            try:
                value = consume(iter(lambda: proc.stdout.read(self.chunk), b""))
                proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                expired.set()
            finally:
                timer.cancel()
                if expired.is_set() or proc.returncode is None:
                    _kill(proc)
                _close(proc.stdout)
            if expired.is_set():
                raise SchedulerTimeout(f"{os.path.basename(argv[0])} did not answer within {self.timeout:g} s")
            stderr, error = self._ended(proc, errfile)
            if error is not None:
                raise error
            return value, CommandResult(proc.returncode, b"", stderr)
        finally:
            _close(errfile)

    def _stream(self, argv, what: str, path: str) -> Iterator[bytes]:
        """Start ``argv``; the first chunk is read before returning, so that a command that
        fails at once (permission denied) becomes an error response, not an empty 200."""
        proc, errfile = self._spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        # Every read waits at most command_timeout for a byte: a FIFO put in the file's place
        # after the check (dd then waits in open for a writer) or a hung mount held the thread
        # for ever. A poll, not a timer that kills the tool: a tool in uninterruptible sleep
        # (hard NFS mount) does not die, and a blocked read would wait for it.
        try:
            first = _read_within(proc.stdout.fileno(), self.chunk, self.timeout)
            if first is None:
                raise SchedulerTimeout(f"{what} {path}: no data within {self.timeout:g} s")
            if not first:
                proc.wait(timeout=self.timeout)
                if proc.returncode != 0:
                    raise self._failure(proc, errfile, what, path)
        except BaseException:
            _end(proc, errfile)
            raise
        rest = self._rest(proc, errfile, first, what, path)
        # Runs once: when the response is closed (finished, client gone, never started: HEAD)
        # or, failing that, when the iterator is dropped unclosed (garbage-collected). Without
        # the latter, subprocess would keep a still-running Popen alive (Popen.__del__) with
        # its stdout open, and the tool would block on the full pipe until transfer_timeout
        # (ssh) or forever (local).
        end = weakref.finalize(rest, _end, proc, errfile)
        return ClosingIterator(rest, [end])

    def _rest(self, proc, errfile, first, what, path):
        if not first:
            return
        yield first
        while True:
            chunk = _read_within(proc.stdout.fileno(), self.chunk, self.timeout)
            if chunk is None:
                # Too late for an error status. Raising (not returning) makes the server drop
                # the connection: an archive is sent chunked, and a clean end of it would look
                # like a whole .tar.gz. The response's close ends the tool (_end).
                log.warning("%s %s: no data for %g s, ended", what, path, self.timeout)
                raise SchedulerTimeout(f"{what} {path}: no data for {self.timeout:g} s")
            if not chunk:
                break
            yield chunk
        try:
            proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            return
        if proc.returncode != 0:
            # Too late for an error status: the client sees a short body (Content-Length).
            log.warning("%s %s ended with exit code %s: %s", what, path, proc.returncode,
                        self._failure(proc, errfile, what, path).msg)

    def read(self, path, offset, length):
        if length <= 0:
            return iter(())
        return self._stream(commands.read(path, offset, length, self.chunk), "read", path)

    def tar(self, parent, name):
        return self._stream(commands.tar_gz(parent, name), "archive", f"{parent}/{name}"), None


# ---------------------------------------------------------------- SSM: through S3
def _end_object(body, delete, key: str) -> None:
    try:
        body.close()
    finally:
        delete(key)


class S3Channel(Channel):
    PART = 8 * 1024 * 1024           # S3's minimum part is 5 MiB (but the last)

    def __init__(self, transport, as_user, settings):
        super().__init__(transport, as_user, settings)
        staging = settings["staging"]
        self.bucket = staging["bucket"] or getattr(transport, "output_bucket", None)
        if not self.bucket:
            raise NotImplementedByPlugin(
                "files over SSM travel through S3: set files.staging.bucket (or the ssm "
                "transport's output_bucket) in the gateway's configuration")
        self.prefix = (staging["prefix"] or "").strip("/")
        self.endpoint_url = staging["endpoint_url"] or getattr(transport, "s3_endpoint_url", None)
        self.region = (staging["region"] or getattr(transport, "output_region", None)
                       or getattr(transport, "region", None))
        self.profile = getattr(transport, "profile", None)
        self.inline_max = int(settings["inline_max_bytes"])

    # boto3 clients are thread-safe; one per (endpoint, region, profile, limits) and process.
    _clients: ClassVar[dict] = {}

    #: Attempts in all for one S3 call (botocore retries a transient failure once).
    S3_ATTEMPTS = 2

    def _s3_limits(self) -> tuple[float, float]:
        """(connect, read) timeouts of the S3 client, from ``command_timeout``.

        One S3 call answers in well under a second; a silent endpoint must not hold the
        request longer than a command may (botocore's defaults, 60 s x 3 attempts, held it
        for minutes). Capped at botocore's own 60 s for a long ``command_timeout``; bodies
        stream chunk by chunk, so the read timeout bounds the wait for each chunk, not a
        whole transfer.
        """
        read = min(self.timeout, 60.0)
        return min(5.0, read), read

    @property
    def s3(self):
        connect_timeout, read_timeout = self._s3_limits()
        key = (self.endpoint_url, self.region, self.profile, connect_timeout, read_timeout,
               os.getpid())
        client = S3Channel._clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config
            session = boto3.session.Session(profile_name=self.profile, region_name=self.region)
            config = Config(signature_version="s3v4",
                            retries={"mode": "standard", "total_max_attempts": self.S3_ATTEMPTS},
                            connect_timeout=connect_timeout, read_timeout=read_timeout,
                            s3={"addressing_style": "path"} if self.endpoint_url else None,
                            user_agent_extra="hpc-gateway-files")
            client = session.client("s3", endpoint_url=self.endpoint_url, config=config)
            S3Channel._clients[key] = client
        return client

    def _key(self) -> str:
        name = uuid.uuid4().hex
        return f"{self.prefix}/{name}" if self.prefix else name

    def _url(self, method: str, key: str) -> str:
        """A presigned URL for the command about to be sent. Valid for the whole
        ``transfer_timeout``: SSM may deliver the command late (an agent reconnecting, a
        queue of transfers), and curl's retries are new requests, each checked against the
        expiry. What SSM's history shows can do little: a PUT URL writes only a key still
        free, and a staged upload is deleted as soon as its command ends."""
        params = {"Bucket": self.bucket, "Key": key}
        if method == "put_object":
            params.update(commands.PUT_ONCE_PARAMS)          # first write wins
        return self.s3.generate_presigned_url(method, Params=params,      # SigV4: 7 days at most
                                              ExpiresIn=min(int(self.transfer_timeout) + 60, 604800))

    def _delete(self, key: str) -> None:
        try:
            self.s3.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001 - best effort; a lifecycle rule on the prefix is the backstop
            log.warning("cannot delete staging object s3://%s/%s: %s", self.bucket, key, exc)

    def _s3_error(self, exc: Exception, what: str) -> GatewayError:
        from botocore.exceptions import ReadTimeoutError

        from ..errors import SchedulerUnavailable
        if isinstance(exc, ReadTimeoutError):
            # Connected, but S3 stayed silent past the read timeout: 504, not "unreachable".
            return SchedulerTimeout(f"the S3 staging bucket {self.bucket} did not answer in time "
                                    f"while {what}: {exc}")
        return SchedulerUnavailable(f"the S3 staging bucket {self.bucket} failed while {what}: {exc}")

    def _upload_to_s3(self, key: str, source: Iterable[bytes]) -> Transfer:
        """Stream ``source`` into s3://bucket/key, one part in memory at a time."""
        digest, size = hashlib.sha256(), 0
        buf = bytearray()
        upload_id, parts = None, []
        try:
            for chunk in source:
                digest.update(chunk)
                size += len(chunk)
                buf += chunk
                while len(buf) >= self.PART:
                    if upload_id is None:
                        upload_id = self.s3.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
                    number = len(parts) + 1
                    etag = self.s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                               PartNumber=number, Body=bytes(buf[:self.PART]))["ETag"]
                    parts.append({"ETag": etag, "PartNumber": number})
                    del buf[:self.PART]
            if upload_id is None:
                self.s3.put_object(Bucket=self.bucket, Key=key, Body=bytes(buf))
            else:
                if buf or not parts:
                    number = len(parts) + 1
                    etag = self.s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                               PartNumber=number, Body=bytes(buf))["ETag"]
                    parts.append({"ETag": etag, "PartNumber": number})
                self.s3.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                  MultipartUpload={"Parts": parts})
        except BaseException as exc:
            if upload_id is not None:
                try:
                    self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                except Exception as abort_error:  # noqa: BLE001 - the original error matters more
                    log.warning("cannot abort multipart upload of %s: %s", key, abort_error)
            from botocore.exceptions import BotoCoreError, ClientError
            if isinstance(exc, (BotoCoreError, ClientError)):
                raise self._s3_error(exc, "receiving the upload") from exc
            raise
        return Transfer(size, digest.hexdigest())

    def write_new(self, path, source):
        key = self._key()
        try:
            transfer = self._upload_to_s3(key, source)
            fetched = self.check(commands.curl_get(path, self.transfer_timeout), "write", path,
                                 stdin=commands.curl_config(self._url("get_object", key)),
                                 timeout=self.transfer_timeout)
        finally:
            self._delete(key)
        # curl's exit code covers the download; the byte count it reports covers the whole way.
        arrived = fetched.out.strip().rsplit("\n", 1)[-1]
        if arrived != str(transfer.size):
            raise GatewayError(f"writing {path}: {arrived or 'no'} bytes arrived on the cluster, "
                               f"{transfer.size} were sent")
        return transfer

    def _stream_object(self, key: str, offset: int | None = None, length: int | None = None):
        from botocore.exceptions import BotoCoreError, ClientError
        params = {"Bucket": self.bucket, "Key": key}
        if offset is not None and length:
            params["Range"] = f"bytes={offset}-{offset + length - 1}"
        try:
            obj = self.s3.get_object(**params)
        except (BotoCoreError, ClientError) as exc:
            self._delete(key)
            raise self._s3_error(exc, "sending the download") from exc

        chunks = obj["Body"].iter_chunks(self.chunk)
        # Runs once: when the response is closed or, failing that, when the iterator is dropped
        # unclosed (as for the pipes above); else the staging object stays in the bucket.
        end = weakref.finalize(chunks, _end_object, obj["Body"], self._delete, key)
        return ClosingIterator(chunks, [end]), obj.get("ContentLength")

    def _put_from_cluster(self, path: str, what: str, shown: str) -> str:
        key = self._key()
        try:
            self.check(commands.curl_put(path, self.transfer_timeout), what, shown,
                       stdin=commands.curl_config(self._url("put_object", key), [commands.PUT_ONCE]),
                       timeout=self.transfer_timeout)
        except BaseException:
            self._delete(key)
            raise
        return key

    def read(self, path, offset, length):
        if length <= 0:
            return iter(())
        if length <= self.inline_max and getattr(self.transport, "output_bucket", None):
            # In the command's own output, sent through a presigned PUT (private), not kept
            # in SSM's history: a small file is often a secret (a key, a .netrc). Without an
            # output bucket that cannot be done: such reads take the staging path below.
            result = self.check(commands.read(path, offset, length, self.chunk), "read", path, private=True)
            return iter([result.stdout])
        if offset == 0:
            # From the start: the file goes to S3 as it is, the client gets its first bytes.
            key = self._put_from_cluster(path, "read", path)
            stream, _ = self._stream_object(key, 0, length)
            return stream
        # A slice further in (e.g. the new end of a growing output file): cut it out on the
        # cluster first, so that only the slice travels.
        part = self.check(commands.mktemp(), "read", path).out.strip()
        if not part.startswith("/"):
            raise GatewayError(f"mktemp gave no path on the cluster: {part[:200]!r}")
        try:
            self.check(commands.read_into(path, offset, length, self.chunk, part), "read", path,
                       timeout=self.transfer_timeout)
            key = self._put_from_cluster(part, "read", path)
        finally:
            self.quietly_remove(part)
        stream, _ = self._stream_object(key)
        return stream

    def tar(self, parent, name):
        shown = f"{parent}/{name}"
        archive = self.check(commands.mktemp(), "archive", shown).out.strip()
        if not archive.startswith("/"):
            raise GatewayError(f"mktemp gave no path on the cluster: {archive[:200]!r}")
        try:
            result = self.run(commands.tar_gz(parent, name, archive), timeout=self.transfer_timeout)
            if result.returncode not in (0, 1):          # 1: files changed while being read
                if b"Cannot open" not in result.stderr and b"Cannot read" not in result.stderr:
                    raise error_for(result.stderr, "archive", shown, self.as_user)
                # Unreadable entries are left out (as in the pipe channel): log, send the rest.
                log.warning("tar of %s as %s: %s", shown, self.as_user, result.err.strip()[-300:])
            key = self._put_from_cluster(archive, "archive", shown)
        finally:
            self.quietly_remove(archive)
        return self._stream_object(key)

