"""Idempotent submission (Idempotency-Key on POST /jobs), on both session stores.

What a retry sees in every state a key can be left in: answered, in progress, interrupted
with nothing at the scheduler (taken over and submitted once), interrupted with a job at the
scheduler (409 naming it, nothing submitted), refused (key freed), ambiguous error (settles
after a short grace). The multi-replica, SIGKILL version of this is tests/deploy/test_ha.py.
"""
from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from gateway.errors import SchedulerTimeout
from tests.helpers import ApiClient


@pytest.fixture(params=["sqlite", "redis"])
def gateway(request, make_app):
    overrides = {}
    if request.param == "redis":
        overrides["session_store"] = request.getfixturevalue("redis_server").url
    app, admin = make_app(**overrides)
    return app, admin


def _post(client, key, **spec):
    body = {"command": "true", **spec}
    return client.post("/jobs", json=body, headers={"Idempotency-Key": key})


def _jobs_named(client, name) -> list[str]:
    r = client.get("/jobs", params={"name": name, "user": "all", "limit": 1000})
    assert r.status == 200, r.body
    return [j["jobId"] for j in r.body["data"]["jobs"]]


def _store(app):
    return app.extensions["hpc_gateway"].store


def _leave_pending(app, user, key, since, settle):
    """What a replica SIGKILLed after claiming the key leaves behind."""
    record = json.dumps({"state": "pending", "since": since, "settle": settle, "by": "dead-replica:1:x"})
    assert _store(app).remember(f"idem:{user}:{key}", record, 3600) is None


def test_a_retry_answers_the_first_job_and_submits_nothing(gateway):
    app, admin = gateway
    key, name = uuid.uuid4().hex, f"idem-{uuid.uuid4().hex[:12]}"
    first = _post(admin, key, name=name)
    assert first.status == 200, first.body
    job_id = first.body["data"]["job"]["jobId"]
    for _ in range(3):
        again = _post(admin, key, name=name)
        assert again.status == 200, again.body
        assert again.body["data"]["job"]["jobId"] == job_id
    assert _jobs_named(admin, name) == [job_id]


def test_keys_belong_to_their_user(gateway, tmp_path):
    app, admin = gateway
    users = app.extensions["hpc_gateway"].authenticator.users
    users.set_password("carol", "carol-password-1")
    carol = ApiClient(app).login("carol", "carol-password-1")
    key = uuid.uuid4().hex
    a = _post(admin, key, name="same-key-admin")
    c = _post(carol, key, name="same-key-admin")      # same key and body, another user
    assert a.status == c.status == 200
    assert a.body["data"]["job"]["jobId"] != c.body["data"]["job"]["jobId"]


def test_the_same_key_with_another_request_is_refused(gateway):
    app, admin = gateway
    key = uuid.uuid4().hex
    assert _post(admin, key, name="first-body").status == 200
    other = _post(admin, key, name="second-body")
    assert other.status == 422, other.body
    assert "different request" in other.msg
    assert _jobs_named(admin, "second-body") == []


def test_concurrent_retries_create_one_job(gateway):
    app, admin = gateway
    key, name = uuid.uuid4().hex, f"race-{uuid.uuid4().hex[:12]}"
    answers, barrier = [], threading.Barrier(8)

    def attempt():
        client = ApiClient(app, token=admin.token)
        barrier.wait()
        deadline = time.monotonic() + 30
        while True:
            r = _post(client, key, name=name)
            if r.status != 409 or time.monotonic() > deadline:
                answers.append(r)
                return
            time.sleep(float(r.headers.get("Retry-After", "1")) / 10)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.status for r in answers] == [200] * 8, answers
    ids = {r.body["data"]["job"]["jobId"] for r in answers}
    assert len(ids) == 1
    assert _jobs_named(admin, name) == list(ids)


