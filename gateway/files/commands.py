"""Argument lists of the standard tools that do the file work on the cluster (pure).

Every builder takes absolute, already checked paths (they begin with '/', so no tool can
mistake one for an option or, for find, an expression) and returns a fixed argument list:
nothing is ever given to a shell. The transport adds ``sudo -n -u USER --`` when the
command runs as the user.
"""
from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence

# One record per path, NUL-terminated; the path comes last, so '/' splits the rest safely
# (no field before it can contain '/'):
#   depth / access(rwx or -) / type / target type / size / mode / permissions / mtime / owner / path
_ACCESS = ["(", "-readable", "-printf", "r", "-o", "-printf", "-", ")",
           "(", "-writable", "-printf", "w", "-o", "-printf", "-", ")",
           "(", "-executable", "-printf", "x", "-o", "-printf", "-", ")"]
RECORD_FIELDS = 10


def _abs(*paths: str) -> None:
    for path in paths:
        if not path.startswith("/"):
            raise ValueError(f"not an absolute path: {path!r}")


def realpath(paths: Sequence[str]) -> list[str]:
    """Resolve every symbolic link (missing components allowed), NUL-separated output."""
    _abs(*paths)
    return ["realpath", "-z", "-m", "--", *paths]


def stat(paths: Sequence[str], *, depth: int = 0) -> list[str]:
    """One record for each path (depth 0), plus the entries of directories (depth 1)."""
    _abs(*paths)
    return ["find", "-H", *paths, "-maxdepth", str(depth), "-printf", "%d/", *_ACCESS,
            "-printf", "/%y/%Y/%s/%m/%M/%T@/%u/%p\\0"]


def read(path: str, offset: int, length: int, block: int) -> list[str]:
    """``length`` bytes of ``path`` from ``offset`` on stdout."""
    _abs(path)
    return ["dd", f"if={path}", f"bs={block}", "iflag=skip_bytes,count_bytes",
            f"skip={offset}", f"count={length}", "status=none"]


def read_into(path: str, offset: int, length: int, block: int, output: str) -> list[str]:
    """``length`` bytes of ``path`` from ``offset`` into the file ``output``."""
    _abs(path, output)
    return ["dd", f"if={path}", f"of={output}", f"bs={block}", "iflag=skip_bytes,count_bytes",
            f"skip={offset}", f"count={length}", "status=none"]


def write_new(path: str, block: int) -> list[str]:
    """stdin into a new file (refused if the name exists), flushed to disk before exit."""
    _abs(path)
    return ["dd", f"of={path}", f"bs={block}", "conv=excl,fsync", "status=none"]


def temp_name(target_name: str) -> str:
    """The hidden temporary name an upload is written to, beside its target: within NAME_MAX
    (255 bytes) for any target name the path checks accept, so cut by bytes, not characters
    (84 CJK characters are 252 bytes)."""
    stem = target_name[:200]
    while len(stem.encode("utf-8", "surrogatepass")) > 200:       # whole characters only
        stem = stem[:-1]
    return f".{stem}.gw-upload-{secrets.token_hex(6)}.part"


def rename_over(src: str, dst: str) -> list[str]:
    """Atomically replace ``dst`` (never moving into it, should it be a directory)."""
    _abs(src, dst)
    return ["mv", "-f", "-T", "--", src, dst]


def link_new(src: str, dst: str) -> list[str]:
    """Give ``src`` the name ``dst`` only if ``dst`` does not exist (atomic: link(2))."""
    _abs(src, dst)
    return ["ln", "-T", "--", src, dst]


def rename_no_clobber(src: str, dst: str) -> list[str]:
    """Fallback where hard links are not supported."""
    _abs(src, dst)
    return ["mv", "-n", "-T", "--", src, dst]


def remove(path: str, *, force: bool = False, tree: bool = False) -> list[str]:
    _abs(path)
    if tree:
        return ["rm", "-rf", "--", path]
    return ["rm", "-f", "--", path] if force else ["rm", "--", path]


def private_dir(path: str) -> list[str]:
    """A new directory only its owner can enter (mode 0700 from creation on; refused if the
    name exists, even as a link)."""
    _abs(path)
    return ["mkdir", "-m", "700", "--", path]


def mkdirs(path: str) -> list[str]:
    _abs(path)
    return ["mkdir", "-p", "--", path]


def chmod(mode: str, path: str) -> list[str]:
    _abs(path)
    if not (mode.isdigit() and set(mode) <= set("01234567") and 3 <= len(mode) <= 4):
        raise ValueError(f"not an octal mode: {mode!r}")
    return ["chmod", mode, "--", path]


def sha256(path: str) -> list[str]:
    _abs(path)
    return ["sha256sum", "-b", "--", path]


def tar_gz(parent: str, name: str, output: str = "-") -> list[str]:
    """A gzip'd tar of ``parent/name`` (entries named ``name/...``) to stdout or ``output``."""
    _abs(parent)
    if output != "-":
        _abs(output)
    return ["tar", "-C", parent, "-czf", output, "--", name]


def mktemp() -> list[str]:
    return ["mktemp", "--tmpdir", "gw-files.XXXXXXXXXX"]


def passwd_entry(user: str) -> list[str]:
    return ["getent", "passwd", user]


def curl_get(output: str, timeout: float) -> list[str]:
    """Fetch a URL (given on stdin as curl configuration, so it is not on the command line)."""
    _abs(output)
    return ["curl", "--silent", "--show-error", "--fail", "--retry", "3",
            "--max-time", str(int(timeout)), "--write-out", "%{size_download}",
            "--config", "-", "--output", output]


def curl_put(path: str, timeout: float) -> list[str]:
    """PUT a file to a URL given on stdin (see curl_get)."""
    _abs(path)
    return ["curl", "--silent", "--show-error", "--fail", "--retry", "3",
            "--max-time", str(int(timeout)), "--config", "-", "--upload-file", path]


# A presigned S3 PUT is signed with this header (``IfNoneMatch="*"`` in its Params) and
# sent with it: S3 writes the object only if the key is free (else 412), and every PUT
# with the URL must carry the header (it is signed). The URL travels in a Run Command,
# which SSM's command history shows: whoever reads it there can at most make our PUT fail
# by putting first, never replace what we put.
PUT_ONCE = "If-None-Match: *"
PUT_ONCE_PARAMS = {"IfNoneMatch": "*"}      # the same, in boto3's put_object Params


def curl_config(url: str, headers: Iterable[str] = ()) -> bytes:
    """curl's configuration text naming ``url`` and ``headers`` (read from stdin with
    --config -)."""
    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "".join([f"url = {quoted(url)}\n", *(f"header = {quoted(h)}\n" for h in headers)]).encode()
