"""How gunicorn serves the gateway (deploy/gunicorn.conf.py installs all three parts).

1. :class:`GatewayWorker`, gunicorn's gthread worker with deadlines on slow clients, and
   finished connections closed without holding up the worker's main loop.
2. :class:`OneWriteResponse`, headers and body in one write.
3. :func:`json_refusals`: what gunicorn refuses itself, before the app sees a request (a
   request line over ``limit_request_line``, too many or too long headers, a malformed
   request), is answered in the API's JSON envelope, not gunicorn's HTML page.

**Slow clients.** gthread waits 5 s for a new connection's first byte, then reads the rest
of the request, and later writes the answer, on a blocking socket without a timeout. So a
client that sends a few bytes of a request line and stops (slowloris), stops sending an
upload's body, or stops reading a download holds one of the worker's threads for as long as
it keeps the connection open. Measured before this worker on 2026-12-06: 4 such
connections, unauthenticated, made a 1-worker, 4-thread gateway unable to answer
``/health``; the deployed default (4 x 32 threads) falls to some 130. NGINX in front
(deploy/nginx/) bounds these itself, but the gateway is also deployed bare, as the seed was.
:class:`GatewayWorker` bounds all three:

- ``client_header_timeout`` (gateway.yaml, 30 s): from the moment a thread takes a connection
  until the request line and headers are in (a TLS handshake included), in total. A
  watcher thread in each worker shuts down a connection past its deadline; the thread that
  was reading it sees the end of the stream and is free.
- ``client_io_timeout`` (60 s): the longest the request's body may stop arriving, or its
  answer stop being taken, in one piece (the kernel's ``SO_RCVTIMEO``/``SO_SNDTIMEO``: no
  extra system call per read or write, unlike a Python socket timeout; under TLS, which
  retries past those, Python's socket timeout). A stalled body is a
  408 (:class:`~gateway.errors.ClientTimeout`, ``Connection: close``); a stalled reader
  loses its connection (a reset), and
  a download's ``dd`` ends with the response (``close()``). A slow client that keeps going
  is never cut: the clock restarts with each piece.

**Closing.** gthread closes a connection that is done (``Connection: close``, an error, a
client gone) on the worker's main loop, and waits there up to 2 s for the client's FIN
(``util.close_graceful``): meanwhile the worker accepts nothing and hands no kept-alive
connection to a thread. :class:`GatewayWorker` sends its FIN the same way and leaves the
wait to the poller (``linger``): the main loop goes on at once. Meanwhile it reads what the
client still sends, up to 16 MiB (gunicorn: 64 KiB), so that a body refused unread (413) is
not answered with a reset while the client, or NGINX, is still writing it.

**One write.** gunicorn's HTTP/1 response sends its header block and then each body chunk, each in a
``sendall`` of its own. For the gateway's answers — a few hundred bytes to a few KB of JSON,
one chunk — that is two system calls and two GIL hand-offs per request, and a window in
which a replica killed between the two leaves NGINX (``proxy_buffering off``) with headers
it has already passed to the client and a body that never comes: the client sees a cut
answer instead of NGINX failing the request over to another replica.

:class:`OneWriteResponse` keeps the header block until the first body bytes and sends both
in one ``sendall``; an answer without body bytes (HEAD, 204, 304, an empty body) sends its
headers when it is closed. Streams (chunked bodies, file downloads by ``sendfile``) still
send their headers first, as gunicorn does.
"""
from __future__ import annotations

import errno
import json
import selectors
import socket
import ssl
import struct
import threading
import time
from collections import deque
from functools import partial

from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.http.body import LengthReader
from gunicorn.workers.gthread import TConn, ThreadWorker

from .errors import ClientTimeout
from .metrics import record_client_timeout

# What a read or write past client_io_timeout raises: BlockingIOError past the kernel's
# SO_RCVTIMEO/SO_SNDTIMEO, TimeoutError past a TLS socket's Python timeout (the SSL "want"
# errors for completeness).
STALLED = (BlockingIOError, TimeoutError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
# _ssl gives one deadline to a whole write: a TLS answer goes out in pieces this large, so the
# timeout is per pause of the reader, not per MiB of a download.
TLS_PIECE = 16 * 1024
# How long a closed connection waits for the client's FIN (as gunicorn's util.close_graceful),
# and how much of what the client still sends it reads meanwhile. gunicorn reads 64 KiB: a
# body refused unread (a 413 over max_body_bytes) is mostly still coming then, and closing
# on unread bytes is a reset. NGINX, which sends a buffered body of up to its
# client_max_body_size (2m) at once, met that reset while writing the body and answered its
# own 502 for the replica's 413, counting it against the replica (max_fails): 1.5 MiB
# bodies took every replica out of the pool (2026-12-07). The poller does this reading,
# not a thread: NGINX's lingering close has no byte cap at all, only time.
LINGER_SECONDS = 2.0
LINGER_BYTES = 16 << 20

# Set by a response whose write to the client stalled: only that is a client's stall (an
# app's own TimeoutError is not, and gthread logs it as before).
_this_request = threading.local()


def _set_timeo(sock, option: int, seconds: float) -> None:
    """The kernel's per-read (SO_RCVTIMEO) or per-write (SO_SNDTIMEO) timeout; 0 = none."""
    whole = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, option, struct.pack("ll", whole, int((seconds - whole) * 1e6)))


