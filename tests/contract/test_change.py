"""The behaviour suite: changing a submitted job (PATCH /jobs/{id}) on every backend."""
from __future__ import annotations

import pathlib
import uuid

import pytest

from tests.contract.conftest import BACKEND_IDS


def _name(prefix="chg"):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _patch(client, jid, body):
    return client.request("PATCH", f"/jobs/{jid}", json=body)


@pytest.fixture
def held(gateway, queues):
    """A held job of alice's in the default queue, with a 30-minute limit; killed at the end."""
    alice = gateway.alice
    jid = alice.submit(command="sleep 60", hold=True, name=_name(), queue=queues[0], timeLimitMinutes=30)
    assert alice.job(jid)["state"] == "HELD"
    yield jid
    alice.post(f"/jobs/{jid}/kill")


def test_a_waiting_job_changes_name_queue_and_time_limit_at_once(gateway, queues, held):
    alice = gateway.alice
    default, other = queues
    assert other != default, "the backend needs two queues"
    new = _name("renamed")
    r = _patch(alice, held, {"name": new, "queue": other, "timeLimitMinutes": 20})
    assert r.status == 200, r.body
    job = r.body["data"]["job"]
    assert (job["jobId"], job["name"], job["queue"], job["timeLimitMinutes"]) == (held, new, other, 20)
    assert job["state"] == "HELD"
    # What the scheduler keeps, not an echo: the detail and the listing say the same.
    again = alice.job(held)
    assert (again["name"], again["queue"], again["timeLimitMinutes"]) == (new, other, 20)
    listed = alice.get("/jobs", params={"name": new}).body["data"]["jobs"]
    assert [j["jobId"] for j in listed] == [held]


def test_an_owner_may_raise_a_waiting_jobs_limit(gateway, held):
    r = _patch(gateway.alice, held, {"timeLimitMinutes": 45})
    assert r.status == 200, r.body
    assert r.body["data"]["job"]["timeLimitMinutes"] == 45


def test_a_limit_beyond_what_the_queue_allows_is_an_administrators(gateway):
    """A queue's limit binds its users (Slurm: a partition's MaxTime), whatever rights the
    account the gateway runs their commands as has; an administrator may go beyond it where
    the scheduler lets one (Slurm's operators, the mock; not LSF)."""
    alice, admin = gateway.alice, gateway.admin
    limited = [q for q in admin.get("/queues").body["data"]["queues"] if q.get("timeLimitMinutes")]
    assert limited, "the backend needs a queue with a time limit"
    queue, most = limited[0]["name"], limited[0]["timeLimitMinutes"]
    jid = alice.submit(command="true", hold=True, name=_name(), queue=queue, timeLimitMinutes=1)
    try:
        r = _patch(alice, jid, {"timeLimitMinutes": most + 1})
        assert r.status == 422 and "timeLimitMinutes" in r.body["errors"], r.body
        assert alice.job(jid)["timeLimitMinutes"] == 1
        assert _patch(alice, jid, {"timeLimitMinutes": most}).status == 200
        r = _patch(admin, jid, {"timeLimitMinutes": most + 1})
        if gateway.backend.startswith("aip"):
            # LSF's RUNLIMIT of a queue is hard for everybody, administrators included
            # ("RUNLIMIT: Cannot exceed queue's hard limit(s)").
            assert r.status == 422 and "timeLimitMinutes" in r.body["errors"], r.body
            assert alice.job(jid)["timeLimitMinutes"] == most
            return
        assert r.status == 200, r.body
        assert alice.job(jid)["timeLimitMinutes"] == most + 1
    finally:
        alice.post(f"/jobs/{jid}/kill")


def test_a_job_moves_into_a_limited_queue_only_with_a_limit_that_fits(gateway):
    """A move takes the job's limit along: a user's job with more time than the new queue
    allows does not get in with it (it would run beyond the queue's limit)."""
    alice = gateway.alice
    qs = alice.get("/queues").body["data"]["queues"]
    limited = next(q for q in qs if q.get("timeLimitMinutes"))
    most = limited["timeLimitMinutes"]
    roomy = next(q["name"] for q in qs if q["name"] != limited["name"]
                 and (q.get("timeLimitMinutes") is None or q["timeLimitMinutes"] > most + 10))
    jid = alice.submit(command="true", hold=True, name=_name(), queue=roomy, timeLimitMinutes=most + 10)
    try:
        r = _patch(alice, jid, {"queue": limited["name"]})
        assert r.status == 422 and "timeLimitMinutes" in r.body["errors"], r.body
        assert alice.job(jid)["queue"] == roomy
        r = _patch(alice, jid, {"queue": limited["name"], "timeLimitMinutes": most})
        assert r.status == 200, r.body
        assert (r.body["data"]["job"]["queue"], r.body["data"]["job"]["timeLimitMinutes"]) == (limited["name"], most)
    finally:
        alice.post(f"/jobs/{jid}/kill")


