"""The behaviour suite for files: upload, list, download, archive, delete, through the API,
on every backend (mock, mock-sudo, the real Slurm over local/ssh/ssm, ...).

Every backend of the suite runs on this host, so a test may prepare a situation directly on
the file system (a symbolic link, a file of another user) and then check what the API does.
Tests that only make sense when operations run as the user's own Unix account (run_as: sudo)
are skipped on run_as: service backends, where one service account does everything.
"""
from __future__ import annotations

import hashlib
import io
import os
import pathlib
import pwd
import random
import shutil
import stat
import tarfile
import threading
import time
import uuid

import pytest

from tests.helpers import require

PREFIX = "/aip/v9.2"


# ------------------------------------------------------------------ helpers
def call(client, method, path, *, params=None, data=None, headers=None, **kw):
    h = {"Authorization": f"Bearer {client.token}", **(headers or {})}
    return client.flask.open(PREFIX + path, method=method, query_string=params, data=data, headers=h, **kw)


def upload(client, path, data, **params):
    return call(client, "PUT", "/files/content", params={"path": path, **params}, data=data,
                headers={"Content-Type": "application/octet-stream"})


def download(client, path, headers=None, **params):
    return call(client, "GET", "/files/content", params={"path": path, **params}, headers=headers)


def listing(client, path=None, **params):
    return call(client, "GET", "/files", params={**({"path": path} if path else {}), **params})


def names(client, path, **params):
    r = listing(client, path, **params)
    assert r.status_code == 200, r.get_json()
    return {e["name"] for e in r.get_json()["data"]["entries"]}


def run_as_sudo(gateway) -> bool:
    return (gateway.config["scheduler"].get("options") or {}).get("run_as") == "sudo"


@pytest.fixture
def files(gateway):
    """Skip (locally; fail under CI) a backend whose plugin offers no file access."""
    scheduler = gateway.app.extensions["hpc_gateway"].scheduler
    if not scheduler.implements("file_transport") and os.environ.get("GATEWAY_TEST_FILE_SHIM"):
        _register_shim(scheduler)
    require(scheduler.implements("file_transport"),
            f"the {gateway.backend} backend's plugin does not implement the file_transport hook yet")
    return gateway


def _register_shim(scheduler):
    """Developer aid (GATEWAY_TEST_FILE_SHIM=1): the few lines docs/files.md asks plugins to
    add, registered from outside, to exercise a plugin that does not have them yet."""
    from gateway.hookspecs import hookimpl
    impl = scheduler.impl

    class Shim:
        @hookimpl
        def file_transport(self, user):
            return impl.transport, impl._account_for(user.name)

    scheduler.pm.register(Shim(), name="file-shim")


@pytest.fixture
def home(files):
    r = listing(files.alice)
    assert r.status_code == 200, r.get_json()
    return r.get_json()["data"]["path"]


