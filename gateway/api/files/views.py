"""Files: upload a job's inputs, list and download its results, in the user's own space and
with the user's own rights.

Every operation runs on the cluster as the authenticated Unix user, through the scheduler
plugin's transport (hook ``file_transport``); the gateway confines paths to the user's roots
(``files.roots``, plus a job's work dir with ``jobId``) and Unix permissions decide the rest.
Uploads and downloads are streams. See docs/files.md.
"""
from __future__ import annotations

from urllib.parse import quote

from flask import Response, request
from flask.views import MethodView
from werkzeug.http import http_date, parse_date, parse_etags

from ...errors import BadRequest, Conflict
from ...files import paths
from ...files.body import MultipartBody, is_multipart, limit_body, raw_chunks
from ...files.service import FileSpace, file_access, parse_range
from ...files.settings import load_files_settings
from ...models import JobQuery
from ..common import Blueprint, current_user, document_errors, ErrorEnvelope, gw, ok
from ..jobs.views import fetch_job
from .schemas import (
    BINARY,
    UPLOAD_BODY,
    VENDOR_UPLOAD_BODY,
    DeleteEnvelope,
    FileEnvelope,
    ListingEnvelope,
    PathQuerySchema,
    RequiredPathQuerySchema,
    StatQuerySchema,
    UploadEnvelope,
    UploadQuerySchema,
    VendorDownloadQuerySchema,
    VendorUploadQuerySchema,
)

blp = Blueprint("files", __name__, url_prefix="",
                description="Files: upload inputs, list and download results, in your own space, "
                            "with your own Unix rights")

ARCHIVE_NAME = "all"


def settings() -> dict:
    state = gw()
    cfg = state.config
    if "files" not in cfg or "max_upload_bytes" not in (cfg.get("files") or {}):
        cfg["files"] = load_files_settings(cfg.get("files"))
    return cfg["files"]


@blp.record_once
def _check_settings(setup_state) -> None:
    """An invalid ``files`` section fails at start-up, not on the first request."""
    state = setup_state.app.extensions.get("hpc_gateway")
    if state is not None and "max_upload_bytes" not in (state.config.get("files") or {}):
        state.config["files"] = load_files_settings(state.config.get("files"))


def file_space(job_id: str | None = None, workdir: str | None = None) -> FileSpace:
    """The caller's file space; with ``job_id`` the job's work dir is its base (and a root)."""
    state = gw()
    user = current_user()
    conf = settings()
    extra, base = [], None
    access = file_access(state.scheduler, user)
    # A job's work dir opens as a root only where file operations run as the user's own Unix
    # account (its permissions still apply). Users sharing one service account would each
    # open any directory (workDir: /) as that account: their roots are the only fence.
    open_work_dirs = conf["job_work_dirs"] and access.as_user is not None and access.as_user == user.name
    if job_id:
        job = fetch_job(user, job_id, control=True, doing="open the files of")
        if not job.work_dir or not job.work_dir.startswith("/"):
            raise Conflict(f"the scheduler reports no work dir for job {job_id}")
        base = paths.normalize(paths.check_text(job.work_dir, "the job's work dir"))
        if open_work_dirs:
            extra.append(base)
    space = FileSpace(access, conf, user, extra_roots=extra, base=base)
    if workdir:
        wanted = paths.join(space.base, workdir, space.home)
        if not paths.inside_any(wanted, space.roots) and open_work_dirs:
            # The vendor's ?workdir= names a job's work dir: open it if one of the user's jobs has it.
            jobs = state.scheduler.call("list_jobs", user=user, query=JobQuery(user=user.name))
            if any(j.user_name == user.name and j.work_dir and j.work_dir.startswith("/")
                   and paths.normalize(j.work_dir) == wanted for j in jobs):
                space.roots.append(wanted)
        paths.refuse_outside(wanted, space.roots, workdir)
        space.base = wanted
    return space


# ------------------------------------------------------------------ responses
def _disposition(name: str) -> str:
    fallback = "".join(c if (32 <= ord(c) < 127 and c not in '"\\') else "_" for c in name) or "download"
    # A name that is not UTF-8 (surrogate-escaped) is sent as its own bytes, percent-encoded.
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name.encode('utf-8', 'surrogateescape'), safe='')}"


def _etag(entry) -> str:
    return f'"{entry.size:x}-{int(entry.mtime.timestamp() * 1_000_000):x}"'


def _range_applies(etag: str, entry) -> bool:
    """If-Range: honour Range only while the file is the one the client saw."""
    cond = request.headers.get("If-Range")
    if not cond:
        return True
    if cond.startswith(('"', 'W/"')):
        return parse_etags(cond).contains(etag.strip('"'))
    when = parse_date(cond)
    return when is not None and int(entry.mtime.timestamp()) <= int(when.timestamp())


