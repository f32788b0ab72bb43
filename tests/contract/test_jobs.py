"""The behaviour suite: what every scheduler plugin must do, seen through the API."""
from __future__ import annotations

import uuid

import pytest

SCRIPT_OK = "#!/bin/bash\necho \"out:$(whoami)\"\necho 'err line' >&2\n"


def _name(prefix="t"):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_script_job_runs_to_completion_with_its_output(gateway):
    alice = gateway.alice
    jid = alice.submit(script=SCRIPT_OK, name=_name())
    job = alice.wait_for(jid, {"COMPLETED", "FAILED"})
    assert job["state"] == "COMPLETED", job
    assert job["exitCode"] == 0
    assert job["userName"] == gateway.users["alice"]
    assert job["nativeState"]
    out = alice.output(jid)
    assert "out:" in out["data"]
    assert out["nextOffset"] == len(out["data"].encode())
    assert "err line" in alice.output(jid, stream="stderr")["data"]


def test_failed_job_carries_its_real_exit_code(gateway):
    jid = gateway.alice.submit(script="#!/bin/sh\nexit 3\n", name=_name())
    job = gateway.alice.wait_for(jid, {"COMPLETED", "FAILED"})
    assert job["state"] == "FAILED"
    assert job["exitCode"] == 3


def test_command_job_gets_environment_and_work_dir(gateway):
    alice = gateway.alice
    out = f"/tmp/{_name('gwout')}.txt"     # /tmp is shared by every backend: a unique name
    jid = alice.submit(command='echo "v=$GW_TEST_VAR"; pwd', environment={"GW_TEST_VAR": "a,b c;d"},
                       workDir="/tmp", stdout=out, name=_name())
    job = alice.wait_for(jid, {"COMPLETED", "FAILED"})
    assert job["state"] == "COMPLETED", job
    data = alice.output(jid)["data"]
    assert "v=a,b c;d" in data
    assert "/tmp" in data
    assert job["workDir"] == "/tmp"
    assert job["stdoutPath"] == out


def test_output_reads_from_an_offset_with_a_limit(gateway):
    alice = gateway.alice
    jid = alice.submit(script="#!/bin/sh\nprintf 0123456789\n", name=_name())
    alice.wait_for(jid, "COMPLETED")
    part = alice.output(jid, offset=3, limit=4)
    assert part["data"] == "3456"
    assert part["nextOffset"] == 7
    rest = alice.output(jid, offset=part["nextOffset"])
    assert rest["data"] == "789"


def test_long_poll_answers_when_the_state_changes(gateway):
    alice = gateway.alice
    jid = alice.submit(command="sleep 3", name=_name())
    job = alice.job(jid)
    seen = job["state"]
    # A wait far longer than the job: the answer must come with a new state.
    changed = alice.job(jid, wait=30, since=seen)
    assert changed["state"] != seen
    final = alice.wait_for(jid, {"COMPLETED", "FAILED"})
    assert final["state"] == "COMPLETED"


def test_long_poll_times_out_with_the_state_unchanged(gateway):
    alice = gateway.alice
    jid = alice.submit(command="true", hold=True, name=_name())
    assert alice.job(jid)["state"] == "HELD"
    assert alice.job(jid, wait=1)["state"] == "HELD"
    assert gateway.alice.post(f"/jobs/{jid}/kill").status == 200


def test_kill_a_running_job(gateway):
    alice = gateway.alice
    jid = alice.submit(command="sleep 120", name=_name())
    alice.wait_for(jid, "RUNNING")
    r = alice.post(f"/jobs/{jid}/kill")
    assert r.status == 200, r.body
    assert r.body["data"]["action"] == "kill"
    job = alice.wait_for(jid, {"CANCELLED", "FAILED", "COMPLETED"})
    assert job["state"] == "CANCELLED"


def test_kill_a_pending_job(gateway):
    alice = gateway.alice
    jid = alice.submit(command="true", hold=True, name=_name())
    assert alice.post(f"/jobs/{jid}/kill").status == 200
    assert alice.wait_for(jid, {"CANCELLED", "FAILED", "COMPLETED"})["state"] == "CANCELLED"