def test_a_name_with_shell_metacharacters_is_only_a_name(gateway, held):
    # In /tmp, where any account the jobs run as could create it (pytest's tmp_path is 0700).
    marker = pathlib.Path(f"/tmp/gw-change-{uuid.uuid4().hex[:8]}-sentinel")
    name = f"x; touch {marker} $(touch {marker}) `touch {marker}` TimeLimit=1"
    r = _patch(gateway.alice, held, {"name": name})
    assert r.status in (200, 422), r.body
    if r.status == 200:          # a backend may refuse such a name; it must never run it
        job = gateway.alice.job(held)
        assert job["name"] == name
        assert job["timeLimitMinutes"] == 30
    assert not marker.exists()


def test_a_running_jobs_limit_is_lowered_but_not_raised_and_it_is_not_moved(gateway, queues):
    alice, admin = gateway.alice, gateway.admin
    old = _name()
    jid = alice.submit(command="sleep 120", name=old, queue=queues[0], timeLimitMinutes=30)
    try:
        alice.wait_for(jid, "RUNNING")
        new = _name("running")
        r = _patch(alice, jid, {"name": new, "timeLimitMinutes": 10})
        if gateway.backend.startswith("aip"):
            # LSF's bmod changes only limits, output files and resources of a started job
            # ("Only the following parameters can be used to modify a running job"): nothing.
            assert r.status == 409, r.body
            assert (alice.job(jid)["name"], alice.job(jid)["timeLimitMinutes"]) == (old, 30)
            r = _patch(alice, jid, {"timeLimitMinutes": 10})
            new = old
        assert r.status == 200, r.body
        assert (r.body["data"]["job"]["name"], r.body["data"]["job"]["timeLimitMinutes"]) == (new, 10)
        r = _patch(alice, jid, {"queue": queues[1]})
        assert r.status == 409, r.body
        r = _patch(alice, jid, {"queue": queues[0]})          # where it is: nothing to move
        assert r.status == 200, r.body
        r = _patch(alice, jid, {"timeLimitMinutes": 60})
        assert r.status == 403, r.body
        assert alice.job(jid)["timeLimitMinutes"] == 10
        r = _patch(admin, jid, {"timeLimitMinutes": 40})
        assert r.status == 200, r.body
        assert alice.job(jid)["timeLimitMinutes"] == 40
    finally:
        alice.post(f"/jobs/{jid}/kill")


# A minute or more per backend, and the transport plays no part in it; the LSF stand-in
# enforces no limits.
@pytest.mark.parametrize("gateway", [b for b in ("mock", "slurm-local") if b in BACKEND_IDS], indirect=True)
def test_a_lowered_limit_ends_a_running_job(gateway):
    """The limit is the scheduler's, not a label: lowered to a minute, a job that started
    with 30 ends a minute after its start (Slurm: TIMEOUT; the mock: killed at its limit)."""
    alice = gateway.alice
    jid = alice.submit(command="sleep 300", name=_name(), timeLimitMinutes=30)
    alice.wait_for(jid, "RUNNING")
    r = _patch(alice, jid, {"timeLimitMinutes": 1})
    assert r.status == 200, r.body
    job = alice.wait_for(jid, {"FAILED", "CANCELLED", "COMPLETED"}, timeout=150)
    assert job["state"] in ("FAILED", "CANCELLED"), job


def test_changes_that_cannot_be_made(gateway, queues, held):
    alice, bob = gateway.alice, gateway.bob
    cases = [
        ({}, 422), ({"priority": 5}, 422), ({"name": ""}, 422), ({"name": "a\nb"}, 422),
        ({"timeLimitMinutes": 0}, 422), ({"timeLimitMinutes": "10"}, 422), ({"queue": "no such/queue"}, 422),
        ({"queue": "nosuchqueue"}, 422),
    ]
    before = alice.job(held)
    for body, status in cases:
        r = _patch(alice, held, body)
        assert r.status == status, (body, r.body)
        assert r.body["data"] is None and r.body["msg"]
    r = alice.request("PATCH", f"/jobs/{held}", data="{not json", headers={"Content-Type": "application/json"})
    assert r.status == 400, r.body
    r = _patch(bob, held, {"name": "bobs"})
    assert r.status == 403, r.body
    assert _patch(alice, "999999999", {"name": "x"}).status == 404
    assert _patch(alice, "1;id", {"name": "x"}).status == 404
    after = alice.job(held)
    for key in ("name", "queue", "timeLimitMinutes", "state"):
        assert after[key] == before[key], key


def test_an_ended_job_does_not_change(gateway):
    alice = gateway.alice
    jid = alice.submit(command="true", name=_name())
    alice.wait_for(jid, {"COMPLETED", "FAILED"})
    r = _patch(alice, jid, {"name": "late"})
    assert r.status == 409, r.body


def test_an_administrator_changes_anyones_job(gateway, held):
    r = _patch(gateway.admin, held, {"name": "by-admin"})
    assert r.status == 200, r.body
    assert gateway.alice.job(held)["name"] == "by-admin"