@pytest.fixture
def workdir(files, home):
    """A fresh directory in alice's home, created through the API; removed afterwards."""
    name = f"gwt-{uuid.uuid4().hex[:10]}"
    r = upload(files.alice, f"~/{name}/.keep", b"", mkdirs="true")
    assert r.status_code == 200, r.get_json()
    path = f"{home}/{name}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def payload(size: int) -> bytes:
    """Binary data with every byte value, NULs, CR/LF and invalid UTF-8 in it."""
    block = bytes(range(256)) + b"\x00\r\n\xff\xfe" + random.Random(size).randbytes(251)
    return (block * (size // len(block) + 1))[:size]


# ------------------------------------------------------------------ round trips
def test_binary_round_trip_with_checksums(files, workdir):
    data = payload(300_000)             # larger than one SSM inline read: goes through S3 there
    digest = hashlib.sha256(data).hexdigest()
    r = upload(files.alice, f"{workdir}/data.bin", data, sha256=digest)
    assert r.status_code == 200, r.get_json()
    meta = r.get_json()["data"]["file"]
    assert meta["sha256"] == digest and meta["size"] == len(data) and meta["replaced"] is False
    assert meta["path"] == f"{workdir}/data.bin"

    got = download(files.alice, f"{workdir}/data.bin")
    assert got.status_code == 200
    assert got.data == data
    assert got.headers["Content-Length"] == str(len(data))
    assert got.headers["Accept-Ranges"] == "bytes"
    assert got.headers["Content-Type"] == "application/octet-stream"
    assert "data.bin" in got.headers["Content-Disposition"]
    head = call(files.alice, "HEAD", "/files/content", params={"path": f"{workdir}/data.bin"})
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(data)) and head.data == b""

    entries = {e["name"]: e for e in listing(files.alice, workdir).get_json()["data"]["entries"]}
    entry = entries["data.bin"]
    assert entry["type"] == "file" and entry["size"] == len(data)
    assert entry["mode"].isdigit() and entry["mtime"] and entry["access"].startswith("rw")
    assert not [n for n in entries if ".part" in n], "no temporary file may remain"

    stat = call(files.alice, "GET", "/files/stat", params={"path": f"{workdir}/data.bin", "sha256": "true"})
    assert stat.status_code == 200 and stat.get_json()["data"]["file"]["sha256"] == digest


def test_relative_paths_are_relative_to_home_and_empty_files_work(files, workdir, home):
    rel = workdir[len(home) + 1:]
    assert upload(files.alice, f"{rel}/empty", b"").status_code == 200
    got = download(files.alice, f"~/{rel}/empty")
    assert got.status_code == 200 and got.data == b"" and got.headers["Content-Length"] == "0"
    assert "empty" in names(files.alice, rel)


def test_ranges_and_following_a_growing_file(files, workdir):
    path = f"{workdir}/grow.log"
    assert upload(files.alice, path, b"0123456789" * 100).status_code == 200
    part = download(files.alice, path, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.data == b"0123456789"
    assert part.headers["Content-Range"] == "bytes 10-19/1000"
    assert download(files.alice, path, headers={"Range": "bytes=-5"}).data == b"56789"
    big = download(files.alice, path, headers={"Range": "bytes=100-"})    # >16 KiB? no: 900 bytes
    assert big.status_code == 206 and len(big.data) == 900
    end = download(files.alice, path, headers={"Range": "bytes=1000-"})
    assert end.status_code == 416, "nothing new yet"
    assert end.headers["Content-Range"] == "bytes */1000"
    assert end.get_json()["msg"]
    # The file grows; the client asks from where it stopped and gets exactly the new bytes.
    assert upload(files.alice, path, b"0123456789" * 100 + b"new tail", overwrite="true").status_code == 200
    more = download(files.alice, path, headers={"Range": "bytes=1000-"})
    assert more.status_code == 206 and more.data == b"new tail"
    assert more.headers["Content-Range"] == "bytes 1000-1007/1008"
    # A large range of a large file (the S3 path over SSM).
    data = payload(100_000)
    assert upload(files.alice, f"{workdir}/big", data).status_code == 200
    r = download(files.alice, f"{workdir}/big", headers={"Range": "bytes=1000-80999"})
    assert r.status_code == 206 and r.data == data[1000:81000]


def test_tilde_in_a_job_spec_is_the_files_apis_home(files, home):
    """workDir, scriptLocation and stdout may start with ~: the same directory as ~ in the
    files API on every backend (the mock took workDir ~ alone; Slurm and AIP refused it)."""
    name = f"gw-tilde-{uuid.uuid4().hex[:8]}"
    assert upload(files.alice, f"{home}/{name}.sh", b"#!/bin/sh\necho tilde-ok\npwd\n").status_code == 200
    jid = files.alice.submit(scriptLocation=f"~/{name}.sh", workDir="~", stdout=f"~/{name}.out", name=name)
    job = files.alice.wait_for(jid, {"COMPLETED", "FAILED"}, timeout=120)
    assert job["state"] == "COMPLETED", job
    expected = f"tilde-ok\n{home}\n".encode()
    assert expected in download(files.alice, f"{home}/{name}.out").data      # (LSF adds its report)
    assert files.alice.output(jid)["data"].encode() == expected


def test_multipart_upload_and_the_vendors_routes(files, workdir, home):
    data = payload(50_000)
    r = call(files.alice, "POST", "/file/upload",
             data={"workdir": workdir, "file": (io.BytesIO(data), "input.dat")},
             content_type="multipart/form-data")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["data"]["file"]["path"] == f"{workdir}/input.dat"
    assert r.get_json()["data"]["file"]["sha256"] == hashlib.sha256(data).hexdigest()
    # workdir after the file: the file would already have gone to the home (replacing one of
    # the same name there). Refused, and nothing kept anywhere.
    name = f"late-{uuid.uuid4().hex[:8]}.dat"
    late = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + name.encode()
            + b"\"\r\n\r\nlate\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"workdir\"\r\n\r\n" + workdir.encode()
            + b"\r\n--XyZ--\r\n")
    r = call(files.alice, "POST", "/file/upload", data=late,
             headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert r.status_code == 400 and "'workdir' came after the file" in r.get_json()["msg"], r.get_json()
    for folder in (home, workdir):
        assert download(files.alice, f"{folder}/{name}").status_code == 404
    # The vendor's upload replaces by default.
    r = call(files.alice, "POST", "/file/upload", params={"workdir": workdir},
             data={"file": (io.BytesIO(b"v2"), "input.dat")}, content_type="multipart/form-data")
    assert r.status_code == 200 and r.get_json()["data"]["file"]["replaced"] is True

    got = call(files.alice, "GET", "/file/download/input.dat", params={"workdir": workdir})
    assert got.status_code == 200 and got.data == b"v2"
    archive = call(files.alice, "GET", "/file/download/all", params={"workdir": workdir})
    assert archive.status_code == 200 and archive.headers["Content-Type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(archive.data), mode="r:gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/input.dat"))
        assert tar.extractfile(member).read() == b"v2"

    # Generic route, multipart into a directory (the part's filename names the file).
    r = call(files.alice, "PUT", "/files/content", params={"path": f"{workdir}/sub/", "mkdirs": "true"},
             data={"file": (io.BytesIO(b"abc"), "named.txt")}, content_type="multipart/form-data")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["data"]["file"]["path"] == f"{workdir}/sub/named.txt"


def test_a_long_listing_is_cut_to_its_first_entries_by_name(files, workdir, monkeypatch):
    """A directory with more entries than files.max_list_entries: the first ones by name, the
    real total, truncated (the listing is read as it arrives, never held whole)."""
    created = [f"e{(i * 37) % 25:02d}" for i in range(25)]        # all of e00..e24, out of order
    for name in created:
        pathlib.Path(workdir, name).touch()
    everything = sorted([*created, ".keep"])
    settings = files.app.extensions["hpc_gateway"].config["files"]
    monkeypatch.setitem(settings, "max_list_entries", 10)
    r = listing(files.alice, workdir)
    assert r.status_code == 200, r.get_json()
    data = r.get_json()["data"]
    assert [e["name"] for e in data["entries"]] == everything[:10]
    assert (data["total"], data["truncated"]) == (26, True)
    monkeypatch.setitem(settings, "max_list_entries", 26)
    data = listing(files.alice, workdir).get_json()["data"]
    assert [e["name"] for e in data["entries"]] == everything
    assert (data["total"], data["truncated"]) == (26, False)


def test_directory_as_tar_gz(files, workdir):
    for name, content in (("a.txt", b"A"), ("d/b.bin", payload(20_000)), ("d/e/c", b"")):
        assert upload(files.alice, f"{workdir}/tree/{name}", content, mkdirs="true").status_code == 200
    r = call(files.alice, "GET", "/files/archive", params={"path": f"{workdir}/tree"})
    assert r.status_code == 200, r.get_json()
    assert "tree.tar.gz" in r.headers["Content-Disposition"]
    with tarfile.open(fileobj=io.BytesIO(r.data), mode="r:gz") as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert got == {"tree/a.txt": b"A", "tree/d/b.bin": payload(20_000), "tree/d/e/c": b""}
    assert call(files.alice, "GET", "/files/archive", params={"path": f"{workdir}/tree/a.txt"}).status_code == 409


def test_overwrite_conflicts_and_missing_things(files, workdir):
    path = f"{workdir}/f.txt"
    assert upload(files.alice, path, b"one").status_code == 200
    again = upload(files.alice, path, b"two")
    assert again.status_code == 409 and "overwrite=true" in again.get_json()["msg"]
    assert download(files.alice, path).data == b"one"
    replaced = upload(files.alice, path, b"two", overwrite="true")
    assert replaced.status_code == 200 and replaced.get_json()["data"]["file"]["replaced"] is True
    assert download(files.alice, path).data == b"two"
    # A replaced file keeps its mode (a 0600 key overwritten became 0644), unless one is given.
    assert upload(files.alice, f"{workdir}/key", b"k1", mode="600").status_code == 200
    assert upload(files.alice, f"{workdir}/key", b"k2", overwrite="true").status_code == 200
    assert os.stat(f"{workdir}/key").st_mode & 0o777 == 0o600
    assert upload(files.alice, f"{workdir}/key", b"k3", overwrite="true", mode="640").status_code == 200
    assert os.stat(f"{workdir}/key").st_mode & 0o777 == 0o640

    assert upload(files.alice, workdir, b"x", overwrite="true").status_code == 409       # a directory
    assert download(files.alice, workdir).status_code == 409
    assert listing(files.alice, path).status_code == 409
    assert download(files.alice, f"{workdir}/missing").status_code == 404
    assert listing(files.alice, f"{workdir}/missing").status_code == 404
    assert upload(files.alice, f"{workdir}/no/such/dir/f", b"x").status_code == 404
    assert call(files.alice, "DELETE", "/files/content", params={"path": f"{workdir}/missing"}).status_code == 404
    assert call(files.alice, "DELETE", "/files/content", params={"path": workdir}).status_code == 409

    deleted = call(files.alice, "DELETE", "/files/content", params={"path": path})
    assert deleted.status_code == 200 and deleted.get_json()["data"]["file"]["deleted"] is True
    assert download(files.alice, path).status_code == 404


def test_mode_of_an_uploaded_file(files, workdir):
    r = upload(files.alice, f"{workdir}/run.sh", b"#!/bin/sh\necho hi\n", mode="0750")
    assert r.status_code == 200, r.get_json()
    stat = call(files.alice, "GET", "/files/stat", params={"path": f"{workdir}/run.sh"}).get_json()["data"]["file"]
    assert stat["mode"] == "0750" and stat["permissions"] == "-rwxr-x---"
    assert upload(files.alice, f"{workdir}/bad", b"", mode="999").status_code == 422


class SlowBody(io.BytesIO):
    """A request body handed over in small pieces, a little at a time."""

    PIECE, PAUSE = 64 * 1024, 0.01

    def read(self, size=-1):
        if self.tell():
            time.sleep(self.PAUSE)
        return super().read(self.PIECE if size is None or size < 0 else min(size, self.PIECE))

    read1 = read

    def readinto(self, buf):
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)


def test_a_private_upload_is_never_readable_by_others_while_written(files, workdir):
    """With mode 0600 (given, or kept from the file it replaces), no one else may open the
    data mid-write: an open descriptor would keep reading after the final chmod."""
    data = payload(2 * 1024 * 1024)
    seen: list[tuple[str, int, bool]] = []          # (path, mode, is a directory)
    problems: list[OSError] = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            try:
                for entry in os.scandir(workdir):
                    if ".gw-upload-" not in entry.name:
                        continue
                    st = os.lstat(entry.path)
                    seen.append((entry.path, st.st_mode, stat.S_ISDIR(st.st_mode)))
                    if stat.S_ISDIR(st.st_mode):
                        seen.extend((e.path, os.lstat(e.path).st_mode, False) for e in os.scandir(entry.path))
            except FileNotFoundError:
                pass                    # renamed or removed between the listing and the look
            except OSError as exc:      # e.g. not allowed to look: the test would check nothing
                problems.append(exc)
                return
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        r = call(files.alice, "PUT", "/files/content", params={"path": f"{workdir}/key", "mode": "600"},
                 headers={"Content-Type": "application/octet-stream"}, input_stream=SlowBody(data),
                 environ_overrides={"CONTENT_LENGTH": str(len(data))})
        assert r.status_code == 200, r.get_json()
        # Replaced without a mode: it keeps 0600, so it is written privately too.
        r = call(files.alice, "PUT", "/files/content", params={"path": f"{workdir}/key", "overwrite": "true"},
                 headers={"Content-Type": "application/octet-stream"}, input_stream=SlowBody(data[::-1]),
                 environ_overrides={"CONTENT_LENGTH": str(len(data))})
        assert r.status_code == 200, r.get_json()
    finally:
        done.set()
        watcher.join(10)
    assert download(files.alice, f"{workdir}/key").data == data[::-1]
    assert os.stat(f"{workdir}/key").st_mode & 0o777 == 0o600
    assert sorted(os.listdir(workdir)) == [".keep", "key"]            # nothing left behind
    assert not problems, problems
    if "ssm" not in files.backend:      # over SSM the data reaches the cluster in one curl
        assert seen, "the watcher never saw the upload being written"
    for path, mode, is_dir in seen:
        beside_target = os.path.dirname(path) == workdir
        if is_dir:
            assert beside_target and mode & 0o777 == 0o700, (path, oct(mode))
        else:
            # A file being written sits in a 0700 directory, or is itself unreadable to others.
            assert not beside_target or mode & 0o044 == 0, (path, oct(mode))


# ------------------------------------------------------------------ refusals
BAD_TEXT = [
    "../etc/passwd", "~/../gwbob/x", "a/../../b", "..", "x/..", "./../x",
    "foo\x00bar", "foo\nbar", "\x1b[31mred", "tab\there", "del\x7f", "c1\x85x",
    "x" * 5000, "~root/.ssh/authorized_keys",
]
OUTSIDE = ["/etc/passwd", "/", "/root", "/tmp", "/home/gwbob/x", "/proc/self/environ"]


@pytest.mark.parametrize("bad", BAD_TEXT, ids=repr)
def test_traversal_and_control_characters_are_refused(files, workdir, bad):
    nested = [] if bad.startswith("~") else [upload(files.alice, f"{workdir}/{bad}", b"x")]
    for response in (listing(files.alice, bad), download(files.alice, bad), upload(files.alice, bad, b"x"), *nested,
                     call(files.alice, "DELETE", "/files/content", params={"path": bad}),
                     call(files.alice, "GET", "/files/archive", params={"path": bad})):
        assert response.status_code == 400, (bad, response.get_json())
        assert response.get_json()["msg"] and response.get_json()["data"] is None
    assert names(files.alice, workdir) == {".keep"}


@pytest.mark.parametrize("outside", OUTSIDE)
def test_paths_outside_the_users_roots_are_forbidden(files, outside):
    for response in (listing(files.alice, outside), download(files.alice, outside),
                     upload(files.alice, f"{outside.rstrip('/')}/gw-should-not-exist", b"x"),
                     call(files.alice, "DELETE", "/files/content", params={"path": outside}),
                     call(files.alice, "GET", "/files/archive", params={"path": outside})):
        assert response.status_code == 403, (outside, response.get_json())
        assert "outside your file space" in response.get_json()["msg"]
    assert not os.path.exists(f"{outside.rstrip('/')}/gw-should-not-exist")


@pytest.mark.parametrize("url", ["/file/download/..%2F..%2Fetc%2Fpasswd", "/file/download/../../etc/passwd",
                                 "/file/download/%2e%2e/%2e%2e/etc/passwd", "/file/download//etc/passwd"])
def test_vendor_download_cannot_escape(files, url):
    r = call(files.alice, "GET", url)
    # 308: werkzeug merges the double slash and redirects to a path relative to the home.
    assert r.status_code in (308, 400, 403, 404), (url, r.status_code)
    assert b"root:" not in r.data


def test_vendor_workdir_outside_the_roots_is_forbidden(files):
    r = call(files.alice, "GET", "/file/download/passwd", params={"workdir": "/etc"})
    assert r.status_code == 403 and b"root:" not in r.data, (r.status_code, r.headers, r.data[:300])
    # (/tmp itself may be open: it is the work dir of other tests' jobs; this one is no job's.)
    nojob = f"/tmp/gw-nojob-{uuid.uuid4().hex[:8]}"
    r = call(files.alice, "POST", "/file/upload", params={"workdir": nojob},
             data={"file": (io.BytesIO(b"x"), "gw-nope")}, content_type="multipart/form-data")
    assert r.status_code == 403
    assert not os.path.exists(nojob)


INJECTION_NAMES = ["$(id)", "`id`", "; rm -rf ~", "-rf", "--help", "a b", "'q'", '"dq"', "*", "?",
                   "x|y", "a&b", "<in", ">out", "ünïcødé", "%2e%2e", "\\x", "name;touch gw-pwned", "-"]


def test_shell_metacharacters_are_just_names(files, workdir):
    for i, name in enumerate(INJECTION_NAMES):
        r = upload(files.alice, f"{workdir}/{name}", f"content {i}".encode())
        assert r.status_code == 200, (name, r.get_json())
        assert r.get_json()["data"]["file"]["name"] == name
    assert names(files.alice, workdir) == {".keep", *INJECTION_NAMES}
    for i, name in enumerate(INJECTION_NAMES):
        assert download(files.alice, f"{workdir}/{name}").data == f"content {i}".encode(), name
    for name in INJECTION_NAMES:
        assert call(files.alice, "DELETE", "/files/content", params={"path": f"{workdir}/{name}"}).status_code == 200
    assert names(files.alice, workdir) == {".keep"}
    assert not os.path.exists(os.path.join(workdir, "gw-pwned"))


def test_names_at_the_edges_of_what_tools_print_and_file_systems_hold(files, workdir):
    """A backslash in a name (sha256sum then starts its line with one: was a 502), a name of
    252 bytes in 84 characters (the upload's temporary name was cut by characters and went
    past 255 bytes: was a 404), a loop of symbolic links (was a 502)."""
    data = b"edge\n"
    digest = hashlib.sha256(data).hexdigest()
    back = f"{workdir}/back\\slash.txt"
    assert upload(files.alice, back, data, sha256=digest).status_code == 200
    stat = call(files.alice, "GET", "/files/stat", params={"path": back, "sha256": "true"})
    assert stat.status_code == 200, stat.get_json()
    assert stat.get_json()["data"]["file"]["sha256"] == digest
    wide = "作" * 84
    assert len(wide.encode()) == 252
    r = upload(files.alice, f"{workdir}/{wide}", data)
    assert r.status_code == 200, r.get_json()
    assert download(files.alice, f"{workdir}/{wide}").data == data
    os.symlink("loop-b", f"{workdir}/loop-a")
    os.symlink("loop-a", f"{workdir}/loop-b")
    for response in (download(files.alice, f"{workdir}/loop-a"),
                     call(files.alice, "GET", "/files/stat", params={"path": f"{workdir}/loop-a/x"})):
        assert response.status_code == 409, response.get_json()
        assert "loop" in response.get_json()["msg"]


def test_names_that_are_not_utf8_are_listed_escaped(files, workdir):
    """A name of Latin-1 bytes made on the cluster is listed (as \\udce9, surrogate-escaped),
    beside names in other scripts; the answer is still JSON."""
    open(os.path.join(os.fsencode(workdir), b"caf\xe9-latin1"), "wb").close()
    assert upload(files.alice, f"{workdir}/作业.txt", b"x").status_code == 200
    r = listing(files.alice, workdir)
    assert r.status_code == 200, r.data[:300]
    assert {e["name"] for e in r.get_json()["data"]["entries"]} == {".keep", "caf\udce9-latin1", "作业.txt"}


def test_symbolic_links_cannot_lead_out_of_the_roots(files, workdir):
    os.symlink("/etc", f"{workdir}/etc-link")
    os.symlink("/etc/passwd", f"{workdir}/passwd-link")
    os.symlink(f"{workdir}/real", f"{workdir}/inside-link")
    assert upload(files.alice, f"{workdir}/real/x.txt", b"inside", mkdirs="true").status_code == 200
    for response in (listing(files.alice, f"{workdir}/etc-link"),
                     download(files.alice, f"{workdir}/etc-link/passwd"),
                     download(files.alice, f"{workdir}/passwd-link"),
                     upload(files.alice, f"{workdir}/etc-link/gw-nope", b"x"),
                     call(files.alice, "GET", "/files/archive", params={"path": f"{workdir}/etc-link"})):
        assert response.status_code == 403, response.get_json()
        assert "symbolic links" in response.get_json()["msg"]
    assert not os.path.exists("/etc/gw-nope")
    # Inside the roots a link is fine; listing shows links as links.
    assert download(files.alice, f"{workdir}/inside-link/x.txt").data == b"inside"
    entries = {e["name"]: e for e in listing(files.alice, workdir).get_json()["data"]["entries"]}
    assert entries["etc-link"]["type"] == "symlink" and entries["etc-link"]["targetType"] == "directory"
    # Deleting a link removes the link, never what it points to.
    assert call(files.alice, "DELETE", "/files/content", params={"path": f"{workdir}/passwd-link"}).status_code == 200
    assert os.path.exists("/etc/passwd") and not os.path.lexists(f"{workdir}/passwd-link")
    # Uploading over a link replaces the link with a file (the target is untouched).
    os.symlink("/etc/hostname", f"{workdir}/host-link")
    before = pathlib.Path("/etc/hostname").read_bytes()
    assert upload(files.alice, f"{workdir}/host-link", b"mine", overwrite="true").status_code == 200
    assert pathlib.Path("/etc/hostname").read_bytes() == before
    assert not os.path.islink(f"{workdir}/host-link")


def test_another_users_file_is_protected_by_unix_permissions(files, workdir):
    """Inside alice's own roots, a file of bob's (0600) stays bob's: the OS says no, not the gateway."""
    if not run_as_sudo(files):
        pytest.skip("run_as: service backend: every file operation runs as the one service "
                    "account, so Unix permissions cannot tell alice from bob there")
    bob = pwd.getpwnam(files.users["bob"])
    drop = f"{workdir}/bobs"
    os.mkdir(drop, 0o755)
    with open(f"{drop}/secret", "wb") as fh:
        fh.write(b"bob's secret")
    os.chmod(f"{drop}/secret", 0o600)
    for p in (drop, f"{drop}/secret"):
        os.chown(p, bob.pw_uid, bob.pw_gid)

    entries = {e["name"]: e for e in listing(files.alice, drop).get_json()["data"]["entries"]}
    assert entries["secret"]["owner"] == files.users["bob"] and entries["secret"]["access"] == "---"
    for response in (download(files.alice, f"{drop}/secret"),
                     download(files.alice, f"{drop}/secret", headers={"Range": "bytes=0-3"}),
                     call(files.alice, "GET", "/files/stat", params={"path": f"{drop}/secret", "sha256": "true"}),
                     upload(files.alice, f"{drop}/secret", b"x", overwrite="true"),
                     upload(files.alice, f"{drop}/new", b"x"),
                     call(files.alice, "DELETE", "/files/content", params={"path": f"{drop}/secret"})):
        assert response.status_code == 403, response.get_json()
        assert b"bob's secret" not in response.data
        assert "permission denied" in response.get_json()["msg"]
    assert pathlib.Path(f"{drop}/secret").read_bytes() == b"bob's secret"
    # And bob's own home is not in alice's file space at all.
    bob_home = bob.pw_dir
    assert listing(files.alice, bob_home).status_code == 403
    # What alice uploads is hers.
    r = upload(files.alice, f"{workdir}/mine", b"m")
    assert r.status_code == 200
    stat = call(files.alice, "GET", "/files/stat", params={"path": f"{workdir}/mine"}).get_json()["data"]["file"]
    assert stat["owner"] == files.users["alice"]


def test_bob_cannot_reach_alices_files(files, workdir):
    assert upload(files.alice, f"{workdir}/hers", b"alice only").status_code == 200
    for response in (download(files.bob, f"{workdir}/hers"), listing(files.bob, workdir),
                     call(files.bob, "DELETE", "/files/content", params={"path": f"{workdir}/hers"}),
                     upload(files.bob, f"{workdir}/from-bob", b"x")):
        assert response.status_code == 403, response.get_json()
    assert names(files.alice, workdir) == {".keep", "hers"}


# ------------------------------------------------------------------ integrity
def _leftovers(client, workdir):
    return names(client, workdir) - {".keep"}


def test_sha256_mismatch_keeps_nothing(files, workdir):
    r = upload(files.alice, f"{workdir}/f", b"data", sha256="0" * 64)
    assert r.status_code == 422 and "sha256" in r.get_json()["msg"]
    assert _leftovers(files.alice, workdir) == set()
    # ...and an existing file is left as it was.
    assert upload(files.alice, f"{workdir}/f", b"old").status_code == 200
    assert upload(files.alice, f"{workdir}/f", b"new", overwrite="true", sha256="1" * 64).status_code == 422
    assert download(files.alice, f"{workdir}/f").data == b"old"
    assert _leftovers(files.alice, workdir) == {"f"}


class _Breaks(io.RawIOBase):
    """A request body that fails after ``after`` bytes, like a connection reset."""

    def __init__(self, after: int):
        self.left = after

    def readable(self):
        return True

    def seekable(self):        # the test client measures its input; the length comes from the test
        return True

    def tell(self):
        return 0

    def seek(self, *_):
        return 0

    def readinto(self, buf):
        if self.left <= 0:
            raise ConnectionResetError("client went away")
        n = min(len(buf), self.left, 65536)
        buf[:n] = b"\xab" * n
        self.left -= n
        return n


def test_interrupted_upload_leaves_nothing_behind(files, workdir):
    path = f"{workdir}/big.bin"
    # The body ends before its Content-Length: the client disconnected.
    short = call(files.alice, "PUT", "/files/content", params={"path": path},
                 input_stream=io.BytesIO(b"x" * 300_000), environ_overrides={"CONTENT_LENGTH": "5000000"},
                 headers={"Content-Type": "application/octet-stream"})
    assert short.status_code == 400, short.get_json()
    assert _leftovers(files.alice, workdir) == set()
    # The same as gunicorn hands it over (input marked terminated: the stream just ends).
    ended = call(files.alice, "PUT", "/files/content", params={"path": path},
                 input_stream=io.BytesIO(b"x" * 300_000), headers={"Content-Type": "application/octet-stream"},
                 environ_overrides={"CONTENT_LENGTH": "5000000", "wsgi.input_terminated": True})
    assert ended.status_code == 400 and "interrupted" in ended.get_json()["msg"]
    assert _leftovers(files.alice, workdir) == set()
    # The connection breaks mid-way.
    broken = call(files.alice, "PUT", "/files/content", params={"path": path},
                  input_stream=_Breaks(2_500_000), environ_overrides={"CONTENT_LENGTH": "10000000"},
                  headers={"Content-Type": "application/octet-stream"})
    assert broken.status_code >= 400
    assert _leftovers(files.alice, workdir) == set()
    # A replaced file survives an interrupted replacement untouched.
    assert upload(files.alice, path, b"complete").status_code == 200
    call(files.alice, "PUT", "/files/content", params={"path": path, "overwrite": "true"},
         input_stream=io.BytesIO(b"y" * 100_000), environ_overrides={"CONTENT_LENGTH": "1000000"},
         headers={"Content-Type": "application/octet-stream"})
    assert download(files.alice, path).data == b"complete"
    assert _leftovers(files.alice, workdir) == {"big.bin"}
    # A multipart body cut before its closing boundary.
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.bin\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + b"z" * 200_000)
    cut = call(files.alice, "POST", "/file/upload", params={"workdir": workdir}, data=body,
               headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert cut.status_code == 400, cut.get_json()
    assert _leftovers(files.alice, workdir) == {"big.bin"}


def test_size_limit_answers_413_and_keeps_nothing(files, workdir):
    conf = files.app.extensions["hpc_gateway"].config["files"]
    saved = conf["max_upload_bytes"]
    conf["max_upload_bytes"] = 100_000
    try:
        declared = upload(files.alice, f"{workdir}/big", b"x" * 100_001)
        assert declared.status_code == 413 and "100000" in declared.get_json()["msg"]
        assert upload(files.alice, f"{workdir}/ok", b"x" * 100_000).status_code == 200
        # Chunked (no Content-Length): refused once it grows past the limit.
        chunked = call(files.alice, "PUT", "/files/content", params={"path": f"{workdir}/chunked"},
                       input_stream=io.BytesIO(b"x" * 300_000),
                       headers={"Content-Type": "application/octet-stream"},
                       environ_overrides={"wsgi.input_terminated": True})
        assert chunked.status_code == 413, chunked.get_json()
        assert "the limit is 100000 bytes" in chunked.get_json()["msg"]
        # Under gunicorn (input marked terminated) a body of exactly the limit, declared or
        # chunked, is taken (werkzeug refused the read that found its end: was a 413), and
        # one byte more is not.
        for name, body, length in (("exact", b"x" * 100_000, True), ("exact-chunked", b"x" * 100_000, False),
                                   ("over-chunked", b"x" * 100_001, False)):
            headers = {"Content-Type": "application/octet-stream"}
            if length:
                headers["Content-Length"] = str(len(body))
            r = call(files.alice, "PUT", "/files/content", params={"path": f"{workdir}/{name}"},
                     input_stream=io.BytesIO(body), headers=headers,
                     environ_overrides={"wsgi.input_terminated": True})
            assert r.status_code == (413 if name.startswith("over") else 200), (name, r.get_json())
        # The same for a declared Content-Length one byte over, and for a multipart upload
        # (the limit counts its whole body, boundaries included).
        over = call(files.alice, "PUT", "/files/content", params={"path": f"{workdir}/over-declared"},
                    input_stream=io.BytesIO(b"x" * 100_001),
                    headers={"Content-Type": "application/octet-stream", "Content-Length": "100001"},
                    environ_overrides={"wsgi.input_terminated": True})
        assert over.status_code == 413, over.get_json()
        for name, extra in (("multipart-exact", 0), ("multipart-over", 1)):
            head = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + name.encode()
                    + b"\"\r\nContent-Type: application/octet-stream\r\n\r\n")
            tail = b"\r\n--XyZ--\r\n"
            body = head + b"m" * (100_000 + extra - len(head) - len(tail)) + tail
            assert len(body) == 100_000 + extra
            for declared in (True, False):
                headers = {"Content-Type": "multipart/form-data; boundary=XyZ"}
                if declared:
                    headers["Content-Length"] = str(len(body))
                r = call(files.alice, "POST", "/file/upload", params={"workdir": workdir},
                         input_stream=io.BytesIO(body), headers=headers,
                         environ_overrides={"wsgi.input_terminated": True})
                assert r.status_code == (413 if extra else 200), (name, declared, r.get_json())
    finally:
        conf["max_upload_bytes"] = saved
    assert _leftovers(files.alice, workdir) == {"ok", "exact", "exact-chunked", "multipart-exact"}


# ------------------------------------------------------------------ with jobs
def test_a_job_reads_its_uploaded_input_and_its_output_is_downloaded(files, workdir):
    alice = files.alice
    data = payload(40_000)
    assert upload(alice, f"{workdir}/job/input.bin", data, mkdirs="true").status_code == 200
    script = ("#!/bin/sh\n"
              "sha256sum input.bin | cut -d' ' -f1 > input.sha256\n"
              "wc -c < input.bin | tr -d ' ' > input.size\n"
              "mkdir -p out && for i in 1 2 3; do echo \"line $i\" >> out/grow.txt; sleep 0.2; done\n")
    jid = alice.submit(script=script, workDir=f"{workdir}/job", name="gw-files")
    # Follow the growing output file with Range requests while the job runs.
    got, offset = b"", 0
    for _ in range(600):
        r = call(alice, "GET", "/files/content", params={"jobId": jid, "path": "out/grow.txt"},
                 headers={"Range": f"bytes={offset}-"})
        if r.status_code == 206:
            got += r.data
            offset += len(r.data)
        else:
            assert r.status_code in (404, 416), r.get_json()
        if got.count(b"\n") >= 3:
            break
        if alice.job(jid)["state"] in ("COMPLETED", "FAILED", "CANCELLED") and r.status_code != 206:
            final = call(alice, "GET", "/files/content", params={"jobId": jid, "path": "out/grow.txt"},
                         headers={"Range": f"bytes={offset}-"})
            got += final.data if final.status_code == 206 else b""
            break
    job = alice.wait_for(jid, {"COMPLETED", "FAILED"})
    assert job["state"] == "COMPLETED", job
    assert got == b"line 1\nline 2\nline 3\n"

    r = call(alice, "GET", "/files/content", params={"jobId": jid, "path": "input.sha256"})
    assert r.status_code == 200 and r.data.strip().decode() == hashlib.sha256(data).hexdigest()
    assert call(alice, "GET", "/files/content", params={"jobId": jid, "path": "input.size"}).data.strip() == b"40000"
    assert {"input.bin", "input.sha256", "input.size", "out"} <= {
        e["name"] for e in listing(alice, None, jobId=jid).get_json()["data"]["entries"]}
    archive = call(alice, "GET", "/file/download/all", params={"jobId": jid})
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.data), mode="r:gz") as tar:
        assert any(m.name.endswith("out/grow.txt") for m in tar.getmembers())
    # The job is alice's: bob may not use its work dir.
    assert call(files.bob, "GET", "/files", params={"jobId": jid}).status_code == 403