def test_suspend_and_resume(gateway):
    alice = gateway.alice
    jid = alice.submit(command="sleep 120", name=_name())
    alice.wait_for(jid, "RUNNING")
    assert alice.post(f"/jobs/{jid}/suspend").status == 200
    assert alice.wait_for(jid, "SUSPENDED")["state"] == "SUSPENDED"
    r = alice.post(f"/jobs/{jid}/suspend")
    assert r.status == 409, r.body
    assert alice.post(f"/jobs/{jid}/resume").status == 200
    assert alice.wait_for(jid, "RUNNING")["state"] == "RUNNING"
    assert alice.post(f"/jobs/{jid}/kill").status == 200
    alice.wait_for(jid, "CANCELLED")


def test_a_job_an_administrator_suspended_is_theirs_to_resume(gateway):
    alice, admin = gateway.alice, gateway.admin
    jid = alice.submit(command="sleep 120", name=_name())
    alice.wait_for(jid, "RUNNING")
    assert admin.post(f"/jobs/{jid}/suspend").status == 200
    alice.wait_for(jid, "SUSPENDED")
    if not gateway.backend.startswith("aip"):
        # LSF decides this itself (bresume); the stand-in does not model it.
        r = alice.post(f"/jobs/{jid}/resume")
        assert r.status == 403, r.body
        assert alice.job(jid)["state"] == "SUSPENDED"
    assert admin.post(f"/jobs/{jid}/resume").status == 200
    alice.wait_for(jid, "RUNNING")
    assert alice.post(f"/jobs/{jid}/kill").status == 200
    alice.wait_for(jid, {"CANCELLED", "FAILED", "COMPLETED"})


def test_hold_and_release(gateway):
    alice = gateway.alice
    jid = alice.submit(command="echo released", hold=True, name=_name())
    job = alice.job(jid)
    assert job["state"] == "HELD", job
    assert job["nativeState"]
    assert alice.post(f"/jobs/{jid}/release").status == 200
    assert alice.wait_for(jid, {"COMPLETED", "FAILED"})["state"] == "COMPLETED"
    assert "released" in alice.output(jid)["data"]


def test_hold_a_pending_job_then_release(gateway):
    alice = gateway.alice
    blocker = alice.submit(command="sleep 60", hold=True, name=_name())
    jid = alice.submit(command="echo after", name=_name(), dependency=f"afterany:{blocker}")
    assert alice.job(jid)["state"] == "PENDING"
    assert alice.post(f"/jobs/{jid}/hold").status == 200
    assert alice.wait_for(jid, "HELD")["state"] == "HELD"
    assert alice.post(f"/jobs/{jid}/release").status == 200
    assert alice.wait_for(jid, "PENDING")["state"] == "PENDING"
    for j in (jid, blocker):
        assert alice.post(f"/jobs/{j}/kill").status == 200


def test_dependency_runs_after_its_parent(gateway):
    alice = gateway.alice
    parent = alice.submit(command="sleep 2; echo parent", name=_name())
    child = alice.submit(command="echo child", name=_name(), dependency=f"afterok:{parent}")
    assert alice.job(child)["state"] in ("PENDING", "HELD")
    assert alice.wait_for(child, {"COMPLETED", "FAILED"}, timeout=120)["state"] == "COMPLETED"
    assert alice.job(parent)["state"] == "COMPLETED"


def test_requeue_a_running_job(gateway):
    alice = gateway.alice
    jid = alice.submit(command="sleep 120", name=_name())
    alice.wait_for(jid, "RUNNING")
    r = alice.post(f"/jobs/{jid}/requeue")
    assert r.status == 200, r.body
    # Requeued: it goes back to waiting (or straight to running again) and is not final.
    job = alice.job(jid)
    assert job["state"] in ("PENDING", "RUNNING", "HELD"), job
    assert alice.post(f"/jobs/{jid}/kill").status in (200, 409)
    alice.wait_for(jid, {"CANCELLED", "FAILED"}, timeout=120)