def _reset(sock) -> None:
    """Close with a reset: the unsent bytes in the kernel's buffer are dropped at once."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    util.close(sock)


class _Arrival:
    """One request head's deadline (its own object: a kept-alive connection re-arms)."""
    __slots__ = ("deadline", "conn", "done")

    def __init__(self, deadline: float, conn):
        self.deadline, self.conn, self.done = deadline, conn, False


class _Conn(TConn):
    """gthread's connection, closed gracefully without waiting on the worker's main loop."""

    def __init__(self, worker, *args):
        super().__init__(*args)
        self.worker = worker
        self.arrival: _Arrival | None = None

    def close(self, graceful=False):
        if graceful:
            self.worker.linger(self.sock)     # gthread calls this on its main loop only
        else:
            super().close()


class _ClientInput:
    """``wsgi.input`` whose stalled reads (client_io_timeout) are a 408, not an OSError."""

    def __init__(self, body, seconds: float):
        self._body, self._seconds = body, seconds
        self.stalled = False

    def _stalled(self):
        self.stalled = True
        record_client_timeout("body")
        return ClientTimeout(f"no byte of the request body arrived for {self._seconds:g} s "
                             "(client_io_timeout): the request was not carried out")

    def read(self, *args):
        try:
            return self._body.read(*args)
        except STALLED as exc:
            raise self._stalled() from exc

    def readline(self, *args):
        try:
            return self._body.readline(*args)
        except STALLED as exc:
            raise self._stalled() from exc

    def readlines(self, *args):
        try:
            return self._body.readlines(*args)
        except STALLED as exc:
            raise self._stalled() from exc

    def __iter__(self):
        return iter(self.readline, b"")

    def __getattr__(self, name):
        return getattr(self._body, name)


