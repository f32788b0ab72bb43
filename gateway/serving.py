"""How gunicorn puts the gateway's answers on the wire (deploy/gunicorn.conf.py installs it).

gunicorn's HTTP/1 response sends its header block and then each body chunk, each in a
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

from gunicorn import util
from gunicorn.http import wsgi


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
