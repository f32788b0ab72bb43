"""Path policy, pure: what a client may name, and whether a path lies inside the user's roots.

The gateway checks twice. First the text: no NUL or other control character, no ``..``
component, a bounded length (400 otherwise). Then the place: the normalized path must lie
under one of the user's roots (403 otherwise). The caller then resolves the path *on the
cluster, as the user* (``realpath -m``) and checks the resolved path again with
:func:`inside`, so a symbolic link cannot lead out of the roots. Unix permissions still
decide everything the roots allow: every command runs as the user.
"""
from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Sequence

from ..errors import BadRequest, Forbidden

MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
# C0 controls, DEL and C1 controls: never in a path the gateway handles.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A user name usable in a root template ({user}) and as a sudo target.
_USER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")


class PathRefused(BadRequest):
    """A path the gateway will not even try (400)."""


def check_text(path: str, what: str = "path") -> str:
    """Refuse NUL, control characters, ``..`` components, empty and over-long paths."""
    if not isinstance(path, str) or path == "":
        raise PathRefused(f"{what} is empty: give a file or directory path")
    if "\x00" in path:
        raise PathRefused(f"{what} contains a NUL character: refused")
    if _CONTROL.search(path):
        raise PathRefused(f"{what} contains control characters (newline, tab, escape...): refused")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise PathRefused(f"{what} is longer than {MAX_PATH_BYTES} bytes")
    if ".." in path.split("/"):
        raise PathRefused(f"{what} {path!r} contains '..': give the path without parent-directory references")
    for part in path.split("/"):
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise PathRefused(f"{what} has a component longer than {MAX_NAME_BYTES} bytes")
    return path


def check_name(name: str, what: str = "file name") -> str:
    """A single directory entry name: not empty, not . or .., no '/'."""
    check_text(name, what)
    if "/" in name or name in (".", ".."):
        raise PathRefused(f"{what} {name!r} must be a plain name (no '/', not '.' or '..')")
    return name


def normalize(path: str) -> str:
    """Collapse '//' and '/./' and drop a trailing '/' (no '..' can be left: check_text refused it)."""
    absolute = path.startswith("/")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    joined = "/".join(parts)
    return ("/" + joined) if absolute else (joined or ".")


def join(base: str, path: str, home: str | None) -> str:
    """The absolute, normalized path ``path`` names, relative to ``base``; ``~`` is ``home``."""
    check_text(path)
    if path == "~" or path.startswith("~/"):
        if not home:
            raise Forbidden("you have no home directory on the cluster: give an absolute path")
        path = home + path[1:]
    elif path.startswith("~"):
        raise PathRefused("'~user' paths are not supported: give an absolute path")
    if not path.startswith("/"):
        path = posixpath.join(base, path)
    return normalize(path)


def inside(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or below it (both absolute and normalized)."""
    if root == "/":
        return path.startswith("/")
    return path == root or path.startswith(root + "/")


def inside_any(path: str, roots: Iterable[str]) -> bool:
    return any(inside(path, root) for root in roots)


def valid_user_name(name: str) -> bool:
    return bool(_USER_NAME.match(name or ""))


def expand_roots(templates: Sequence[str], user: str, home: str | None) -> list[str]:
    """The user's roots from the configured templates; a {home} root is dropped without a home."""
    roots = []
    for template in templates:
        if "{home}" in template and not home:
            continue
        if "{user}" in template and not valid_user_name(user):
            continue
        root = normalize(template.format(home=home or "", user=user))
        if root.startswith("/") and root not in roots:
            roots.append(root)
    return roots


def refuse_outside(path: str, roots: Sequence[str], given: str | None = None) -> None:
    if not roots:
        raise Forbidden("no file space is configured for you on this cluster (files.roots)")
    if not inside_any(path, roots):
        # A relative path is shown with where it leads ('.' with ?jobId= is the job's work dir).
        shown = repr(path) if given is None or given == path else f"{given!r} ({path})"
        raise Forbidden(f"{shown} is outside your file space ({', '.join(roots)})")


def split(path: str) -> tuple[str, str]:
    """(parent, name) of an absolute normalized path other than '/'."""
    parent, name = posixpath.split(path)
    return parent or "/", name
