"""One user's file space: path policy plus the file operations, run as that user.

A :class:`FileSpace` is built per request from what the scheduler plugin's optional
``file_transport(user)`` hook returns (the transport and the Unix account to run as, and
optionally the user's home), the ``files`` settings, and the roots the request may use
(the configured ones, plus a job's work dir when the request names a job).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import (
    Conflict,
    Forbidden,
    GatewayError,
    InvalidInput,
    NotImplementedByPlugin,
)
from ..models import User
from ..transports import Transport
from . import commands, paths
from .channels import Channel, make_channel
from .parse import (
    Entry,
    error_for,
    parse_home,
    parse_listing,
    parse_realpaths,
    parse_records,
    parse_sha256,
    significant,
)

log = logging.getLogger(__name__)

HOME_CACHE_SECONDS = 300


@dataclass
class FileAccess:
    """How a user's file operations run: through ``transport``, as ``as_user`` (None: the
    transport's own account, i.e. the service account)."""
    transport: Transport
    as_user: str | None
    home: str | None = None


def file_access(scheduler, user: User) -> FileAccess:
    """Ask the plugin (hook ``file_transport``) how to reach ``user``'s files."""
    if not scheduler.implements("file_transport"):
        raise NotImplementedByPlugin(
            f"the '{scheduler.name}' scheduler backend offers no file access (it does not "
            "implement the file_transport hook)")
    got = scheduler.call("file_transport", user=user)
    if got is None:
        raise NotImplementedByPlugin(f"the '{scheduler.name}' scheduler backend offers no file access")
    if isinstance(got, FileAccess):
        return got
    if isinstance(got, dict):
        return FileAccess(got["transport"], got.get("as_user"), got.get("home"))
    transport, as_user, *rest = got
    return FileAccess(transport, as_user, rest[0] if rest else None)


_homes: dict = {}
_homes_lock = threading.Lock()


