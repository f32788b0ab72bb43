"""Parsers for the file tools' output and errors (pure)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from ..errors import BadRequest, Conflict, Forbidden, GatewayError, NotFound, SchedulerRefused
from .commands import RECORD_FIELDS

TYPES = {"f": "file", "d": "directory", "l": "symlink", "p": "fifo", "s": "socket",
         "c": "char-device", "b": "block-device", "D": "door"}
TARGET_TYPES = {**TYPES, "N": "missing", "L": "loop", "?": "unknown"}


class InsufficientStorage(GatewayError):
    """The cluster's file system is full, or the user's quota is used up."""
    status = 507
    default_msg = "No space left on the cluster's file system"


@dataclass
class Entry:
    path: str
    name: str
    type: str            # file, directory, symlink, ...
    size: int
    mode: str            # "0644"
    permissions: str     # "-rw-r--r--"
    mtime: datetime
    owner: str
    access: str          # "rw-": what the requesting user may do (readable, writable, executable)
    depth: int = 0
    target_type: str | None = None   # for symlinks: what the link points to

    def as_dict(self) -> dict:
        out = {"name": self.name, "path": self.path, "type": self.type, "size": self.size,
               "mode": self.mode, "permissions": self.permissions, "mtime": self.mtime,
               "owner": self.owner, "access": self.access}
        if self.type == "symlink":
            out["target_type"] = self.target_type
        return out


_LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
_EARLIEST = datetime(1, 1, 1, tzinfo=UTC)


def _when(seconds: float) -> datetime:
    """A modification time, clamped to what datetime holds: a file anyone can `touch -d
    @9000000000000000000` (tmpfs, btrfs) must not make its whole directory unlistable."""
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        if seconds != seconds:                       # NaN
            raise ValueError("not a time") from None
        return _LATEST if seconds > 0 else _EARLIEST


def parse_records(stdout: bytes) -> list[Entry]:
    """find -printf records (see commands.stat), NUL-terminated."""
    entries = []
    for raw in stdout.split(b"\0"):
        if not raw:
            continue
        text = raw.decode("utf-8", "surrogateescape")
        parts = text.split("/", RECORD_FIELDS - 1)
        if len(parts) != RECORD_FIELDS:
            continue
        depth, access, kind, target, size, mode, perms, mtime, owner, path = parts
        try:
            when = _when(float(mtime))
            entries.append(Entry(
                path=path, name=path.rsplit("/", 1)[-1] or "/", type=TYPES.get(kind, "unknown"),
                size=int(size), mode=mode.rjust(4, "0"), permissions=perms, mtime=when, owner=owner,
                access=access, depth=int(depth),
                target_type=TARGET_TYPES.get(target, "unknown") if kind == "l" else None))
        except ValueError:
            continue
    return entries


def parse_listing(chunks: Iterable[bytes], limit: int) -> tuple[Entry | None, list[Entry], int]:
    """A directory's ``find -maxdepth 1`` records (see commands.stat), read as they arrive:
    the directory itself, its first ``limit`` entries by name, and how many it has.

    Only ``limit`` records (twice that between two trims) and one chunk are held at a time,
    and only the entries returned are parsed, so a directory of a million files costs the
    gateway no more memory than one of ``limit``. The order is ``sorted(..., key=name)``'s."""
    limit = max(1, int(limit))
    top: Entry | None = None
    kept: list[tuple[str, bytes]] = []
    total = 0
    rest = b""

    def take(raw: bytes) -> None:
        nonlocal top, total
        if raw.startswith(b"1/"):
            if raw.count(b"/") >= RECORD_FIELDS - 1:
                total += 1
                kept.append((raw.rsplit(b"/", 1)[-1].decode("utf-8", "surrogateescape"), raw))
        elif raw.startswith(b"0/") and top is None:
            parsed = parse_records(raw)
            top = parsed[0] if parsed else None

    for chunk in chunks:
        records = (rest + chunk).split(b"\0") if rest else chunk.split(b"\0")
        rest = records.pop()
        for raw in records:
            take(raw)
        if len(kept) > 2 * limit:
            kept.sort()
            del kept[limit:]
    if rest:
        take(rest)
    kept.sort()
    del kept[limit:]
    children = parse_records(b"\0".join(raw for _, raw in kept))
    return top, children, total


