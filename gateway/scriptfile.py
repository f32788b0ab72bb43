"""A job script named by ``scriptLocation`` on the cluster: checked before anything reads it.

The path is the client's, so it may name a device (``/dev/zero``: sbatch or a reader would
fill memory until the command's timeout), a FIFO (the reader waits for a writer), a
directory, or a file far larger than any script. Each plugin runs :func:`stat_argv` as the
user through its transport and hands the result to :func:`check` before submitting the
file, or before reading it with :func:`head_argv` and :func:`content`. (A file swapped after the check is still bounded by the command's
timeout: this keeps honest mistakes and casual abuse cheap, it is not a lock.)
"""
from __future__ import annotations

from .errors import InvalidInput

#: The largest script file a plugin accepts (the API's limit for an inline ``script`` too).
MAX_SCRIPT_BYTES = 1024 * 1024


def stat_argv(path: str) -> list[str]:
    """coreutils stat of ``path`` (links followed): ``<size> <type words>``."""
    return ["stat", "-L", "-c", "%s %F", "--", path]


def check(path: str, returncode: int, stdout: str, stderr: str, limit: int = MAX_SCRIPT_BYTES) -> int:
    """The file's size, if :func:`stat_argv` found a regular file of at most ``limit`` bytes;
    else InvalidInput saying what is wrong (in stat's words when it failed)."""
    if returncode != 0:
        why = stderr.strip().splitlines()[-1] if stderr.strip() else f"stat exited with {returncode}"
        raise InvalidInput(f"cannot read scriptLocation {path}: {why[-300:]}",
                           errors={"scriptLocation": ["cannot read"]})
    size, _, kind = stdout.strip().partition(" ")
    if not kind.startswith("regular") or not size.isdigit():
        raise InvalidInput(f"scriptLocation {path} is not a regular file ({kind or stdout.strip()[:40]})",
                           errors={"scriptLocation": ["not a regular file"]})
    if int(size) > limit:
        raise InvalidInput(f"scriptLocation {path} is {int(size)} bytes, more than {limit}",
                           errors={"scriptLocation": ["too large"]})
    return int(size)


def head_argv(path: str) -> list[str]:
    """The file's first MAX_SCRIPT_BYTES + 1 bytes (one more tells it grew past the limit)."""
    return ["head", "-c", str(MAX_SCRIPT_BYTES + 1), "--", path]


def content(path: str, returncode: int, stdout: bytes, stderr: str) -> bytes:
    """What :func:`head_argv` read; InvalidInput when it failed or the file grew past the limit
    after :func:`check`."""
    if returncode != 0 or len(stdout) > MAX_SCRIPT_BYTES:
        why = stderr.strip()[-300:] or f"exit status {returncode}, or it grew past {MAX_SCRIPT_BYTES} bytes"
        raise InvalidInput(f"cannot read scriptLocation {path}: {why}", errors={"scriptLocation": ["cannot read"]})
    return stdout
