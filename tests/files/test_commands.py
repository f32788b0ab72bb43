"""Command builders and parsers of gateway.files, on output captured from the real tools
(GNU findutils 4.9, coreutils 9.1 on Debian 12; tests/files/fixtures/)."""
import pathlib
import re

import pytest

from gateway.errors import BadRequest, Conflict, Forbidden, NotFound, SchedulerRefused
from gateway.files import commands, parse
from tests.helpers import in_fresh_interpreter

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def fixture(name):
    return (FIXTURES / name).read_bytes()


def test_builders_take_absolute_paths_only():
    for build in (lambda p: commands.stat([p]), lambda p: commands.read(p, 0, 1, 4096),
                  lambda p: commands.write_new(p, 4096), lambda p: commands.remove(p),
                  lambda p: commands.rename_over(p, "/x"), lambda p: commands.tar_gz(p, "n"),
                  lambda p: commands.realpath([p]), lambda p: commands.curl_get(p, 10)):
        with pytest.raises(ValueError):
            build("-rf")
        with pytest.raises(ValueError):
            build("relative/path")


def test_builders_are_fixed_argument_lists():
    assert commands.read("/a b", 5, 10, 1024) == [
        "dd", "if=/a b", "bs=1024", "iflag=skip_bytes,count_bytes", "skip=5", "count=10", "status=none"]
    assert commands.read_into("/a", 7, 9, 4096, "/tmp/gw-files.x") == [
        "dd", "if=/a", "of=/tmp/gw-files.x", "bs=4096", "iflag=skip_bytes,count_bytes", "skip=7", "count=9",
        "status=none"]
    assert commands.write_new("/d/.f.part", 1024) == ["dd", "of=/d/.f.part", "bs=1024", "conv=excl,fsync", "status=none"]
    assert commands.rename_over("/d/t", "/d/$(id)") == ["mv", "-f", "-T", "--", "/d/t", "/d/$(id)"]
    assert commands.link_new("/d/t", "/d/f") == ["ln", "-T", "--", "/d/t", "/d/f"]
    assert commands.remove("/d/-rf") == ["rm", "--", "/d/-rf"]
    assert commands.tar_gz("/d", "-x") == ["tar", "-C", "/d", "-czf", "-", "--", "-x"]
    assert commands.chmod("0750", "/f") == ["chmod", "0750", "--", "/f"]
    with pytest.raises(ValueError):
        commands.chmod("u+s", "/f")
    find = commands.stat(["/d"], depth=1)
    assert find[:3] == ["find", "-H", "/d"] and find[3:5] == ["-maxdepth", "1"]


def test_temp_name_is_hidden_and_unique():
    a, b = commands.temp_name("data.bin"), commands.temp_name("data.bin")
    assert a != b and a.startswith(".data.bin.gw-upload-") and a.endswith(".part")
    assert len(commands.temp_name("x" * 255)) < 255
    # Cut by bytes: 85 three-byte characters are 255 bytes, and so would be its start.
    assert len(commands.temp_name("作" * 85).encode()) <= 255
    assert len(commands.temp_name("caf\udce9" * 60).encode("utf-8", "surrogateescape")) <= 255


def test_curl_config_keeps_the_url_off_the_command_line():
    url = 'http://h/b/k?X-Amz-Signature=a"b\\c'
    assert commands.curl_config(url) == b'url = "http://h/b/k?X-Amz-Signature=a\\"b\\\\c"\n'
    assert not any("http" in a for a in commands.curl_get("/f", 60) + commands.curl_put("/f", 60))
    assert commands.curl_config("http://h/k", [commands.PUT_ONCE]) == \
        b'url = "http://h/k"\nheader = "If-None-Match: *"\n'