class GatewayWorker(ThreadWorker):
    """gthread with deadlines on slow clients, closing off its main loop (the module's
    docstring says which and why).

    deploy/gunicorn.conf.py sets the two class attributes from gateway.yaml before the
    workers fork; tests/deploy/test_slow_clients.py runs it against stalled clients.
    Written against gunicorn 27's gthread (setup.cfg pins it)."""

    header_timeout = 30.0
    io_timeout = 60.0

    def init_process(self):
        self._arriving: dict[_Arrival, bool] = {}      # request heads not in yet
        self._lingering: deque = deque()               # [deadline, sock, bytes read], by deadline
        threading.Thread(target=self._watch, name="hpcgw-header-deadlines", daemon=True).start()
        super().init_process()           # runs the worker's loop: it returns when the worker ends

    def load_wsgi(self):
        super().load_wsgi()
        app, seconds = self.wsgi, self.io_timeout

        def with_client_input(environ, start_response):
            if not (environ.get("CONTENT_LENGTH") or environ.get("HTTP_TRANSFER_ENCODING")):
                return app(environ, start_response)
            body = environ["wsgi.input"] = _ClientInput(environ["wsgi.input"], seconds)

            def start(status, headers, exc_info=None):
                if body.stalled:         # a 408: say the connection closes (RFC 9110, 15.5.9)
                    getattr(start_response, "__self__", None) and start_response.__self__.force_close()
                return start_response(status, headers, exc_info)
            return app(environ, start)
        self.wsgi = with_client_input

    def accept(self, listener):
        """gthread's accept, with this worker's connection class and the write timeout."""
        try:
            client_sock, client_addr = listener.accept()
            self.nr_conns += 1
            client_sock.setblocking(True)
            try:
                _set_timeo(client_sock, socket.SO_SNDTIMEO, self.io_timeout)
            except OSError:
                pass                       # a connection already gone: its first read says so
            self.enqueue_req(_Conn(self, self.cfg, client_sock, client_addr, listener.getsockname()))
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise

    # -------------------------------------------------------------- header deadline
    def _watch(self) -> None:
        tick = min(1.0, self.header_timeout / 4)
        while True:
            time.sleep(tick)
            try:
                self._cut_late_heads(time.monotonic())
            except Exception:             # never let the deadlines stop silently
                self.log.exception("header deadline watcher")

    def _cut_late_heads(self, now: float) -> None:
        for arrival in list(self._arriving):
            # pop() decides between this thread and the request's: only one gets it, and a
            # request whose arrival is gone is not carried out (handle_request).
            if arrival.deadline > now or not self._arriving.pop(arrival, False):
                continue
            conn = arrival.conn
            if conn is None or arrival.done:
                continue
            try:      # the socket's own shutdown, also under TLS: the reader sees EOF
                socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)
            except OSError as exc:
                if exc.errno == errno.EBADF and not arrival.done:
                    # Between a TLS handshake's detach() and its new socket: next tick.
                    self._arriving[arrival] = True
                continue
            record_client_timeout("head")
            self.log.info("%s sent no complete request in %g s (client_header_timeout): "
                          "connection closed", _peer(conn.client), self.header_timeout)

    def handle(self, conn):
        arrival = conn.arrival = _Arrival(time.monotonic() + self.header_timeout, conn)
        self._arriving[arrival] = True
        try:
            return super().handle(conn)
        finally:
            arrival.done = True
            arrival.conn = None
            self._arriving.pop(arrival, None)

    def _arrived(self, conn) -> bool:
        """The request head is in; False when the watcher cut the connection first."""
        return self._arriving.pop(conn.arrival, None) is not None

    def handle_http2(self, conn):             # HTTP/2 (not enabled by deploy/gunicorn.conf.py)
        self._arrived(conn)
        return super().handle_http2(conn)

    def handle_h2c_upgrade(self, conn, req, settings):
        self._arrived(conn)
        return super().handle_h2c_upgrade(conn, req, settings)

    # -------------------------------------------------------------- body and answer
    def handle_request(self, req, conn):
        if not self._arrived(conn):
            return False                      # past client_header_timeout: the socket is shut
        # Under TLS the kernel's timeouts do not help: _ssl retries a read or write that the
        # kernel timed out for as long as the socket is blocking. There, Python's own timeout.
        tls = isinstance(conn.sock, ssl.SSLSocket)
        # Without a body (every GET) the app reads nothing: no read timeout to set and reset.
        reads = not (isinstance(req.body.reader, LengthReader) and req.body.reader.length == 0)
        _this_request.client_stalled = False
        try:
            if tls:
                conn.sock.settimeout(self.io_timeout)
            elif reads:
                _set_timeo(conn.sock, socket.SO_RCVTIMEO, self.io_timeout)
            return super().handle_request(req, conn)
        except STALLED:
            if not _this_request.client_stalled:
                raise                         # not the client's: gthread's handling, as before
            _reset(conn.sock)
            record_client_timeout("answer")
            self.log.info("%s %s %s: the client took nothing of the answer for %g s (client_io_timeout): "
                          "connection reset", _peer(conn.client), req.method, req.path, self.io_timeout)
            return False
        finally:
            try:        # the next request's head: the watcher's deadline only
                if tls:
                    conn.sock.settimeout(None)
                elif reads:
                    _set_timeo(conn.sock, socket.SO_RCVTIMEO, 0)
            except OSError:
                pass

    # -------------------------------------------------------------- closing
    def linger(self, sock) -> None:
        """gunicorn's close_graceful (FIN, then read until the client's FIN, 2 s at most, so
        that unread bytes do not turn the close into a reset that could cut the answer),
        with the wait on the poller instead of in the main loop. Main loop only."""
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
        except OSError:
            util.close(sock)
            return
        entry = [time.monotonic() + LINGER_SECONDS, sock, 0]
        if self._drained(entry):
            self._close_lingering(entry)
            return
        self.poller.register(sock, selectors.EVENT_READ, partial(self._on_lingering_readable, entry))
        self._lingering.append(entry)
        # Counted as open, as gthread counts the connections it waits for: a stopping worker
        # lets the last answers linger too, and worker_connections bounds them.
        self.nr_conns += 1

    @staticmethod
    def _drained(entry) -> bool:
        """Read what has come; True at the client's FIN, an error, or the cap."""
        try:
            while entry[2] < LINGER_BYTES:
                data = entry[1].recv(65536)
                if not data:
                    return True
                entry[2] += len(data)
        except BlockingIOError:
            return False
        except OSError:
            pass
        return True

    def _close_lingering(self, entry, registered: bool = False) -> None:
        sock, entry[1] = entry[1], None
        if sock is None:
            return
        if registered:
            self.nr_conns -= 1
            try:
                self.poller.unregister(sock)
            except (OSError, KeyError, ValueError):
                pass
        util.close(sock)

    def _on_lingering_readable(self, entry, _sock) -> None:
        if self._drained(entry):
            self._close_lingering(entry, registered=True)

    def murder_keepalived(self, force=False):
        super().murder_keepalived(force)
        now = time.monotonic()
        while self._lingering and (force or self._lingering[0][0] <= now or self._lingering[0][1] is None):
            self._close_lingering(self._lingering.popleft(), registered=True)