def file_response(space: FileSpace, given: str) -> Response:
    real, entry = space.open_file(given)
    etag = _etag(entry)
    span = parse_range(request.headers.get("Range"), entry.size) if _range_applies(etag, entry) else None
    offset, length = span if span is not None else (0, entry.size)
    response = Response(space.read(real, offset, length), status=206 if span else 200,
                        mimetype="application/octet-stream", direct_passthrough=True)
    headers = response.headers
    headers["Content-Length"] = str(length)
    headers["Accept-Ranges"] = "bytes"
    if span is not None:
        headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{entry.size}"
    headers["Content-Disposition"] = _disposition(entry.name)
    headers["Last-Modified"] = http_date(entry.mtime)
    headers["ETag"] = etag
    headers["X-File-Size"] = str(entry.size)
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Cache-Control"] = "private, no-cache"
    return response


def archive_response(space: FileSpace, given: str) -> Response:
    real, stream, length = space.archive(given)
    name = (real.rstrip("/").rsplit("/", 1)[-1] or "root") + ".tar.gz"
    response = Response(stream, mimetype="application/gzip", direct_passthrough=True)
    if length is not None:
        response.headers["Content-Length"] = str(length)
    response.headers["Content-Disposition"] = _disposition(name)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "private, no-cache"
    return response


def open_body(conf: dict) -> MultipartBody | None:
    """Apply the upload size limit; a multipart body is opened up to its file part."""
    limit_body(request, conf["max_upload_bytes"])   # a declared Content-Length over it: 413 here
    return MultipartBody(request, conf["chunk_bytes"]) if is_multipart(request) else None


def receive(space: FileSpace, body: MultipartBody | None, path: str | None, *, overwrite: bool,
            mkdirs: bool = False, sha256: str | None = None, mode: str | None = None) -> dict:
    """Stream the request body (raw, or the multipart file part) into ``path`` as the user."""
    conf = settings()
    if body is not None:
        sha256 = sha256 or body.fields.get("sha256") or None
        if path is None or path.endswith("/") or path in (".", "~"):
            if not body.filename:
                raise BadRequest("the file part has no filename: give the file's path with ?path=")
            name = paths.check_name(body.filename.replace("\\", "/").rsplit("/", 1)[-1], "the part's filename")
            folder = (path or ".").rstrip("/")
            path = f"{folder}/{name}"
        source = body.chunks()
    else:
        if not path or path.endswith("/"):
            raise BadRequest("give the file's path with ?path= (a raw body carries no file name)")
        source = raw_chunks(request, conf["chunk_bytes"])
    return space.upload(path, source, overwrite=overwrite, mkdirs=mkdirs, sha256=sha256, mode=mode)


def upload(args: dict) -> dict:
    body = open_body(settings())
    space = file_space(args.get("job_id"))
    return ok({"file": receive(space, body, args.get("path"), overwrite=args["overwrite"],
                               mkdirs=args["mkdirs"], sha256=args.get("sha256"), mode=args.get("mode"))})


# ------------------------------------------------------------------ routes
@blp.route("/files")
class FileList(MethodView):
    @blp.arguments(PathQuerySchema, location="query")
    @blp.response(200, ListingEnvelope)
    @document_errors(blp, 400, 401, 403, 404, 409, 429, 501, 502, 503, 504)
    def get(self, args):
        """List a directory (name, type, size, mode, mtime, owner, your access)

        Without `path`: your home, or with `jobId` the job's work dir."""
        return ok(file_space(args.get("job_id")).listing(args["path"]))


@blp.route("/files/stat")
class FileStat(MethodView):
    @blp.arguments(StatQuerySchema, location="query")
    @blp.response(200, FileEnvelope)
    @document_errors(blp, 400, 401, 403, 404, 409, 429, 501, 502, 503, 504)
    def get(self, args):
        """Describe one file or directory; `sha256=true` adds the file's checksum"""
        return ok({"file": file_space(args.get("job_id")).stat(args["path"], checksum=args["sha256"])})


