"""Each file operation holds a worker thread while it runs: one user may have only
max_file_ops_per_user of them in progress in one process. A helper's review (2026-12-07):
a job that keeps swapping a FIFO for the file made `GET /files/stat?sha256=true` block in
sha256sum until transfer_timeout (3600 s), and about 20 requests held every thread of the
worker (/health and logins of every user got no answer)."""
from __future__ import annotations

import threading

from gateway.auth.users_file import UsersFile
from gateway.files.service import FileSpace
from tests.helpers import ApiClient


def test_a_users_file_operations_beyond_their_share_are_429(make_app, monkeypatch):
    app, admin = make_app(max_file_ops_per_user=2)
    users = UsersFile(app.extensions["hpc_gateway"].config["auth"]["users_file"])
    users.set_password("alice", "alice-password-1")
    alice = ApiClient(app).login("alice", "alice-password-1")
    assert admin.request("PUT", "/files/content", params={"path": "~/f.txt"}, data=b"x").status == 200

    release, inside = threading.Event(), threading.Semaphore(0)
    real_stat = FileSpace.stat

    def stuck_stat(self, given, *, checksum=False):
        if checksum:                            # as sha256sum blocked on a FIFO
            inside.release()
            release.wait(30)
        return real_stat(self, given, checksum=checksum)
    monkeypatch.setattr(FileSpace, "stat", stuck_stat)

    answers = []

    def checksum():
        answers.append(admin.get("/files/stat", params={"path": "~/f.txt", "sha256": "true"}).status)
    threads = [threading.Thread(target=checksum) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        assert inside.acquire(timeout=10) and inside.acquire(timeout=10)   # both hold a slot
        r = admin.get("/files/stat", params={"path": "~/f.txt"})
        assert r.status == 429, r.body
        assert r.headers["Retry-After"] == "5" and "2 of your file operations" in r.body["msg"]
        # Another user, and the admin's other routes, are not held up.
        assert alice.get("/files", params={"path": "~"}).status == 200
        assert admin.get("/health").status == 200
        assert admin.get("/jobs").status == 200
    finally:
        release.set()
        for t in threads:
            t.join(timeout=30)
    assert answers == [200, 200]
    # The slots came back, also from a request that failed (and from the refused one).
    file_ops = app.extensions["hpc_gateway"].file_ops
    assert file_ops.held() == {}, file_ops.held()
    assert admin.get("/files/stat", params={"path": "~/no-such-file"}).status == 404
    assert file_ops.held() == {}, file_ops.held()
    for _ in range(3):
        assert admin.get("/files/stat", params={"path": "~/f.txt", "sha256": "true"}).status == 200
    assert file_ops.held() == {}, file_ops.held()


def test_the_default_share_is_a_quarter_of_a_workers_threads(make_app, monkeypatch):
    monkeypatch.delenv("GATEWAY_THREADS", raising=False)
    assert make_app()[0].extensions["hpc_gateway"].config["max_file_ops_per_user"] == 8
    assert make_app(threads=40)[0].extensions["hpc_gateway"].config["max_file_ops_per_user"] == 10
    assert make_app(threads=4)[0].extensions["hpc_gateway"].config["max_file_ops_per_user"] == 2
    assert make_app(max_file_ops_per_user=0)[0].extensions["hpc_gateway"].config["max_file_ops_per_user"] == 0
