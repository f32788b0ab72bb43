"""The mock backend's job control, where it chooses how a scheduler behaves."""
from __future__ import annotations


def test_a_job_being_killed_takes_no_other_action_and_says_so(make_app):
    """A job that traps SIGTERM keeps running until SIGKILL comes (KILL_GRACE later): the
    kill answers at once with the job still RUNNING, its reason says it is being killed, and
    a second kill or a suspend meanwhile is a 409 (the suspend was accepted, and the job sat
    SUSPENDED until the SIGKILL)."""
    _, client = make_app()
    jid = client.submit(command="trap '' TERM; sleep 60")
    client.wait_for(jid, "RUNNING")
    r = client.post(f"/jobs/{jid}/kill")
    assert r.status == 200, r.body
    job = client.job(jid)                             # within the 5 s grace
    assert job["state"] == "RUNNING" and job["reason"].startswith("Being killed by request"), job
    for action in ("kill", "suspend", "hold", "requeue"):
        r = client.post(f"/jobs/{jid}/{action}")
        assert r.status == 409 and "being killed" in r.body["msg"], (action, r.body)
    assert client.wait_for(jid, "CANCELLED", timeout=30)["state"] == "CANCELLED"


def test_more_nodes_than_the_one_host_is_refused_and_nothing_runs(make_app):
    """The mock is one host: nodes 2 is a 422 (as Slurm's "Requested node configuration is
    not available"), not a job that claims nodes it never had."""
    _, client = make_app()
    r = client.post("/jobs", json={"command": "true", "nodes": 2})
    assert r.status == 422 and "nodes" in r.body["errors"], r.body
    assert client.get("/jobs").body["data"]["total"] == 0
    jid = client.submit(command="true", nodes=1)
    assert client.wait_for(jid, "COMPLETED")["nodes"] == 1


def test_a_change_while_being_killed_is_a_409(make_app):
    _, client = make_app()
    jid = client.submit(command="trap '' TERM; sleep 60")
    client.wait_for(jid, "RUNNING")
    assert client.post(f"/jobs/{jid}/kill").status == 200
    r = client.request("PATCH", f"/jobs/{jid}", json={"name": "late"})
    assert r.status == 409 and "being killed" in r.body["msg"], r.body
    assert client.wait_for(jid, "CANCELLED", timeout=30)["name"] != "late"


def test_a_submission_beyond_the_queues_limit_is_refused_to_users(make_app):
    """As a Slurm partition's MaxTime, an LSF queue's RUNLIMIT, and PATCH here: short allows
    60 minutes; a user's 61 is a 422 and nothing is queued; an administrator's is taken."""
    from gateway.auth.users_file import UsersFile
    from tests.helpers import ApiClient
    app, admin = make_app()
    UsersFile(app.extensions["hpc_gateway"].config["auth"]["users_file"]).set_password("carol", "carol-password-1")
    carol = ApiClient(app).login("carol", "carol-password-1")
    r = carol.post("/jobs", json={"command": "true", "queue": "short", "timeLimitMinutes": 61, "hold": True})
    assert r.status == 422 and "timeLimitMinutes" in r.body["errors"], r.body
    assert carol.get("/jobs").body["data"]["total"] == 0
    assert carol.submit(command="true", queue="short", timeLimitMinutes=60, hold=True)
    assert admin.submit(command="true", queue="short", timeLimitMinutes=61, hold=True)


def test_cpus_and_cpus_per_task_mean_what_they_mean_on_slurm(make_app):
    """cpus is the job's total, a multiple of cpusPerTask (slurm_ssm: --ntasks=cpus/cpusPerTask);
    cpusPerTask alone is one task that wide and holds that many slots: {cpusPerTask: 6} on
    4 slots was accepted, and {cpus: 3, cpusPerTask: 2} too."""
    _, client = make_app()                                   # 4 slots
    r = client.post("/jobs", json={"command": "true", "cpus": 3, "cpusPerTask": 2})
    assert r.status == 422 and r.body["errors"] == {"cpus": ["must be a multiple of cpusPerTask"]}, r.body
    r = client.post("/jobs", json={"command": "true", "cpusPerTask": 6})
    assert r.status == 422 and "cpusPerTask" in r.body["errors"] and "6 CPUs" in r.body["msg"], r.body
    assert client.job(client.submit(command="true", cpus=4, cpusPerTask=2, hold=True))["cpus"] == 4
    assert client.job(client.submit(command="true", cpusPerTask=3, hold=True))["cpus"] == 3


def test_a_dependency_on_a_job_that_does_not_exist_is_refused(make_app):
    """As Slurm's "Job dependency problem": it ran at once (an unknown job counted as done)."""
    _, client = make_app()
    r = client.post("/jobs", json={"command": "true", "dependency": "afterok:99999"})
    assert r.status == 422 and "dependency" in r.body["errors"] and "99999" in r.body["msg"], r.body
    assert client.get("/jobs").body["data"]["total"] == 0
    parent = client.submit(command="true", hold=True)
    child = client.submit(command="true", dependency=f"afterok:{parent}")
    assert client.job(child)["state"] == "PENDING"


def test_a_job_waiting_on_a_closed_host_or_an_inactive_queue_says_why(make_app):
    _, client = make_app()
    host = client.get("/hosts").body["data"]["hosts"][0]["name"]
    assert client.post(f"/hosts/{host}/close").status == 200
    jid = client.submit(command="true")
    assert client.job(jid)["state"] == "PENDING" and client.job(jid)["reason"] == "HostClosed"
    assert client.post(f"/hosts/{host}/open").status == 200
    assert client.wait_for(jid, "COMPLETED")["reason"] is None
    busy = client.submit(command="sleep 30", cpus=4)          # every slot taken
    client.wait_for(busy, "RUNNING")
    assert client.post(f"/hosts/{host}/close").status == 200
    waiting = client.submit(command="true")
    assert client.job(waiting)["reason"] == "HostClosed"
    assert client.post(f"/hosts/{host}/open").status == 200
    assert client.job(waiting)["reason"] != "HostClosed", client.job(waiting)   # no slot: not stale
    assert client.post(f"/jobs/{busy}/kill").status == 200
    client.wait_for(waiting, "COMPLETED")
    assert client.post("/queues/short/inactivate").status == 200
    jid = client.submit(command="true", queue="short")
    assert client.job(jid)["reason"] == "QueueInactive", client.job(jid)
    assert client.post("/queues/short/activate").status == 200
    assert client.wait_for(jid, "COMPLETED")["state"] == "COMPLETED"