@blp.route("/files/content")
class FileContent(MethodView):
    @blp.arguments(RequiredPathQuerySchema, location="query")
    @blp.response(200, BINARY["schema"], content_type="application/octet-stream",
                  description="the file's bytes, streamed")
    @blp.alt_response(206, schema=BINARY["schema"], content_type="application/octet-stream",
                      description="the requested byte range (`Range: bytes=first-last`)")
    @blp.alt_response(416, schema=ErrorEnvelope, description="the range starts at or past the end "
                      "(`Content-Range: bytes */size`): nothing new yet")
    @document_errors(blp, 400, 401, 403, 404, 409, 429, 501, 502, 503, 504)
    def get(self, args):
        """Download a file (streamed; `Range` supported, e.g. to follow a growing output file)

        A `Range` starting at the current size answers 416 with `Content-Range: bytes */size`:
        nothing new yet. `X-File-Size` always gives the size at the time of the request."""
        return file_response(file_space(args.get("job_id")), args["path"])

    @blp.arguments(UploadQuerySchema, location="query")
    @blp.doc(requestBody=UPLOAD_BODY)
    @blp.response(200, UploadEnvelope)
    @document_errors(blp, 400, 401, 403, 404, 408, 409, 413, 422, 429, 501, 502, 503, 504)
    def put(self, args):
        """Upload a file (raw body or multipart), streamed to a temporary name and renamed when complete

        The response carries the sha256 of what was written. With `sha256=` a mismatch is
        refused (422) and nothing is left behind; an interrupted upload leaves nothing under
        the file's name."""
        return upload(args)

    @blp.arguments(UploadQuerySchema, location="query")
    @blp.doc(requestBody=UPLOAD_BODY)
    @blp.response(200, UploadEnvelope)
    @document_errors(blp, 400, 401, 403, 404, 408, 409, 413, 422, 429, 501, 502, 503, 504)
    def post(self, args):
        """Upload a file (as PUT; for clients that only POST forms)"""
        return upload(args)

    @blp.arguments(RequiredPathQuerySchema, location="query")
    @blp.response(200, DeleteEnvelope)
    @document_errors(blp, 400, 401, 403, 404, 409, 429, 501, 502, 503, 504)
    def delete(self, args):
        """Delete a file (a symbolic link itself, not what it points to; never a directory)"""
        return ok({"file": file_space(args.get("job_id")).delete(args["path"])})


@blp.route("/files/archive")
class FileArchive(MethodView):
    @blp.arguments(PathQuerySchema, location="query")
    @blp.response(200, BINARY["schema"], content_type="application/gzip", description="a tar.gz stream of the directory")
    @document_errors(blp, 400, 401, 403, 404, 409, 429, 501, 502, 503, 504)
    def get(self, args):
        """Download a directory as a tar.gz stream (entries you may not read are left out)"""
        return archive_response(file_space(args.get("job_id")), args["path"])


# ------------------------------------------------------------------ the vendor's shapes
@blp.route("/file/upload")
class VendorUpload(MethodView):
    @blp.arguments(VendorUploadQuerySchema, location="query")
    @blp.doc(requestBody=VENDOR_UPLOAD_BODY)
    @blp.response(200, UploadEnvelope)
    @document_errors(blp, 400, 401, 403, 404, 408, 409, 413, 422, 429, 501, 502, 503, 504)
    def post(self, args):
        """Upload a file into your home or a work dir (the vendor's form: multipart, `workdir`)

        The file keeps its filename; an existing file is replaced unless `overwrite=false`."""
        body = open_body(settings())
        if body is None:
            raise BadRequest("send the file as multipart/form-data (e.g. curl -F file=@input.dat), "
                             "or use PUT /files/content for a raw body")
        workdir = args.get("workdir") or body.fields.get("workdir") or None
        space = file_space(args.get("job_id"), workdir)
        return ok({"file": receive(space, body, None, overwrite=args["overwrite"], sha256=args.get("sha256"))})


@blp.route("/file/download/<path:file_name>")
class VendorDownload(MethodView):
    @blp.arguments(VendorDownloadQuerySchema, location="query")
    @blp.response(200, BINARY["schema"], content_type="application/octet-stream",
                  description="the file, or with the name `all` the whole work dir as tar.gz")
    @blp.alt_response(206, schema=BINARY["schema"], content_type="application/octet-stream",
                      description="a file's requested byte range (`Range: bytes=first-last`; not for `all`)")
    @blp.alt_response(416, schema=ErrorEnvelope, description="the range starts at or past the end "
                      "(`Content-Range: bytes */size`): nothing new yet")
    @document_errors(blp, 400, 401, 403, 404, 409, 429, 501, 502, 503, 504)
    def get(self, args, file_name):
        """Download a file of a work dir (the vendor's form); `all` gives the work dir as tar.gz

        A file answers `Range` requests as `GET /files/content` does."""
        space = file_space(args.get("job_id"), args.get("workdir"))
        if file_name == ARCHIVE_NAME:
            return archive_response(space, ".")
        return file_response(space, file_name)
