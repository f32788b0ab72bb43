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
