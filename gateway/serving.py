"""How gunicorn serves the gateway (deploy/gunicorn.conf.py installs both parts).

1. :class:`GatewayWorker`, gunicorn's gthread worker with deadlines on slow clients, and
   finished connections closed off the worker's main loop.
2. :class:`OneWriteResponse`, headers and body in one write.

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
  408 (:class:`~gateway.errors.ClientTimeout`); a stalled reader loses its connection, and
  a download's ``dd`` ends with the response (``close()``). A slow client that keeps going
  is never cut: the clock restarts with each piece.

**Closing.** gthread closes a connection that is done (``Connection: close``, an error, a
client gone) on the worker's main loop, and waits there up to 2 s for the client's FIN
(``util.close_graceful``): meanwhile the worker accepts nothing and hands no kept-alive
connection to a thread. :class:`GatewayWorker` closes it in the request's thread instead.

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

import socket
import ssl
import struct
import threading
import time

from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.workers.gthread import ThreadWorker

from .errors import ClientTimeout

# What a read or write past client_io_timeout raises: BlockingIOError past the kernel's
# SO_RCVTIMEO/SO_SNDTIMEO, TimeoutError past a TLS socket's Python timeout (the SSL "want"
# errors for completeness).
STALLED = (BlockingIOError, TimeoutError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


def _set_timeo(sock, option: int, seconds: float) -> None:
    """The kernel's per-read (SO_RCVTIMEO) or per-write (SO_SNDTIMEO) timeout; 0 = none."""
    whole = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, option, struct.pack("ll", whole, int((seconds - whole) * 1e6)))


class _Arrival:
    """One connection's header deadline (its own object: a kept-alive connection re-arms)."""
    __slots__ = ("deadline", "conn")

    def __init__(self, deadline: float, conn):
        self.deadline, self.conn = deadline, conn


class _ClientInput:
    """``wsgi.input`` whose stalled reads (client_io_timeout) are a 408, not an OSError."""

    def __init__(self, body, seconds: float):
        self._body, self._seconds = body, seconds

    def _stalled(self):
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
    """gthread with deadlines on slow clients (the module's docstring says which and why).

    deploy/gunicorn.conf.py sets the two class attributes from gateway.yaml before the
    workers fork; tests/deploy/test_slow_clients.py runs it against stalled clients."""

    header_timeout = 30.0
    io_timeout = 60.0

    def init_process(self):
        self._arriving: dict[_Arrival, bool] = {}     # connections whose request is not in yet
        threading.Thread(target=self._watch, name="hpcgw-header-deadlines", daemon=True).start()
        super().init_process()           # runs the worker's loop: it returns when the worker ends

    def load_wsgi(self):
        super().load_wsgi()
        app, seconds = self.wsgi, self.io_timeout

        def with_client_input(environ, start_response):
            if environ.get("CONTENT_LENGTH") or environ.get("HTTP_TRANSFER_ENCODING"):
                environ["wsgi.input"] = _ClientInput(environ["wsgi.input"], seconds)
            return app(environ, start_response)
        self.wsgi = with_client_input

    # -------------------------------------------------------------- header deadline
    def _watch(self) -> None:
        tick = min(1.0, self.header_timeout / 4)
        while True:
            time.sleep(tick)
            now = time.monotonic()
            for arrival in list(self._arriving):
                # pop() decides between this thread and the request's: only one gets it.
                if arrival.deadline <= now and self._arriving.pop(arrival, False):
                    self.log.info("%s sent no complete request in %g s (client_header_timeout): "
                                  "connection closed", _peer(arrival.conn.client), self.header_timeout)
                    try:      # the socket's own shutdown, also under TLS: the reader sees EOF
                        socket.socket.shutdown(arrival.conn.sock, socket.SHUT_RDWR)
                    except OSError:
                        pass

    def handle(self, conn):
        if not getattr(conn, "hpcgw_timeouts", False):
            _set_timeo(conn.sock, socket.SO_SNDTIMEO, self.io_timeout)
            conn.hpcgw_timeouts = True
        arrival = conn.hpcgw_arrival = _Arrival(time.monotonic() + self.header_timeout, conn)
        self._arriving[arrival] = True
        try:
            keep = super().handle(conn)
        finally:
            self._arriving.pop(arrival, None)
        if keep is False:
            # gthread closes a finished connection on the worker's main loop, and its graceful
            # close waits up to 2 s for the client's FIN: every thread's next request waits
            # with it (measured: 1.7 s for another client's /health after one client sent
            # "Connection: close" and kept its socket open). Closed here, only this thread waits;
            # gthread's own close then finds the socket closed.
            conn.close(graceful=True)
        return keep

    def _arrived(self, conn) -> None:
        self._arriving.pop(conn.hpcgw_arrival, None)

    def handle_http2(self, conn):             # HTTP/2 (not enabled by deploy/gunicorn.conf.py)
        self._arrived(conn)
        return super().handle_http2(conn)

    def handle_h2c_upgrade(self, conn, req, settings):
        self._arrived(conn)
        return super().handle_h2c_upgrade(conn, req, settings)

    # -------------------------------------------------------------- body and answer
    def handle_request(self, req, conn):
        self._arrived(conn)                   # the request is in: from here the app's time
        # Under TLS the kernel's timeouts do not help: _ssl retries a read or write that the
        # kernel timed out for as long as the socket is blocking. There, Python's own timeout.
        tls = isinstance(conn.sock, ssl.SSLSocket)
        try:
            if tls:
                conn.sock.settimeout(self.io_timeout)
            else:
                _set_timeo(conn.sock, socket.SO_RCVTIMEO, self.io_timeout)
            return super().handle_request(req, conn)
        except STALLED:
            # Reset, not a graceful close: the client reads nothing, and the unsent answer
            # in the kernel's buffer is dropped at once.
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.sock.close()
            self.log.info("%s %s %s: the client took nothing of the answer for %g s (client_io_timeout): "
                          "connection closed", _peer(conn.client), req.method, req.path, self.io_timeout)
            return False
        finally:
            try:        # the next request's head: the watcher's deadline only
                if tls:
                    conn.sock.settimeout(None)
                else:
                    _set_timeo(conn.sock, socket.SO_RCVTIMEO, 0)
            except OSError:
                pass


def _peer(client) -> str:
    return f"{client[0]}:{client[1]}" if isinstance(client, tuple) and len(client) >= 2 else str(client)


class OneWriteResponse(wsgi.Response):
    _pending = b""          # the header block, not sent yet
    _headers_now = False    # sendfile() writes to the socket itself: headers go first

    def send_headers(self):
        if self.headers_sent:
            return
        if self._headers_now or self.chunked:
            super().send_headers()
            return
        lines = self.default_headers()
        lines.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        self._pending = util.to_bytestring("%s\r\n" % "".join(lines), "latin-1")
        self.headers_sent = True

    def _flush_headers(self):
        if self._pending:
            pending, self._pending = self._pending, b""
            self.sock.sendall(pending)

    def _emit_body(self, data):
        if self._pending:
            pending, self._pending = self._pending, b""
            self.sock.sendall(pending + data)    # never chunked: chunked headers went already
            return
        super()._emit_body(data)

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
        super().close()


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