def test_parse_listing():
    entries = parse.parse_records(fixture("find-listing.out"))
    by_name = {e.name: e for e in entries}
    top = [e for e in entries if e.depth == 0]
    assert len(top) == 1 and top[0].type == "directory" and top[0].path == "/tmp/gwf/fx/dir"
    assert set(by_name) == {"dir", "fifo", "a b", "dangling", "ünï", "link", "-rf", "sub", "new\nline", "a.txt"}
    secret = by_name["a.txt"]
    assert (secret.type, secret.size, secret.mode, secret.permissions, secret.owner, secret.access) == (
        "file", 3, "0600", "-rw-------", "gwbob", "---")
    assert secret.mtime.year >= 2024 and secret.mtime.tzinfo is not None
    assert by_name["link"].type == "symlink" and by_name["link"].target_type == "directory"
    assert by_name["dangling"].target_type == "missing"
    assert by_name["fifo"].type == "fifo"
    assert by_name["sub"].type == "directory" and by_name["sub"].access == "r-x"
    assert "target_type" not in by_name["a b"].as_dict()


def _records(names, directory="/d"):
    """find records (commands.stat's format) for ``directory`` and, at depth 1, ``names``."""
    out = [f"0/r-x/d/d/4096/755/drwxr-xr-x/1700000000.5/gwalice/{directory}".encode()]
    for i, name in enumerate(names):
        raw = name if isinstance(name, bytes) else name.encode()
        out.append(f"1/rw-/f/f/{i}/644/-rw-r--r--/1700000000.5/gwalice/{directory}/".encode() + raw)
    return b"\0".join(out) + b"\0"


def _chunks(data: bytes, size: int):
    return (data[i:i + size] for i in range(0, len(data), size))


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
@pytest.mark.parametrize("limit", [1, 3, 10, 500])
def test_streamed_listing_keeps_the_first_entries_by_name(chunk, limit):
    """Whatever the chunking (records cut anywhere, even mid-name), the same entries in the
    same order as parsing everything and sorting by name; total counts them all."""
    real = fixture("find-listing.out")
    top, children, total = parse.parse_listing(_chunks(real, chunk), limit)
    everything = parse.parse_records(real)
    expected = sorted((e for e in everything if e.depth == 1), key=lambda e: e.name)
    assert top == next(e for e in everything if e.depth == 0)
    assert children == expected[:limit] and total == len(expected) == 9

    # More names than the limit, in no order, some not UTF-8 (ordered as sorted() orders
    # their surrogate-escaped names), and the last record without its NUL.
    names = [f"n{(i * 7919) % 1000:04d}" for i in range(1000)] + [b"\xff\xfe", "\u00e9t\u00e9", b"z\xe9"]
    data = _records(names)[:-1]
    top, children, total = parse.parse_listing(_chunks(data, chunk), limit)
    expected = sorted(parse.parse_records(data)[1:], key=lambda e: e.name)
    assert top.path == "/d" and total == 1003
    assert [e.name for e in children] == [e.name for e in expected[:limit]]
    assert children == expected[:limit]


