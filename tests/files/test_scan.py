"""PipeChannel.scan: a command's stdout handed over as it arrives (directory listings), under
the command timeout. Local transport, as the service account: real processes, no mocks."""
from __future__ import annotations

import subprocess
import time
import tracemalloc

import pytest

from gateway.errors import SchedulerTimeout
from gateway.files.channels import PipeChannel
from gateway.transports.local import LocalTransport
from tests.helpers import in_fresh_interpreter

SETTINGS = {"command_timeout": 30, "transfer_timeout": 60, "chunk_bytes": 1024 * 1024}


def channel(**settings) -> PipeChannel:
    return PipeChannel(LocalTransport(), None, {**SETTINGS, **settings})


def _count(chunks):
    return sum(len(c) for c in chunks)


def _scan_peak():
    tracemalloc.start()
    try:
        total, result = channel().scan(["head", "-c", str(64 * 1024 * 1024), "/dev/zero"], _count)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return total, result.returncode, result.stdout, peak


def test_output_is_handed_over_as_it_arrives():
    """64 MiB of output counted by the consumer without ever being held: the peak is a chunk
    or two, not the output (measured in a fresh interpreter: tests.helpers.in_fresh_interpreter)."""
    total, returncode, stdout, peak = in_fresh_interpreter(_scan_peak)
    assert (total, returncode, stdout) == (64 * 1024 * 1024, 0, b"")
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes"


def test_exit_code_and_stderr_come_back():
    value, result = channel().scan(["find", "/nonexistent-gw-scan", "-maxdepth", "0"], lambda c: b"".join(c))
    assert value == b"" and result.returncode == 1
    assert b"No such file or directory" in result.stderr


def _running(marker: str) -> bool:
    return subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0


def test_a_command_past_its_timeout_is_ended_and_is_a_504():
    """command_timeout bounds the whole command: the tool is killed (not left blocked on its
    pipe) and the caller gets SchedulerTimeout, whether the consumer is waiting for output or
    the tool has gone quiet after some."""
    for argv in (["sleep", "31.4159"], ["sh", "-c", "echo partial; exec sleep 31.4159"]):
        started = time.monotonic()
        with pytest.raises(SchedulerTimeout, match="did not answer within 0.5 s"):
            channel(command_timeout=0.5).scan(argv, lambda chunks: b"".join(chunks))
        assert time.monotonic() - started < 20          # a hang guard, not a speed figure
        assert not _running("sleep 31.4159")


def test_ssh_that_cannot_connect_is_a_503_not_an_empty_listing():
    """Over ssh a refused connection is exit code 255 with ssh's own message: the caller gets
    SchedulerUnavailable, as from Channel.run, not a result to read as "no such directory"."""
    import socket

    from gateway.errors import SchedulerUnavailable
    from gateway.transports.ssh import SshTransport

    with socket.socket() as sock:             # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for persist in (0, 60):
        transport = SshTransport("127.0.0.1", port=port, connect_timeout=2, control_persist=persist)
        try:
            with pytest.raises(SchedulerUnavailable, match="Connection refused|ssh"):
                PipeChannel(transport, None, SETTINGS).scan(["find", "/", "-maxdepth", "0"], lambda c: b"".join(c))
        finally:
            transport.close()


def test_a_download_whose_first_chunk_never_comes_ends_at_the_command_timeout(tmp_path):
    """A FIFO put in a file's place after the gateway's check: dd waits in open() for a writer
    that never comes. Before, the request's thread waited with it for ever (locally)."""
    import os
    fifo = tmp_path / "swapped"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(SchedulerTimeout):
        channel(command_timeout=1).read(str(fifo), 0, 100)
    assert time.monotonic() - t0 < 30          # (the command timeout is 1 s; no writer ever comes)
    assert not [p for p in subprocess.run(["pgrep", "-f", f"if={fifo}"], capture_output=True, text=True)
                .stdout.split()]


def test_a_download_that_stalls_midway_ends_and_frees_its_thread(tmp_path):
    """Data comes, then none (a hung mount): command_timeout after the last byte the download
    stops with an error, after handing over what came, and the tool is ended. Before, the
    thread waited in read() for as long as the tool did."""
    import os
    import threading
    fifo = tmp_path / "stalls"
    os.mkfifo(fifo)
    release = threading.Event()

    def writer():
        with open(fifo, "wb") as out:
            out.write(b"x" * 300_000)
            out.flush()
            release.wait(30)              # holds the FIFO open, writing nothing more

    threading.Thread(target=writer, daemon=True).start()
    t0 = time.monotonic()
    stream = channel(command_timeout=1, chunk_bytes=64 * 1024).read(str(fifo), 0, 10 * 1024 * 1024)
    got = 0
    try:
        # Raised, not a clean end: the server then drops the connection, where a clean end of
        # a chunked answer (an archive) would look complete.
        with pytest.raises(SchedulerTimeout, match="no data for 1 s"):
            for chunk in stream:
                got += len(chunk)
        waited = time.monotonic() - t0
    finally:
        stream.close()
        release.set()
    assert got == 300_000
    assert waited < 15, waited                 # the writer would have held it 30 s
    assert not _running(f"if={fifo}")


def test_an_upload_whose_tool_stops_reading_is_a_504(monkeypatch):
    """The tool writing the upload stops taking data (a hung mount): the write gives up after
    command_timeout without progress, and the tool is ended."""
    from gateway.files import commands
    monkeypatch.setattr(commands, "write_new", lambda path, block: ["sleep", "27.1828"])
    t0 = time.monotonic()
    with pytest.raises(SchedulerTimeout, match="no progress for 1 s"):
        channel(command_timeout=1).write_new("/nonexistent/x", iter([b"y" * (1 << 20)] * 4))
    assert time.monotonic() - t0 < 15          # a hang guard: sleep would hold it 27 s
    assert not _running("sleep 27.1828")


def test_a_download_passes_on_what_the_tool_writes_without_waiting_for_a_whole_chunk():
    """A slow producer (tar on a slow file system): its first bytes go out at once, not when a
    1 MiB chunk is full, which could hold the answer's start past the proxy's read timeout."""
    t0 = time.monotonic()
    stream = channel(command_timeout=10)._stream(["sh", "-c", "printf abc; sleep 3; printf def"], "archive", "/d")
    try:
        chunks = iter(stream)
        assert next(chunks) == b"abc"
        assert time.monotonic() - t0 < 2.5, "waited for more than the tool had written"
        assert b"".join(chunks) == b"def"
    finally:
        stream.close()