def test_actions_invalid_in_the_state_answer_409(gateway):
    alice = gateway.alice
    jid = alice.submit(command="true", name=_name())
    alice.wait_for(jid, "COMPLETED")
    for action in ("kill", "suspend", "resume", "hold", "release"):
        r = alice.post(f"/jobs/{jid}/{action}")
        assert r.status == 409, (action, r.body)
        assert r.body["data"] is None and r.body["msg"]
    running = alice.submit(command="sleep 60", name=_name())
    alice.wait_for(running, "RUNNING")
    assert alice.post(f"/jobs/{running}/resume").status == 409
    assert alice.post(f"/jobs/{running}/release").status == 409
    assert alice.post(f"/jobs/{running}/kill").status == 200


def test_unknown_jobs_answer_404(gateway):
    for jid in ("999999999", "nope", "12345678901234567890123"):
        r = gateway.alice.get(f"/jobs/{jid}")
        assert r.status == 404, r.body
        assert r.body["msg"]
    assert gateway.alice.post("/jobs/999999999/kill").status == 404
    assert gateway.alice.get("/jobs/999999999/output").status == 404


def test_listing_filters_and_pagination(gateway, queues):
    alice = gateway.alice
    default, other = queues
    tag = _name("list")
    held = [alice.submit(command="true", hold=True, name=tag, queue=default) for _ in range(3)]
    other_q = alice.submit(command="true", hold=True, name=tag, queue=other)
    try:
        r = alice.get("/jobs", params={"name": tag})
        assert r.status == 200
        ids = [j["jobId"] for j in r.body["data"]["jobs"]]
        assert set(ids) == set(held + [other_q])
        assert r.body["data"]["total"] == 4
        # newest first
        assert ids[0] == other_q
        r = alice.get("/jobs", params={"name": tag, "queue": other})
        assert [j["jobId"] for j in r.body["data"]["jobs"]] == [other_q]
        r = alice.get("/jobs", params={"name": tag, "state": "HELD", "limit": 2, "offset": 0})
        page1 = [j["jobId"] for j in r.body["data"]["jobs"]]
        r = alice.get("/jobs", params={"name": tag, "state": "HELD", "limit": 2, "offset": 2})
        page2 = [j["jobId"] for j in r.body["data"]["jobs"]]
        assert len(page1) == 2 and len(page2) == 2 and not set(page1) & set(page2)
        assert alice.get("/jobs", params={"name": tag, "state": "RUNNING"}).body["data"]["total"] == 0
        # several states: repeated, or separated by commas (as documented)
        for params in ({"name": tag, "state": "RUNNING,HELD"}, {"name": tag, "state": ["RUNNING", "HELD"]}):
            assert alice.get("/jobs", params=params).body["data"]["total"] == 4, params
        assert alice.get("/jobs", params={"state": "BOGUS"}).status == 422
        assert alice.get("/jobs", params={"state": "HELD,BOGUS"}).status == 422
    finally:
        for jid in held + [other_q]:
            alice.post(f"/jobs/{jid}/kill")


def test_users_see_and_control_only_their_own_jobs(gateway):
    alice, bob, admin = gateway.alice, gateway.bob, gateway.admin
    jid = alice.submit(command="sleep 60", hold=True, name=_name())
    assert bob.get(f"/jobs/{jid}").status == 403
    assert bob.get(f"/jobs/{jid}/output").status == 403
    for action in ("kill", "suspend", "resume", "requeue", "hold", "release"):
        r = bob.post(f"/jobs/{jid}/{action}")
        assert r.status == 403, (action, r.body)
    assert alice.job(jid)["state"] == "HELD"          # nothing happened to it
    assert jid not in [j["jobId"] for j in bob.get("/jobs", params={"limit": 1000}).body["data"]["jobs"]]
    assert bob.get("/jobs", params={"user": gateway.users["alice"]}).status == 403
    # The admin sees and controls everyone's jobs.
    assert admin.get(f"/jobs/{jid}").status == 200
    listed = admin.get("/jobs", params={"user": gateway.users["alice"], "limit": 1000}).body["data"]["jobs"]
    assert jid in [j["jobId"] for j in listed]
    assert admin.post(f"/jobs/{jid}/kill").status == 200
    assert alice.wait_for(jid, "CANCELLED")["state"] == "CANCELLED"


