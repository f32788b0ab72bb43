"""The mock backend with run_as: sudo (the gateway as root, jobs as the user): what a user's job
may reach. Each case was a finding of a review: a job's script swapped for a link to a file
only root reads, a job run as root when its user's account was gone, the work dir entered as
root (telling what lies in directories the user cannot open), an admin's read of another
user's output (500), a scriptLocation naming a device or a FIFO."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import time

import pytest

from tests.helpers import ApiClient, ensure_unix_user, require

ALICE = "gwalice"


@pytest.fixture
def sudo_app(make_app, tmp_path):
    require(os.geteuid() == 0, "the mock's run_as: sudo needs root")
    require(ensure_unix_user(ALICE), f"cannot create the Unix user {ALICE}")
    state_dir = tmp_path / "mock"
    app, admin = make_app(scheduler={"backend": "mock", "options": {
        "state_dir": str(state_dir), "slots": 4, "run_as": "sudo"}})
    os.chmod(tmp_path, 0o755)             # (pytest's tmp dirs are 0700; the jobs dir must not need it)
    state = app.extensions["hpc_gateway"]
    state.authenticator.users.set_password(ALICE, "alice-password-1")
    alice = ApiClient(app).login(ALICE, "alice-password-1")
    return app, admin, alice, state_dir


def _db(state_dir):
    return sqlite3.connect(str(state_dir / "jobs.sqlite"), timeout=30)


def _wait_final(client, job_id, timeout=30):
    return client.wait_for(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=timeout)


def test_a_jobs_script_is_the_gateways_and_cannot_be_swapped(sudo_app):
    app, admin, alice, state_dir = sudo_app
    job_id = alice.submit(command="echo hello", hold=True)
    job_dir = state_dir / "jobs" / job_id
    st = os.stat(job_dir)
    assert st.st_uid == 0 and (st.st_mode & 0o777) == 0o700
    assert os.stat(job_dir / "script").st_uid == 0
    swap = subprocess.run(["runuser", "-u", ALICE, "--", "ln", "-sf", "/etc/shadow", str(job_dir / "script")],
                          capture_output=True, text=True)
    assert swap.returncode != 0
    # Even if it were swapped (root does it here), the runner refuses the link.
    os.unlink(job_dir / "script")
    os.symlink("/etc/shadow", job_dir / "script")
    alice.post(f"/jobs/{job_id}/release")
    job = _wait_final(alice, job_id)
    assert job["state"] == "FAILED" and job["exitCode"] == 127, job
    assert "its script" in job["reason"] and "Too many levels of symbolic links" in job["reason"], job
    # ...and the job itself runs as alice, from a descriptor, when nothing was touched.
    ok = alice.submit(command="id -un")
    assert _wait_final(alice, ok)["state"] == "COMPLETED"
    assert alice.output(ok)["data"] == f"{ALICE}\n"


def test_a_job_whose_user_is_gone_does_not_run_as_root(sudo_app, tmp_path):
    app, admin, alice, state_dir = sudo_app
    marker = tmp_path / "ran-as"
    job_id = alice.submit(command=f"id -u > {marker}", hold=True, workDir="/tmp")
    with _db(state_dir) as db:           # the account disappears while the job waits
        db.execute("UPDATE jobs SET user='gw-no-such-user' WHERE id=?", (int(job_id),))
    assert admin.post(f"/jobs/{job_id}/release").status == 200
    job = _wait_final(admin, job_id)
    assert job["state"] == "FAILED" and "no Unix account" in job["reason"], job
    time.sleep(0.5)
    assert not marker.exists()


def test_the_work_dir_is_entered_as_the_user(sudo_app):
    app, admin, alice, state_dir = sudo_app
    os.makedirs("/root/gw-private-dir", exist_ok=True)
    try:
        reasons = {}
        for path in ("/root/gw-private-dir", "/root/gw-no-such-dir"):
            job = _wait_final(alice, alice.submit(command="true", workDir=path))
            assert job["state"] == "FAILED", job
            reasons[path] = job["reason"].replace(path, "PATH")
        # The same answer whether the directory exists or not: alice cannot enter /root.
        assert reasons["/root/gw-private-dir"] == reasons["/root/gw-no-such-dir"]
        assert "Permission denied" in reasons["/root/gw-private-dir"], reasons
    finally:
        os.rmdir("/root/gw-private-dir")


def test_an_admin_reads_another_users_output_as_its_owner(sudo_app):
    app, admin, alice, state_dir = sudo_app
    job_id = alice.submit(command="echo from-alice")
    assert _wait_final(alice, job_id)["state"] == "COMPLETED"
    r = admin.get(f"/jobs/{job_id}/output")          # 'admin' has no Unix account here
    assert r.status == 200 and r.body["data"]["output"]["data"] == "from-alice\n", r.body


def test_script_locations_that_are_not_small_regular_files_are_refused_at_once(sudo_app):
    app, admin, alice, state_dir = sudo_app
    fifo = f"/tmp/gw-fifo-{os.getpid()}"
    os.mkfifo(fifo)
    os.chmod(fifo, 0o666)
    try:
        for path, words in (("/dev/zero", "not a regular file"), (fifo, "not a regular file"),
                            ("/tmp", "not a regular file"), ("/root/.bashrc", "Permission denied")):
            t0 = time.monotonic()
            r = alice.post("/jobs", json={"scriptLocation": path})
            assert r.status == 422 and words in r.body["msg"], (path, r.body)
            assert time.monotonic() - t0 < 5, path
    finally:
        os.unlink(fifo)