def _peer(client) -> str:
    return f"{client[0]}:{client[1]}" if isinstance(client, tuple) and len(client) >= 2 else str(client)


class OneWriteResponse(wsgi.Response):
    _pending = b""          # the header block, not sent yet
    _headers_now = False    # sendfile() writes to the socket itself: headers go first

    def send_headers(self):
        if self.headers_sent:
            return
        if self._headers_now or self.chunked:
            try:
                super().send_headers()
            except STALLED:
                _this_request.client_stalled = True
                raise
            return
        lines = self.default_headers()
        lines.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        self._pending = util.to_bytestring("%s\r\n" % "".join(lines), "latin-1")
        self.headers_sent = True

    def _flush_headers(self):
        if self._pending:
            pending, self._pending = self._pending, b""
            self._put(pending, False)

    def _emit_body(self, data):
        if self._pending:
            pending, self._pending = self._pending, b""
            self._put(pending + data, False)    # never chunked: chunked headers went already
            return
        self._put(data, self.chunked)

    def _put(self, data, chunked: bool) -> None:
        """gunicorn's util.write; under TLS in pieces (TLS_PIECE); a stall is marked as the
        client's (GatewayWorker.handle_request resets the connection)."""
        try:
            if len(data) > TLS_PIECE and isinstance(self.sock, ssl.SSLSocket):
                view = memoryview(data)
                for at in range(0, len(data), TLS_PIECE):
                    util.write(self.sock, view[at:at + TLS_PIECE], chunked)
            else:
                util.write(self.sock, data, chunked)
        except STALLED:
            _this_request.client_stalled = True
            raise

    def sendfile(self, respiter):
        if self.cfg.is_ssl or not self.can_sendfile():
            return False                         # gunicorn writes it: one write still
        self._flush_headers()
        self._headers_now = True
        return super().sendfile(respiter)

    def close(self):
        if not self.headers_sent:
            self.send_headers()
        self._flush_headers()
        try:
            super().close()                      # a chunked answer's last chunk
        except STALLED:
            _this_request.client_stalled = True
            raise


def install() -> bool:
    """Make gunicorn's HTTP/1 workers answer through :class:`OneWriteResponse`.

    ``gunicorn.http.wsgi.create`` builds every HTTP/1 response from the module's
    ``Response`` (HTTP/2 passes its own class). Only on a gunicorn whose Response frames
    body bytes in ``_emit_body`` (27 does): on an older one the body would overtake the
    held headers, so it keeps its own Response and this returns False.
    tests/deploy/test_one_write.py runs requests through ``create`` and fails if gunicorn
    stops building this class or sending one write.
    """
    if not callable(getattr(wsgi.Response, "_emit_body", None)):
        return False
    wsgi.Response = OneWriteResponse
    return True


def refusal(status: int, reason: str, message: str) -> bytes:
    """gunicorn's answer to a request it refused, in the API's envelope (``{msg, data}``),
    as ``gunicorn.util.write_error`` would send it otherwise (same status, ``Connection: close``)."""
    hint = {414: " (bytes in the request line: method, URL-encoded path and query)"}
    words = f"{reason}: {message}" if message else reason
    body = json.dumps({"msg": words + hint.get(status, ""), "data": None}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def _write_refusal(sock, status_int, reason, mesg):
    util.write_nonblock(sock, refusal(int(status_int), reason, mesg))


def json_refusals() -> None:
    """Answer gunicorn's own refusals in the API's JSON envelope.

    gunicorn's worker (``Worker.handle_error``) writes them with ``gunicorn.util.write_error``,
    an HTML page: a client of a JSON API, and the OpenAPI document (whose ``default``
    response is the envelope), expect JSON. Measured before on 2026-12-07: a 8235-byte
    request line got ``414`` ``text/html`` (the fuzz test's finding).
    tests/deploy/test_gunicorn.py sends such requests to a live replica.
    """
    util.write_error = _write_refusal
