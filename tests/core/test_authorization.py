"""The authorization matrix: users see and control only their own jobs; admins everything;
only admins open and close hosts and queues."""
from __future__ import annotations

import itertools

import pytest

from gateway.auth.users_file import UsersFile
from gateway.models import HOST_ACTIONS, JOB_ACTIONS, QUEUE_ACTIONS
from tests.helpers import ApiClient

USERS = ("alice", "bob")


@pytest.fixture
def world(make_app, tmp_path):
    def build(**cfg):
        app, admin = make_app(**cfg)
        users = UsersFile(app.extensions["hpc_gateway"].config["auth"]["users_file"])
        clients = {"admin": admin}
        for name in USERS:
            users.set_password(name, f"{name}-password-1")
            clients[name] = ApiClient(app).login(name, f"{name}-password-1")
        jobs = {name: clients[name].submit(command="sleep 60", hold=True, name=f"{name}-job") for name in USERS}
        return clients, jobs
    return build


@pytest.mark.parametrize("actor, owner", [p for p in itertools.permutations(USERS, 2)])
@pytest.mark.parametrize("action", JOB_ACTIONS)
def test_a_user_cannot_act_on_another_users_job(world, actor, owner, action):
    clients, jobs = world()
    before = clients[owner].job(jobs[owner])
    r = clients[actor].post(f"/jobs/{jobs[owner]}/{action}")
    assert r.status == 403, r.body
    assert owner in r.body["msg"]
    assert clients[owner].job(jobs[owner])["state"] == before["state"]


@pytest.mark.parametrize("actor, owner", [p for p in itertools.permutations(USERS, 2)])
def test_a_user_cannot_see_another_users_job(world, actor, owner):
    clients, jobs = world()
    c = clients[actor]
    assert c.get(f"/jobs/{jobs[owner]}").status == 403
    assert c.get(f"/jobs/{jobs[owner]}/output").status == 403
    listed = [j["jobId"] for j in c.get("/jobs").body["data"]["jobs"]]
    assert listed == [jobs[actor]]
    assert c.get("/jobs", params={"user": owner}).status == 403
    assert c.get("/jobs", params={"user": "all"}).status == 403


@pytest.mark.parametrize("action", JOB_ACTIONS)
def test_an_admin_may_act_on_every_job(world, action):
    clients, jobs = world()
    for owner in USERS:
        r = clients["admin"].post(f"/jobs/{jobs[owner]}/{action}")
        assert r.status in (200, 409), r.body     # 409: not valid in the job's state, never 403


def test_an_admin_sees_every_job(world):
    clients, jobs = world()
    listed = {j["jobId"] for j in clients["admin"].get("/jobs").body["data"]["jobs"]}
    assert set(jobs.values()) <= listed
    for owner in USERS:
        assert clients["admin"].get(f"/jobs/{jobs[owner]}").status == 200
        assert clients["admin"].get(f"/jobs/{jobs[owner]}/output").status == 200


def test_list_all_jobs_widens_seeing_but_not_controlling(world):
    clients, jobs = world(list_all_jobs=True)
    bob = clients["bob"]
    assert bob.get(f"/jobs/{jobs['alice']}").status == 200
    assert jobs["alice"] in {j["jobId"] for j in bob.get("/jobs", params={"user": "all"}).body["data"]["jobs"]}
    r = bob.post(f"/jobs/{jobs['alice']}/kill")
    assert r.status == 403 and "you may only control your own jobs" in r.body["msg"]
    r = bob.get(f"/jobs/{jobs['alice']}/output")
    assert r.status == 403 and "you may only read the output of your own jobs" in r.body["msg"]


def test_only_admins_run_host_and_queue_actions(world):
    clients, _ = world()
    host = clients["admin"].get("/hosts").body["data"]["hosts"][0]["name"]
    for user in USERS:
        for action in HOST_ACTIONS:
            assert clients[user].post(f"/hosts/{host}/{action}").status == 403
        for action in QUEUE_ACTIONS:
            assert clients[user].post(f"/queues/short/{action}").status == 403
    for action in ("close", "open"):
        assert clients["admin"].post(f"/hosts/{host}/{action}").status == 200
    for action in ("close", "open", "inactivate", "activate"):
        assert clients["admin"].post(f"/queues/short/{action}").status == 200


@pytest.mark.parametrize("actor, owner", [p for p in itertools.permutations(USERS, 2)])
def test_a_user_cannot_change_another_users_job(world, actor, owner):
    clients, jobs = world()
    r = clients[actor].request("PATCH", f"/jobs/{jobs[owner]}", json={"name": "taken", "timeLimitMinutes": 1})
    assert r.status == 403, r.body
    job = clients[owner].job(jobs[owner])
    assert (job["name"], job["timeLimitMinutes"]) == (f"{owner}-job", None)
    r = clients["admin"].request("PATCH", f"/jobs/{jobs[owner]}", json={"name": "by-admin"})
    assert r.status == 200 and clients[owner].job(jobs[owner])["name"] == "by-admin"


def test_oneself_without_jobs_is_zero_counts_and_a_stranger_a_404(world):
    clients, _ = world()
    me = clients["admin"].get("/users/admin")          # the admin has submitted nothing
    assert me.status == 200 and me.body["data"]["user"] == {
        "name": "admin", "njobs": 0, "pending": 0, "running": 0, "suspended": 0, "maxJobs": None}, me.body
    assert clients["alice"].get("/users/alice").body["data"]["user"]["pending"] == 1
    assert clients["alice"].get("/users/nobody-by-this-name").status == 404