def parse_realpaths(stdout: bytes, count: int) -> list[str]:
    paths = [p.decode("utf-8", "surrogateescape") for p in stdout.split(b"\0")]
    if paths and paths[-1] == "":
        paths.pop()
    if len(paths) != count:
        raise SchedulerRefused(f"realpath gave {len(paths)} results for {count} paths")
    return paths


def parse_home(stdout: bytes) -> str | None:
    """The home directory field of a ``getent passwd`` line."""
    line = stdout.decode("utf-8", "replace").strip().splitlines()
    if not line:
        return None
    fields = line[0].split(":")
    home = fields[5] if len(fields) >= 7 else ""
    return home if home.startswith("/") else None


def parse_sha256(stdout: bytes) -> str:
    # GNU sha256sum starts the line with a backslash when the name holds a backslash or a
    # newline (it then escapes the name): the checksum follows it.
    word = stdout.decode("ascii", "replace").split(" ", 1)[0].strip().removeprefix("\\")
    if len(word) != 64:
        raise SchedulerRefused(f"sha256sum gave no checksum: {stdout[:200]!r}")
    return word.lower()


# find chdirs back to where it started; when that is a directory the user may not enter (sudo
# from root's home, the SSM agent's work dir) it says so on exit, about nothing we asked.
_NOISE = (b"Failed to restore initial working directory",)


def significant(stderr: bytes) -> bytes:
    """stderr without the lines that are not about the paths asked for."""
    if not any(n in stderr for n in _NOISE):
        return stderr
    return b"\n".join(ln for ln in stderr.splitlines() if not any(n in ln for n in _NOISE))


def reason(stderr: bytes) -> str:
    """The last non-empty line of a tool's stderr, e.g. "dd: failed to open '/x': Permission denied"."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def error_for(stderr: bytes, what: str, path: str, as_user: str | None) -> GatewayError:
    """Map a failed tool's stderr to the error the client gets."""
    stderr = significant(stderr)
    text = stderr.decode("utf-8", "replace")
    who = f" (as Unix user {as_user})" if as_user else ""
    last = reason(stderr)[-300:]
    if "sudo:" in text and ("password is required" in text or "unknown user" in text
                            or "not allowed" in text or "not in the sudoers" in text):
        return Forbidden(f"cannot {what} {path}: the gateway may not act as you on the cluster{who}: {last}")
    if "No such file or directory" in text:
        return NotFound(f"cannot {what} {path}: no such file or directory")
    if "Not a directory" in text:
        return NotFound(f"cannot {what} {path}: a component of the path is not a directory")
    if "Permission denied" in text or "Operation not permitted" in text:
        return Forbidden(f"cannot {what} {path}: permission denied{who}")
    if "Read-only file system" in text:
        return Forbidden(f"cannot {what} {path}: the file system is read-only")
    if "Is a directory" in text or "cannot overwrite directory" in text:
        return Conflict(f"cannot {what} {path}: it is a directory")
    if "File exists" in text:
        return Conflict(f"cannot {what} {path}: it already exists")
    if "No space left" in text or "Disk quota exceeded" in text:
        return InsufficientStorage(f"cannot {what} {path}: {last}")
    if "Too many levels of symbolic links" in text:
        return Conflict(f"cannot {what} {path}: its symbolic links make a loop")
    if "File name too long" in text:
        return BadRequest(f"cannot {what} {path}: a name or the whole path is too long for the file system")
    return SchedulerRefused(f"cannot {what} {path}: {last or 'the command failed'}")
