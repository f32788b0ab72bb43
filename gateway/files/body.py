"""Request bodies of uploads, read as streams: raw bytes, or multipart/form-data parsed
incrementally (werkzeug's sans-IO MultipartDecoder), so no upload is ever held whole in
memory or spooled to the gateway's disk.

The size limit is the ``files.max_upload_bytes`` setting, applied to this request only
(Flask's per-request ``max_content_length``): a declared Content-Length over it is refused
with 413 before a byte is read; a chunked body that grows past it fails with 413 as soon as
it does (and the partial upload is removed).
"""
from __future__ import annotations

from collections.abc import Iterator

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.sansio.multipart import (
    NEED_DATA,
    Data,
    Epilogue,
    Field,
    File,
    MultipartDecoder,
)

from ..errors import BadRequest

MAX_FIELDS_BYTES = 64 * 1024
MAX_FIELDS = 100              # form fields before the file part
# Form fields the gateway reads: sent after the file part they would be ignored (the file has
# gone where the fields before it said), so such a body is refused before the file is kept.
FIELDS_READ = ("workdir", "sha256")


BODY_LIMIT_KEY = "hpcgw.body_limit"        # in the WSGI environ: the limit a 413 names


def limit_body(request, limit: int) -> None:
    """Use ``limit`` (not the JSON body limit) for this request's body.

    werkzeug's stream, under a server that marks its input as terminated (gunicorn), refuses
    the read that would find the end of a body of exactly its limit (the body might go on):
    so it gets one byte more, and a declared Content-Length is checked against ``limit``
    here. A body that really is longer still fails on that byte."""
    request.environ[BODY_LIMIT_KEY] = limit
    if request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge()
    request.max_content_length = limit + 1


def read_chunk(stream, size: int) -> bytes:
    try:
        return stream.read(size)
    except OSError as exc:          # the connection broke (reset, timeout)
        raise BadRequest(f"the upload was interrupted: {exc}") from exc


def raw_chunks(request, chunk: int) -> Iterator[bytes]:
    """The body in pieces; a body shorter than its Content-Length is an interrupted upload.

    (gunicorn marks its input as terminated, so werkzeug does not check the length itself:
    a client that disconnects simply ends the stream early.)"""
    stream = request.stream
    declared = request.content_length
    received = 0
    while True:
        data = read_chunk(stream, chunk)
        if not data:
            break
        received += len(data)
        yield data
    if declared is not None and received < declared:
        raise BadRequest(f"the upload was interrupted: {received} of {declared} bytes arrived")


def is_multipart(request) -> bool:
    return request.mimetype == "multipart/form-data"


class MultipartBody:
    """The form fields sent before the first file part, then that file's bytes as a stream.

    Parts after the file are read and ignored (they count towards the size limit).
    """

    def __init__(self, request, chunk: int):
        boundary = request.mimetype_params.get("boundary")
        if not boundary:
            raise BadRequest("multipart/form-data without a boundary: let your HTTP client build the body")
        self._stream = request.stream
        self._declared = request.content_length
        self._received = 0
        self._chunk = chunk
        # The decoder holds back what it has not matched yet: without a bound, a preamble or a
        # part's headers with no end (300 MiB of "a") would all sit in its buffer. The file's
        # own data passes through it one read at a time, so a read plus the fields' room is plenty.
        self._room = chunk + 2 * MAX_FIELDS_BYTES
        try:
            encoded = boundary.encode("latin-1")
        except UnicodeEncodeError:
            raise BadRequest("multipart/form-data boundary is not ASCII: let your HTTP client build the body") from None
        self._decoder = MultipartDecoder(encoded, max_form_memory_size=self._room)
        self._events = self._read_events()
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.field_name: str | None = None
        self._open()

    def _read_events(self):
        eof = False
        while True:
            try:
                event = self._decoder.next_event()
            except ValueError as exc:
                if eof:
                    raise BadRequest("the multipart body ended before its closing boundary "
                                     "(interrupted upload?)") from exc
                raise BadRequest(f"malformed multipart body: {exc}") from exc
            if event is NEED_DATA:
                if eof:
                    raise BadRequest("the multipart body ended before its closing boundary (interrupted upload?)")
                data = read_chunk(self._stream, self._chunk)
                self._received += len(data)
                if data:
                    try:
                        self._decoder.receive_data(data)
                    except RequestEntityTooLarge:
                        raise BadRequest(f"malformed multipart body: no boundary or end of part headers in "
                                         f"{self._room} bytes") from None
                elif self._declared is not None and self._received < self._declared:
                    raise BadRequest(f"the upload was interrupted: {self._received} of "
                                     f"{self._declared} bytes arrived")
                else:
                    self._decoder.receive_data(None)
                    eof = True
                continue
            yield event
            if isinstance(event, Epilogue):
                return

    def _open(self) -> None:
        name, value, size = None, bytearray(), 0
        for event in self._events:
            if isinstance(event, File):
                self.filename = event.filename or None
                self.field_name = event.name
                return
            if isinstance(event, Field):
                # Names and the parts themselves count too: 300,000 empty fields with distinct
                # names held ~56 MB when only values counted.
                name, value = event.name, bytearray()
                size += len(name.encode("utf-8", "surrogatepass")) + 64
                if size > MAX_FIELDS_BYTES or len(self.fields) >= MAX_FIELDS:
                    raise BadRequest(f"the form fields before the file exceed {MAX_FIELDS} fields "
                                     f"or {MAX_FIELDS_BYTES} bytes")
            elif isinstance(event, Data) and name is not None:
                value += event.data
                size += len(event.data)
                if size > MAX_FIELDS_BYTES:
                    raise BadRequest(f"the form fields before the file exceed {MAX_FIELDS_BYTES} bytes")
                if not event.more_data:
                    self.fields[name] = value.decode("utf-8", "replace")
                    name = None
            elif isinstance(event, Epilogue):
                break
        raise BadRequest("the multipart body has no file part: send the file as a part with a "
                         "filename (e.g. curl -F file=@data.bin)")

    def chunks(self) -> Iterator[bytes]:
        """The file part's bytes; then the rest of the body is drained (BadRequest if it holds
        a field of FIELDS_READ: the caller keeps nothing)."""
        for event in self._events:
            if isinstance(event, Data):
                if event.data:
                    yield event.data
                if not event.more_data:
                    break
        for event in self._events:
            if isinstance(event, Field) and event.name in FIELDS_READ:
                raise BadRequest(f"the form field {event.name!r} came after the file, where it would be "
                                 f"ignored: send it before the file part (curl -F {event.name}=... "
                                 "-F file=@...) or in the query; nothing was saved")
