"""Slow clients against the deployed gunicorn (gateway/serving.py, ``GatewayWorker``).

One worker with 4 threads, ``client_header_timeout`` 2 s and ``client_io_timeout`` 2 s, the
mock backend. Before GatewayWorker, each stalled connection here held one of the 4 threads
for as long as the client kept it open, so four of them left the gateway unable to answer
/health. Each test stalls all 4 threads, or a thread and a body, and checks that the gateway
frees them by the configured deadlines, answers the right status, runs and keeps nothing,
and still serves clients that are slow but keep going.
"""
from __future__ import annotations

import json
import os
import re
import socket
import ssl
import time

import pytest
import requests

from tests.files.test_download_cleanup import gone_within, leftovers

from .servers import PREFIX, wait_until
from .test_gunicorn import _replica

THREADS = 4
HEADER_TIMEOUT = 2
IO_TIMEOUT = 2
# A deadline is kept within the watcher's tick (0.5 s here) and the client's own polling.
SLACK = 3


@pytest.fixture
def gateway(tmp_path, procs, need_gunicorn):
    # One user stalls every thread on purpose here: no per-user share of file operations
    # (here it would be 2 of the 4 threads).
    replica, admin = _replica(procs, tmp_path, {"client_header_timeout": HEADER_TIMEOUT,
                                                "client_io_timeout": IO_TIMEOUT,
                                                "max_file_ops_per_user": 0}, workers=1, threads=THREADS)
    home = tmp_path / "mock" / "home" / "admin"
    home.mkdir(parents=True, exist_ok=True)
    return replica, admin, home