def test_a_submission_in_progress_answers_409_with_retry_after(gateway):
    app, admin = gateway
    key, now = uuid.uuid4().hex, time.time()
    _leave_pending(app, "admin", key, since=now, settle=now + 300)
    r = _post(admin, key, name="in-progress")
    assert r.status == 409, r.body
    assert "in progress" in r.msg
    assert 1 <= int(r.headers["Retry-After"]) <= 5
    assert r.body["errors"]["Idempotency-Key"] == ["in progress"]
    assert _jobs_named(admin, "in-progress") == []


def test_an_interrupted_submission_that_never_reached_the_scheduler_is_submitted_once(gateway):
    app, admin = gateway
    key, name, now = uuid.uuid4().hex, f"orphan-{uuid.uuid4().hex[:12]}", time.time()
    _leave_pending(app, "admin", key, since=now - 400, settle=now - 100)
    r = _post(admin, key, name=name)
    assert r.status == 200, r.body
    job_id = r.body["data"]["job"]["jobId"]
    assert _post(admin, key, name=name).body["data"]["job"]["jobId"] == job_id
    assert _jobs_named(admin, name) == [job_id]


def test_an_interrupted_submission_that_reached_the_scheduler_is_not_submitted_again(gateway):
    app, admin = gateway
    key, name, now = uuid.uuid4().hex, f"reached-{uuid.uuid4().hex[:12]}", time.time()
    _leave_pending(app, "admin", key, since=now - 2, settle=now - 1)
    # The dead replica's job: at the scheduler, its id never recorded under the key.
    landed = admin.submit(command="true", name=name)
    for _ in range(2):
        r = _post(admin, key, name=name)
        assert r.status == 409, r.body
        assert r.body["errors"]["candidates"] == [landed]
        assert landed in r.msg and "new key" in r.msg
    assert _jobs_named(admin, name) == [landed]


def test_older_jobs_of_the_same_name_are_not_candidates(gateway):
    app, admin = gateway
    name = f"older-{uuid.uuid4().hex[:12]}"
    admin.submit(command="true", name=name)          # long before the interrupted attempt
    key, now = uuid.uuid4().hex, time.time()
    _leave_pending(app, "admin", key, since=now + 120, settle=now - 1)   # (clock skew margin: 30 s)
    r = _post(admin, key, name=name)
    assert r.status == 200, r.body
    assert len(_jobs_named(admin, name)) == 2


def test_a_refusal_frees_the_key(gateway):
    app, admin = gateway
    key = uuid.uuid4().hex
    bad = _post(admin, key, name="refused", queue="no-such-queue")
    assert bad.status == 422, bad.body
    assert _store(app).remember(f"idem:admin:{key}", "probe", 60) is None    # nothing left behind
    _store(app).forget(f"idem:admin:{key}")
    good = _post(admin, key, name="refused")
    assert good.status == 200, good.body


def test_an_ambiguous_error_keeps_the_key_and_settles_after_a_short_grace(gateway, monkeypatch):
    app, admin = gateway
    key, name = uuid.uuid4().hex, f"timeout-{uuid.uuid4().hex[:12]}"
    scheduler = app.extensions["hpc_gateway"].scheduler
    real_call = scheduler.call

    def timing_out(hook, **kw):
        if hook == "submit_job":
            raise SchedulerTimeout("sbatch did not answer within 20 s")
        return real_call(hook, **kw)

    monkeypatch.setattr(scheduler, "call", timing_out)
    assert _post(admin, key, name=name).status == 504
    monkeypatch.setattr(scheduler, "call", real_call)
    retry = _post(admin, key, name=name)
    assert retry.status == 409 and "in progress" in retry.msg      # not resubmitted blindly
    raw = _store(app).remember(f"idem:admin:{key}", "probe", 60)
    record = json.loads(raw)
    assert record["state"] == "pending"
    assert record["settle"] - time.time() <= 31                   # not the full 300 s window


def test_keys_expire_with_the_configured_ttl(make_app, redis_server):
    app, admin = make_app(session_store=redis_server.url, idempotency_ttl_seconds=120)
    key = uuid.uuid4().hex
    assert _post(admin, key, name="ttl").status == 200
    ttl = redis_server.client.ttl(f"hpcgw:kv:idem:admin:{key}")
    assert 0 < ttl <= 120