def _listing_peak():
    import tracemalloc

    def stream(count=200_000, per_chunk=2_000):
        yield _records([])
        for start in range(0, count, per_chunk):
            yield b"".join(f"1/rw-/f/f/1/644/-rw-r--r--/1700000000.5/gwalice/d/f{(i * 7919) % count:07d}".encode()
                           + b"\0" for i in range(start, start + per_chunk))

    tracemalloc.start()
    try:
        top, children, total = parse.parse_listing(stream(), 100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return top.type, [e.name for e in children], total, peak


def test_streamed_listing_memory_does_not_grow_with_the_directory():
    """200,000 entries through a limit of 100: the parser holds the kept records and a chunk,
    never the listing (parsed whole, these records take ~100 MB). In a fresh interpreter
    (tests.helpers.in_fresh_interpreter: CI once measured 10.9 MB here, another test's)."""
    top_type, names, total, peak = in_fresh_interpreter(_listing_peak)
    assert total == 200_000 and names == [f"f{i:07d}" for i in range(100)]
    assert top_type == "directory"
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes"


def test_parse_stat_of_several_paths_with_errors():
    entries = parse.parse_records(fixture("find-stat-two.out"))
    assert [e.path for e in entries] == ["/tmp/gwf/fx/dir"]
    err = fixture("find-stat-two.err")
    assert b"No such file" in parse.significant(err)
    assert b"initial working directory" not in parse.significant(err)


def test_find_noise_about_the_initial_directory_is_not_an_error():
    err = fixture("find-listing.err")
    assert parse.significant(err).strip() == b""


def test_parse_realpath_home_sha():
    assert parse.parse_realpaths(fixture("realpath.out"), 3) == [
        "/home/gwalice", "/etc/passwd", "/tmp/gwf/fx/dir/missing/x"]
    with pytest.raises(SchedulerRefused):
        parse.parse_realpaths(fixture("realpath.out"), 2)
    assert parse.parse_home(fixture("getent-passwd.out")) == "/home/gwalice"
    assert parse.parse_home(b"") is None
    assert re.fullmatch(r"[0-9a-f]{64}", parse.parse_sha256(fixture("sha256sum.out")))
    # GNU sha256sum's line for a name with a backslash (or newline) starts with one.
    assert parse.parse_sha256(b"\\" + b"ab" * 32 + b" */w/back\\\\slash\n") == "ab" * 32


@pytest.mark.parametrize("stderr, cls", [
    (b"dd: failed to open '/x': Permission denied\n", Forbidden),
    (b"find: \xe2\x80\x98/x\xe2\x80\x99: No such file or directory\n", NotFound),
    (b"rm: cannot remove '/x': Is a directory\n", Conflict),
    (b"ln: failed to create hard link '/x': File exists\n", Conflict),
    (b"mv: cannot overwrite directory '/x' with non-directory\n", Conflict),
    (b"sudo: a password is required\n", Forbidden),
    (b"sudo: unknown user gwx\n", Forbidden),
    (b"curl: (22) The requested URL returned error: 403\n", SchedulerRefused),
    (b"dd: failed to open '/x': Too many levels of symbolic links\n", Conflict),
    (b"dd: failed to open '/x': File name too long\n", BadRequest),
])
def test_error_mapping(stderr, cls):
    err = parse.error_for(stderr, "read", "/x", "alice")
    assert isinstance(err, cls)
    assert "/x" in err.msg


def test_full_disk_is_507():
    err = parse.error_for(b"dd: error writing '/x': No space left on device\n", "write", "/x", None)
    assert err.status == 507


def test_a_file_with_an_impossible_mtime_is_listed_not_fatal():
    """`touch -d @9000000000000000000` works on tmpfs and btrfs: such a file made its whole
    directory a 500 (fromtimestamp raised), or was silently dropped past the year 9999."""
    records = b"".join(b"1/rw-/f/f/1/644/-rw-r--r--/%s/gwbob//tmp/d/%s\x00" % (t, n) for t, n in (
        (b"9000000000000000000.0000000000", b"future"), (b"-9000000000000000000.0000000000", b"past"),
        (b"1795312534.3302634760", b"now")))
    by_name = {e.name: e for e in parse.parse_records(records)}
    assert set(by_name) == {"future", "past", "now"}
    assert by_name["future"].mtime.year == 9999 and by_name["past"].mtime.year == 1
    assert by_name["now"].mtime.year == 2026
    assert by_name["future"].as_dict()["mtime"].year == 9999


def test_a_download_named_in_bytes_that_are_not_utf8_gets_a_header():
    from gateway.api.files.views import _disposition
    assert _disposition("caf\udce9 x.txt") == "attachment; filename=\"caf_ x.txt\"; filename*=UTF-8''caf%E9%20x.txt"
    assert _disposition("作业.txt").endswith("filename*=UTF-8''%E4%BD%9C%E4%B8%9A.txt")