def test_cluster_hosts_queues_users(gateway):
    alice = gateway.alice
    cluster = alice.get("/cluster").body["data"]["cluster"]
    assert cluster["hosts"] >= 1 and cluster["scheduler"]
    hosts = alice.get("/hosts").body["data"]["hosts"]
    assert hosts and all(h["name"] and h["state"] for h in hosts)
    name = hosts[0]["name"]
    assert alice.get(f"/hosts/{name}").body["data"]["host"]["name"] == name
    assert alice.get("/hosts/no-such-host").status == 404
    queues = alice.get("/queues").body["data"]["queues"]
    assert queues and all("open" in q and "active" in q for q in queues)
    assert alice.get(f"/queues/{queues[0]['name']}").status == 200
    assert alice.get("/queues/no-such-queue").status == 404
    jid = alice.submit(command="true", hold=True, name=_name())
    users = alice.get("/users").body["data"]["users"]
    me = next(u for u in users if u["name"] == gateway.users["alice"])
    assert me["njobs"] >= 1 and me["pending"] >= 1
    assert alice.get(f"/users/{gateway.users['alice']}").status == 200
    alice.post(f"/jobs/{jid}/kill")


def test_only_admins_open_and_close_queues_and_hosts(gateway, queues):
    alice, admin = gateway.alice, gateway.admin
    _, other = queues
    host = alice.get("/hosts").body["data"]["hosts"][0]["name"]
    for path in (f"/queues/{other}/close", f"/queues/{other}/inactivate", f"/hosts/{host}/close"):
        r = alice.post(path)
        assert r.status == 403, (path, r.body)
    r = admin.post(f"/queues/{other}/close")
    assert r.status == 200, r.body
    assert r.body["data"]["queue"]["open"] is False
    r = alice.post("/jobs", json={"command": "true", "queue": other})
    assert r.status in (409, 422, 502), r.body      # a closed queue takes no job
    r = admin.post(f"/queues/{other}/open")
    assert r.body["data"]["queue"]["open"] is True
    r = admin.post(f"/hosts/{host}/close")
    assert r.status == 200, r.body
    assert r.body["data"]["host"]["state"] == "closed"
    r = admin.post(f"/hosts/{host}/open")
    assert r.body["data"]["host"]["state"] == "ok"


def test_health_answers_without_a_token(gateway):
    r = gateway.client().get("/health")
    assert r.status == 200, r.body
    assert r.body["data"]["health"]["scheduler"]["ok"] is True


@pytest.mark.parametrize("bad", [
    {"command": "true", "nativeOptions": ["--definitely-not-allowed"]},
    {"command": "true", "queue": "no-such-queue"},
])
def test_refused_submissions_answer_422(gateway, bad):
    r = gateway.alice.post("/jobs", json=bad)
    assert r.status == 422, r.body
    assert r.body["msg"] and r.body["data"] is None


def test_script_locations_that_are_not_small_regular_files_answer_422_at_once(gateway, tmp_path):
    """A device, a FIFO or a directory would fill or hold the reader (sbatch, head) until its
    command timeout; a file over 1 MiB is no script. Nothing is submitted."""
    import os
    import time
    big = f"/tmp/gw-big-script-{os.getpid()}.sh"
    with open(big, "wb") as fh:
        fh.write(b"#!/bin/sh\n" + b"#" * (1024 * 1024))
    os.chmod(big, 0o644)
    fifo = f"/tmp/gw-fifo-script-{os.getpid()}"
    os.mkfifo(fifo)
    os.chmod(fifo, 0o666)
    before = gateway.alice.get("/jobs", params={"limit": 1000}).body["data"]
    try:
        for path, words in (("/dev/zero", "not a regular file"), (fifo, "not a regular file"),
                            ("/tmp", "not a regular file"), (big, "more than 1048576"),
                            ("/nonexistent/gw-script.sh", "No such file")):
            t0 = time.monotonic()
            r = gateway.alice.post("/jobs", json={"scriptLocation": path})
            assert r.status == 422 and words in r.body["msg"], (path, r.body)
            assert time.monotonic() - t0 < 10, path
    finally:
        os.unlink(big)
        os.unlink(fifo)
    assert gateway.alice.get("/jobs", params={"limit": 1000}).body["data"]["total"] == before["total"]