def _connect(replica, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:       # before connect(): a small window, so a reader that stops stalls the server soon
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", replica.port))
    return sock


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server ends the connection within ``within`` s (unread bytes are drained);
    a plain or a TLS socket."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(1 << 20):
                return True
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            return True
        except TimeoutError:
            return False
    return False


def health_answers(replica, within: float = SLACK) -> bool:
    try:
        return requests.get(f"{replica.base}{PREFIX}/health", timeout=within,
                            verify=replica.verify).status_code == 200
    except requests.RequestException:
        return False


def cut(replica, phase: str) -> float:
    """hpcgw_client_timeouts_total{phase=...} on the replica's /metrics."""
    text = requests.get(f"{replica.base}/metrics", timeout=10).text
    found = re.search(rf'^hpcgw_client_timeouts_total{{phase="{phase}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def dd_started(path, count: int, within: float = 15) -> None:
    """Wait until ``count`` downloads of ``path`` have had their dd (each seen alive once:
    the first may already be gone when the last starts)."""
    seen: set[str] = set()

    def enough():
        seen.update(line.split()[0] for line in leftovers(str(path)))
        return len(seen) >= count
    wait_until(enough, within, f"{count} dd reading {path} to start")


def read_slowly(sock, pause: float) -> bytes:
    """Everything until the server closes, 16 KiB at a time with ``pause`` between reads."""
    sock.settimeout(10)
    raw = b""
    while piece := sock.recv(16 * 1024):
        raw += piece
        time.sleep(pause)
    return raw


# A reader at this pace takes 1 MiB in ~2.6 s (64 reads of 16 KiB): longer than
# client_io_timeout for a whole MiB, never that long for one read.
SLOW_PAUSE = 0.04


def read_answer(sock: socket.socket, within: float) -> tuple[int, dict, bytes]:
    """Status, JSON body and head of one HTTP/1.1 answer read from ``sock``."""
    sock.settimeout(within)
    raw = b""
    while b"\r\n\r\n" not in raw:
        piece = sock.recv(65536)
        assert piece, f"the connection ended before an answer: {raw[:300]!r}"
        raw += piece
    head, _, body = raw.partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), json.loads(body), head


def test_unfinished_request_heads_free_every_thread(gateway):
    replica, _, _ = gateway
    stalled = [_connect(replica) for _ in range(THREADS)]
    for sock in stalled:
        sock.sendall(f"GET {PREFIX}/health HTTP/1.1\r\nHost: x\r\n".encode())    # no blank line, ever
    try:
        for sock in stalled:
            assert closed_by_server(sock, HEADER_TIMEOUT + 5 + SLACK), "a stalled request head kept its connection"
        assert health_answers(replica)
        assert cut(replica, "head") == THREADS
    finally:
        for sock in stalled:
            sock.close()


def test_a_trickled_request_head_is_cut_at_the_total_deadline(gateway):
    """A byte every 0.3 s never lets a per-read timeout fire: the deadline is for the whole head."""
    replica, _, _ = gateway
    sock = _connect(replica)
    head = f"GET {PREFIX}/health HTTP/1.1\r\nHost: x\r\nX-Slow: {'a' * 200}\r\n\r\n".encode()
    started = time.monotonic()
    closed_after = None
    try:
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
                break
            sock.settimeout(0.3)
            try:
                if sock.recv(65536) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                pass
        # 67 s of bytes at this pace: the gateway must not have waited for them all.
        assert closed_after is not None, "the whole trickled head was read"
        assert closed_after < HEADER_TIMEOUT + SLACK
    finally:
        sock.close()


def test_a_long_poll_is_not_cut_by_the_header_deadline(gateway):
    """The header deadline ends when the request is in: a poll may wait longer than it."""
    replica, admin, _ = gateway
    job_id = admin.submit(command="true", hold=True)
    started = time.monotonic()
    r = requests.get(f"{replica.base}{PREFIX}/jobs/{job_id}", params={"wait": HEADER_TIMEOUT + IO_TIMEOUT + 1,
                                                                       "since": "HELD"},
                     headers={"Authorization": f"Bearer {admin.token}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["job"]["state"] == "HELD"
    assert time.monotonic() - started >= HEADER_TIMEOUT + IO_TIMEOUT


def test_readers_that_stop_lose_their_connections_and_their_dd(gateway):
    replica, admin, home = gateway
    path = home / "big.bin"
    with open(path, "wb") as fh:
        fh.truncate(256 * 1024 * 1024)          # sparse; far more than the socket buffers hold
    readers = [_connect(replica, rcvbuf=4096) for _ in range(THREADS)]
    try:
        for sock in readers:
            sock.sendall(f"GET {PREFIX}/files/content?path=big.bin HTTP/1.1\r\nHost: x\r\n"
                         f"Authorization: Bearer {admin.token}\r\n\r\n".encode())
        dd_started(path, THREADS)
        # Every thread is now writing to a client that reads nothing.
        assert gone_within(str(path), IO_TIMEOUT + SLACK + 5) == [], "a stalled download kept its dd"
        assert health_answers(replica)
        for sock in readers:
            assert closed_by_server(sock, 10), "a stalled download kept its connection"
        assert cut(replica, "answer") == THREADS
    finally:
        for sock in readers:
            sock.close()
        path.unlink()


def test_a_slow_reader_that_keeps_reading_gets_the_whole_file(gateway):
    """The answer's timeout is per pause of the reader, not for the whole answer."""
    replica, admin, home = gateway
    data = os.urandom(2 * 1024 * 1024)
    (home / "slow.bin").write_bytes(data)
    sock = _connect(replica, rcvbuf=16 * 1024)
    started = time.monotonic()
    try:
        sock.sendall(f"GET {PREFIX}/files/content?path=slow.bin HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: Bearer {admin.token}\r\nConnection: close\r\n\r\n".encode())
        head, _, body = read_slowly(sock, SLOW_PAUSE).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:300]
        assert body == data
        assert time.monotonic() - started > 2 * IO_TIMEOUT, "not slow enough to test anything"
    finally:
        sock.close()


def test_an_upload_that_stops_is_a_408_and_leaves_nothing(gateway):
    replica, admin, home = gateway
    sock = _connect(replica)
    try:
        sock.sendall((f"PUT {PREFIX}/files/content?path=cut.bin HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {admin.token}\r\nContent-Type: application/octet-stream\r\n"
                      f"Content-Length: {8 * 1024 * 1024}\r\n\r\n").encode())
        sock.sendall(b"\xab" * (1024 * 1024))   # an eighth, then nothing
        status, body, head = read_answer(sock, IO_TIMEOUT + SLACK + 5)
        assert status == 408, body
        assert "client_io_timeout" in body["msg"]
        assert b"\r\nConnection: close\r\n" in head, head
        assert cut(replica, "body") == 1
        wait_until(lambda: not os.listdir(home), 10, "the partial upload to be removed")
    finally:
        sock.close()
    r = requests.put(f"{replica.base}{PREFIX}/files/content", params={"path": "after.bin"}, data=b"ok",
                     headers={"Authorization": f"Bearer {admin.token}"}, timeout=10)
    assert r.status_code == 200, r.text


def _jobs(admin) -> int:
    r = admin.get("/jobs")
    assert r.status == 200, r.body
    return r.body["data"]["total"]


def test_a_json_body_that_stops_is_a_408_and_submits_nothing(gateway):
    replica, admin, _ = gateway
    before = _jobs(admin)
    body = json.dumps({"command": "echo should-not-run", "jobName": "stalled-body"}).encode()
    sock = _connect(replica)
    try:
        sock.sendall((f"POST {PREFIX}/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin.token}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                     + body[:len(body) // 2])
        status, answer, _ = read_answer(sock, IO_TIMEOUT + SLACK + 5)
        assert status == 408, answer
    finally:
        sock.close()
    assert _jobs(admin) == before


def test_clients_that_keep_a_closed_connection_open_do_not_stall_the_worker(gateway):
    """gthread's graceful close waits up to 2 s for the client's FIN, on the worker's main
    loop: four such clients held every other request of the worker for ~8 s."""
    replica, _, _ = gateway
    kept = [_connect(replica) for _ in range(THREADS)]
    try:
        for sock in kept:
            sock.sendall(f"GET {PREFIX}/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        for sock in kept:
            status, _, _ = read_answer(sock, 10)       # read, but never close our end
            assert status == 200
        # gthread alone: ~8 s (four 2 s waits one after the other).
        assert health_answers(replica, within=5), "the worker is waiting for the clients' FIN"
    finally:
        for sock in kept:
            sock.close()