def test_a_work_dir_outside_the_roots_opens_only_to_the_jobs_own_unix_account(files):
    """jobId= opens a job's work dir as a root where file operations run as the user's own
    Unix account (its permissions still apply). Where users share a service account, it
    would open any directory (workDir: /) as that account: there it stays fenced."""
    alice = files.alice
    outside = f"/tmp/gw-wd-{uuid.uuid4().hex[:8]}"
    os.mkdir(outside, 0o755)
    pathlib.Path(f"{outside}/note.txt").write_bytes(b"outside the roots\n")
    os.chown(outside, pwd.getpwnam(files.users["alice"]).pw_uid, -1)
    jid = alice.submit(command="true", hold=True, workDir=outside, name="gw-outside")
    try:
        r = listing(alice, None, jobId=jid)
        if run_as_sudo(files):
            assert r.status_code == 200, r.get_json()
            assert "note.txt" in {e["name"] for e in r.get_json()["data"]["entries"]}
        else:
            assert r.status_code == 403, r.get_json()
            r = call(alice, "GET", "/files/content", params={"jobId": jid, "path": "note.txt"})
            assert r.status_code == 403 and b"outside the roots" not in r.data
    finally:
        alice.post(f"/jobs/{jid}/kill")
        shutil.rmtree(outside, ignore_errors=True)


def test_files_need_a_token(files):
    r = files.alice.flask.get(PREFIX + "/files")
    assert r.status_code == 401