class FileSpace:
    def __init__(self, access: FileAccess, settings: dict, user: User, *,
                 extra_roots: Sequence[str] = (), base: str | None = None):
        if access.as_user is not None:
            if not paths.valid_user_name(access.as_user):
                raise Forbidden(f"file operations cannot run as {access.as_user!r}: not a valid Unix user name")
            if access.as_user in settings["deny_users"]:
                raise Forbidden(f"file operations never run as {access.as_user} through the gateway")
        self.access = access
        self.settings = settings
        self.user = user
        self.channel: Channel = make_channel(access.transport, access.as_user, settings)
        self.home = self._home()
        roots = paths.expand_roots(settings["roots"], user.name, self.home)
        for extra in extra_roots:
            extra = paths.normalize(extra)
            if extra.startswith("/") and extra not in roots:
                roots.append(extra)
        self.roots = roots
        self.base = base or self.home or (roots[0] if roots else "/")
        self._real_roots: list[str] | None = None

    # ------------------------------------------------------------ identity
    def _home(self) -> str | None:
        if self.access.home:
            return paths.normalize(self.access.home)
        key = (id(self.access.transport), self.access.as_user, self.user.name)
        now = time.monotonic()
        with _homes_lock:
            cached = _homes.get(key)
        if cached and cached[1] > now:
            return cached[0]
        if not paths.valid_user_name(self.user.name):
            return None
        result = self.channel.run(commands.passwd_entry(self.user.name))
        home = parse_home(result.stdout) if result.returncode == 0 else None
        with _homes_lock:
            _homes[key] = (home, now + HOME_CACHE_SECONDS)
        return home

    def _as_whom(self) -> str:
        return f" (as Unix user {self.access.as_user})" if self.access.as_user else ""

    # ------------------------------------------------------------ paths
    def locate(self, given: str, *, follow_last: bool = True) -> str:
        """The real absolute path ``given`` names, checked against the roots before and after
        resolving symbolic links (as the user). With ``follow_last=False`` the last component
        is kept as named (for writing or deleting a name, not what a link points to)."""
        path = paths.join(self.base, given, self.home)
        paths.refuse_outside(path, self.roots, given)
        if follow_last:
            resolve = path
        else:
            if path in self.roots:
                raise Forbidden(f"{given!r} is the top of your file space: it cannot be replaced or deleted")
            resolve, name = paths.split(path)
            paths.check_name(name)
        result = self.channel.check(commands.realpath([*self.roots, resolve]), "resolve", given)
        resolved = parse_realpaths(result.stdout, len(self.roots) + 1)
        real_roots, real = resolved[:-1], resolved[-1]
        if not (paths.inside_any(real, real_roots) or paths.inside_any(real, self.roots)):
            raise Forbidden(f"{given!r} leads to {real}, outside your file space "
                            f"({', '.join(self.roots)}): symbolic links may not lead out of it")
        if not follow_last:
            real = f"{real.rstrip('/')}/{name}"
        return real

    def _stat(self, path: str, what: str, shown: str) -> Entry:
        result = self.channel.run(commands.stat([path]))
        entries = [e for e in parse_records(result.stdout) if e.depth == 0]
        if not entries:
            raise error_for(result.stderr, what, shown, self.access.as_user)
        return entries[0]

    def _exists(self, path: str) -> Entry | None:
        result = self.channel.run(commands.stat([path]))
        entries = [e for e in parse_records(result.stdout) if e.depth == 0]
        if entries:
            return entries[0]
        if b"No such file or directory" in significant(result.stderr):
            return None
        raise error_for(result.stderr, "look at", path, self.access.as_user)

    # ------------------------------------------------------------ reading
    def stat(self, given: str, *, checksum: bool = False) -> dict:
        real = self.locate(given)
        entry = self._stat(real, "look at", given)
        out = entry.as_dict()
        if checksum:
            if entry.type != "file":
                raise Conflict(f"{given!r} is a {entry.type}: only files have a checksum")
            out["sha256"] = parse_sha256(self.channel.check(
                commands.sha256(real), "read", given, timeout=self.settings["transfer_timeout"]).stdout)
        return out

    def listing(self, given: str) -> dict:
        real = self.locate(given)
        limit = self.settings["max_list_entries"]
        # Read as find writes: however many entries the directory has, only `limit` are kept.
        (top, children, total), result = self.channel.scan(
            commands.stat([real], depth=1), lambda chunks: parse_listing(chunks, limit))
        if top is None:
            raise error_for(result.stderr, "list", given, self.access.as_user)
        if top.type != "directory":
            raise Conflict(f"{given!r} is a {top.type}, not a directory: download it with GET /files/content")
        if result.returncode != 0 and b"Permission denied" in significant(result.stderr):
            raise Forbidden(f"cannot list {given!r}: permission denied{self._as_whom()}")
        return {"path": real, "entries": [e.as_dict() for e in children],
                "total": total, "truncated": total > limit}

    def open_file(self, given: str) -> tuple[str, Entry]:
        real = self.locate(given)
        entry = self._stat(real, "read", given)
        if entry.type == "directory":
            raise Conflict(f"{given!r} is a directory: download it as a tar.gz with GET /files/archive")
        if entry.type != "file":
            raise Conflict(f"{given!r} is a {entry.type}, not a regular file")
        if "r" not in entry.access:
            raise Forbidden(f"cannot read {given!r}: permission denied{self._as_whom()}")
        return real, entry

    def read(self, real: str, offset: int, length: int):
        return self.channel.read(real, offset, length)

    def archive(self, given: str):
        """(directory path, byte iterator, length or None) of a tar.gz of a directory."""
        real = self.locate(given)
        entry = self._stat(real, "archive", given)
        if entry.type != "directory":
            raise Conflict(f"{given!r} is a {entry.type}, not a directory: download it with GET /files/content")
        if "r" not in entry.access or "x" not in entry.access:
            raise Forbidden(f"cannot archive {given!r}: permission denied{self._as_whom()}")
        parent, name = paths.split(real) if real != "/" else ("/", ".")
        stream, length = self.channel.tar(parent, name)
        return real, stream, length

    # ------------------------------------------------------------ writing
    def upload(self, given: str, source: Iterable[bytes], *, overwrite: bool = False,
               mkdirs: bool = False, sha256: str | None = None, mode: str | None = None) -> dict:
        """Write ``source`` to a temporary name beside the target, check it, then rename it."""
        target = self.locate(given, follow_last=False)
        parent, name = paths.split(target)
        if mkdirs:
            self.channel.check(commands.mkdirs(parent), "create the directory", parent)
        # One look at both: the folder must be a directory the user may write into; the
        # target must not be a directory, nor exist unless it may be replaced.
        result = self.channel.run(commands.stat([parent, target]))
        found = {e.path: e for e in parse_records(result.stdout) if e.depth == 0}
        folder, existing = found.get(parent), found.get(target)
        problems = significant(result.stderr)
        if folder is None:
            raise error_for(problems, "write into", parent, self.access.as_user)
        if folder.type != "directory":
            raise Conflict(f"{parent} is a {folder.type}, not a directory")
        if "w" not in folder.access or "x" not in folder.access:
            raise Forbidden(f"cannot write into {parent}: permission denied{self._as_whom()}")
        if existing is None and problems.strip() and b"No such file or directory" not in problems:
            raise error_for(problems, "look at", given, self.access.as_user)
        if existing is not None:
            if existing.type == "directory":
                raise Conflict(f"{given!r} is a directory: give the path of a file in it")
            if not overwrite:
                raise Conflict(f"{given!r} already exists: send overwrite=true to replace it")
        # Without a mode, a replaced file keeps its own (the new one would otherwise get
        # the default 0644: a 0600 key file overwritten became readable to others).
        keep = mode or (existing.mode if existing is not None and existing.type == "file" else None)
        # The temporary file has the default mode (typically 0644) while it is written. When the
        # result is to be less readable than that, it is written inside a new 0700 directory
        # instead: a reader who opened it mid-write would keep reading after the chmod.
        hidden = keep is not None and int(keep, 8) & 0o044 != 0o044
        leftover = f"{parent.rstrip('/')}/{commands.temp_name(name)}"
        temp = f"{leftover}/upload" if hidden else leftover
        try:
            if hidden:
                self.channel.check(commands.private_dir(leftover), "write into", parent)
            transfer = self.channel.write_new(temp, source)
            if sha256 and sha256.lower() != transfer.sha256:
                raise InvalidInput(
                    f"the upload's sha256 is {transfer.sha256}, not the expected {sha256.lower()}: "
                    "the file was not saved", errors={"sha256": ["does not match the uploaded data"]})
            if keep:
                self.channel.check(commands.chmod(keep, temp), "set the mode of", given)
            self._publish(temp, target, given, overwrite)
        except BaseException:
            self.channel.quietly_remove(leftover, tree=hidden)
            raise
        if hidden or not overwrite:
            # ln left the temporary name behind (or mv left the emptied 0700 directory).
            self.channel.quietly_remove(leftover, tree=hidden)
        return {"path": target, "name": name, "size": transfer.size, "sha256": transfer.sha256,
                "replaced": existing is not None}

    def _publish(self, temp: str, target: str, given: str, overwrite: bool) -> None:
        if overwrite:
            self.channel.check(commands.rename_over(temp, target), "write", given)
            return
        linked = self.channel.run(commands.link_new(temp, target))
        if linked.returncode == 0:
            return
        if b"File exists" in linked.stderr:
            raise Conflict(f"{given!r} appeared while uploading: send overwrite=true to replace it")
        # No hard links on this file system: mv -n, then make sure it did move.
        self.channel.check(commands.rename_no_clobber(temp, target), "write", given)
        if self._exists(temp) is not None:
            raise Conflict(f"{given!r} appeared while uploading: send overwrite=true to replace it")

    def delete(self, given: str) -> dict:
        target = self.locate(given, follow_last=False)
        self.channel.check(commands.remove(target), "delete", given)
        return {"path": target, "deleted": True}


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(offset, length) of a single ``Range: bytes=`` request against ``size``; None: whole file.

    Raises RangeNotSatisfiable (416) for a range past the end, and for several ranges.
    """
    if not header:
        return None
    from werkzeug.http import parse_range_header
    rng = parse_range_header(header)
    if rng is None or rng.units != "bytes":
        return None                       # malformed: ignore it, as RFC 9110 allows
    if len(rng.ranges) != 1:
        raise RangeNotSatisfiable("only one byte range per request is supported", size)
    bounds = rng.range_for_length(size)
    if bounds is None:
        raise RangeNotSatisfiable(f"the range is outside the file ({size} bytes)", size)
    start, stop = bounds
    return start, stop - start


class RangeNotSatisfiable(GatewayError):
    status = 416
    default_msg = "Range not satisfiable"

    def __init__(self, msg: str, size: int):
        super().__init__(msg, headers={"Content-Range": f"bytes */{size}"})
