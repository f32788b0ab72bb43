"""High availability with real parts: NGINX over three gunicorn replicas sharing Redis.

A bounded load (8 client threads, 20 s) of logins, keyed submissions and polls runs through
NGINX while one replica is SIGKILLed (master and workers: a crashed host) and restarted.
Then: no GET failed (NGINX passed over the dead replica); every submission is at the
scheduler exactly once, under the id its client was given; tokens issued before the kill
still work. A second test kills a replica at the worst moments of a keyed submission.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid

import pytest
import requests

from tests.helpers import ApiClient, require

from .ha import JOB_PREFIX, HACluster, format_summary, run_load
from .servers import PREFIX, wait_until

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def cluster(procs, tmp_path, need_redis, need_nginx, need_gunicorn):
    return HACluster(procs, tmp_path, replicas=3, workers=2, threads=16, pending_seconds=3)


def test_a_replica_killed_under_load(cluster, capsys, artifacts_dir):
    victim = cluster.replicas[1]
    log_file = next((victim.log_dir).glob("hpc-gateway.log.*"))
    marks = {}

    def kill():
        victim.kill()

    def restart():
        marks["log_size"] = log_file.stat().st_size
        victim.restart()

    result = run_load(cluster.base, cluster.passwords, threads=8, duration=20,
                      events=[(6.0, "SIGKILL replica-1", kill), (12.0, "restart replica-1", restart)])
    summary = result.summary()
    report = format_summary(summary)
    with capsys.disabled():
        print("\n" + report)
    with open(f"{artifacts_dir}/ha-summary.json", "w") as fh:
        json.dump(summary, fh, indent=2)

    # NGINX passed over the dead replica: no GET failed.
    failed = [s for s in result.samples if s.method == "GET" and s.status != 200]
    assert not failed, f"{len(failed)} failed GETs, e.g. {failed[:5]}\n{report}"

    # Every submission answered, and is at the scheduler exactly once, under the id its client got.
    unresolved = [s for s in result.submissions if s.outcome not in ("ok", "adopted")]
    assert not unresolved, f"submissions without an answer: {unresolved[:5]}"
    at_scheduler = cluster.scheduler_jobs()
    wrong = [(s.name, s.job_id, at_scheduler.get(s.name)) for s in result.submissions
             if at_scheduler.get(s.name) != [s.job_id]]
    assert not wrong, f"submissions not present exactly once: {wrong[:10]}"
    strays = set(at_scheduler) - {s.name for s in result.submissions}
    assert not strays, f"jobs no client asked for: {sorted(strays)[:10]}"
    assert len(result.submissions) >= 20, report

    # Tokens issued before the kill are still good, through NGINX and on the restarted replica.
    assert result.early_tokens
    for user, token in result.early_tokens:
        for base in (cluster.base, victim.base):
            r = requests.get(base + PREFIX + "/jobs", headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert r.status_code == 200, (user, base, r.text)

    # The kill really happened under load, and the restarted replica took traffic again.
    assert f"127.0.0.1:{victim.port}" in cluster.nginx.error_log()
    with open(log_file, "rb") as fh:
        fh.seek(marks["log_size"])
        assert b'"GET ' + PREFIX.encode() in fh.read(), "the restarted replica served no request"

    # Keys live in Redis with a TTL.
    first = result.submissions[0]
    user = next(u for u, _ in result.early_tokens)
    ttls = [cluster.redis.client.ttl(f"hpcgw:kv:idem:{u}:{first.key}") for u in cluster.passwords]
    assert any(t > 0 for t in ttls), ttls


def _post(base, token, key, name):
    return requests.post(base + PREFIX + "/jobs", json={"command": "true", "name": name},
                         headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key}, timeout=30)


def _settle(cluster, token, key, name, budget=30):
    """A client's retry loop through NGINX: same key until an answer that is neither 'in progress'
    nor a 502/503/504 (NGINX does not replay a POST sent on a kept-alive connection to the
    replica that just died: the client retries it, safely, with its key)."""
    deadline = time.monotonic() + budget
    while True:
        r = _post(cluster.base, token, key, name)
        retry = r.status_code in (502, 503, 504) or (
            r.status_code == 409 and "candidates" not in (r.json().get("errors") or {}))
        if not retry or time.monotonic() > deadline:
            return r
        time.sleep(float(r.headers.get("Retry-After", "0.5")))


def _claim_seen(cluster, user, key):
    raw = cluster.redis.client.get(f"hpcgw:kv:idem:{user}:{key}")
    return raw is not None and json.loads(raw)["state"] == "pending"


def test_a_replica_killed_in_the_middle_of_a_keyed_submission(cluster):
    """Both moments that matter, made deterministic by holding the scheduler's and the store's locks."""
    user, password = "alice", cluster.passwords["alice"]
    login = requests.post(cluster.base + PREFIX + "/login", json={"username": user, "password": password}, timeout=10)
    token = login.json()["data"]["token"]["token"]
    jobs_db = cluster.mock_dir / "jobs.sqlite"
    import sqlite3

    # 1. Killed after claiming the key, before the scheduler took the job.
    victim = cluster.replicas[0]
    key, name = uuid.uuid4().hex, f"{JOB_PREFIX}{uuid.uuid4().hex}"
    lock = sqlite3.connect(jobs_db, timeout=30, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")           # the mock scheduler cannot take a job now
    import threading
    answer = {}
    t = threading.Thread(target=lambda: answer.setdefault("r", _safe_post(victim.base, token, key, name)))
    t.start()
    wait_until(lambda: _claim_seen(cluster, user, key), 15, "the replica to claim the key")
    victim.kill()
    lock.execute("ROLLBACK")
    lock.close()
    t.join(30)
    assert answer["r"] is None                   # the client lost its answer
    r = _settle(cluster, token, key, name)
    assert r.status_code == 200, r.text          # nothing had reached the scheduler: submitted once now
    job_id = r.json()["data"]["job"]["jobId"]
    assert cluster.scheduler_jobs().get(name) == [job_id]
    assert _post(cluster.base, token, key, name).json()["data"]["job"]["jobId"] == job_id
    victim.restart()

    # 2. Killed after the scheduler took the job, before the key recorded its id.
    victim = cluster.replicas[2]
    key, name = uuid.uuid4().hex, f"{JOB_PREFIX}{uuid.uuid4().hex}"
    lock = sqlite3.connect(jobs_db, timeout=30, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    answer = {}
    t = threading.Thread(target=lambda: answer.setdefault("r", _safe_post(victim.base, token, key, name)))
    t.start()
    wait_until(lambda: _claim_seen(cluster, user, key), 15, "the replica to claim the key")
    cluster.redis.client.execute_command("CLIENT", "PAUSE", "20000", "WRITE")   # the id cannot be recorded
    try:
        lock.execute("ROLLBACK")
        lock.close()
        wait_until(lambda: cluster.scheduler_jobs().get(name), 15, "the scheduler to take the job")
        victim.kill()
    finally:
        cluster.redis.client.execute_command("CLIENT", "UNPAUSE")
    t.join(30)
    assert answer["r"] is None
    landed = cluster.scheduler_jobs()[name]
    r = _settle(cluster, token, key, name)
    if r.status_code == 200:
        # The dying replica's write of the id was already in Redis's buffer when it was killed
        # (the pause holds it, the unpause runs it): the key knows its job after all.
        assert [r.json()["data"]["job"]["jobId"]] == landed, r.text
    else:
        # The gateway cannot know the job is this key's: it submits nothing and names the candidates.
        assert r.status_code == 409, r.text
        assert r.json()["errors"]["candidates"] == landed
    assert cluster.scheduler_jobs()[name] == landed                     # still exactly one
    victim.restart()


def _safe_post(base, token, key, name):
    try:
        return _post(base, token, key, name)
    except requests.RequestException:
        return None


def test_an_outage_every_replica_shares_is_answered_by_the_gateway_not_by_nginx(cluster):
    """When every replica answers 503 (Redis, which they share, is down here; a scheduler
    outage is the same), NGINX passes the gateway's own answer on (JSON, Retry-After) and
    keeps the replicas in rotation. With http_503 in proxy_next_upstream and max_fails=1, the
    first such answer took all three replicas out for 10 s: every request then got NGINX's
    own "502 Bad Gateway" page, /health included, and each GET was tried on all replicas."""
    login = requests.post(cluster.base + PREFIX + "/login",
                          json={"username": "alice", "password": cluster.passwords["alice"]}, timeout=10)
    auth = {"Authorization": f"Bearer {login.json()['data']['token']['token']}"}
    cluster.redis.proc.stop()
    for _ in range(4):
        r = requests.get(cluster.base + PREFIX + "/jobs", headers=auth, timeout=30)
        assert r.status_code == 503 and r.headers.get("Content-Type", "").startswith("application/json"), \
            (r.status_code, r.text[:300])
        assert r.headers.get("Retry-After"), r.headers
    health = requests.get(cluster.base + PREFIX + "/health", timeout=30)
    assert health.headers.get("Content-Type", "").startswith("application/json"), (health.status_code, health.text[:300])


def _envelope(r, status):
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers.get("Content-Type", "").startswith("application/json"), (r.headers, r.text[:300])
    body = r.json()
    assert body["data"] is None and body["msg"], body
    return body


def test_what_nginx_answers_itself_is_in_the_api_envelope(cluster):
    """A client talks to the API, whoever answers: NGINX's own refusals (a request line or
    headers over large_client_header_buffers, a body over client_max_body_size) and its
    answer when no replica can be reached are JSON like the gateway's, not NGINX's HTML."""
    base = cluster.base + PREFIX
    # Request line over 16k (NGINX's buffers): NGINX's 414. Over 8190 but within 16k: the
    # replica's (gunicorn's) 414, passed on as it is.
    _envelope(requests.get(base + "/files", params={"path": "x" * 17000}, timeout=10), 414)
    own = _envelope(requests.get(base + "/files", params={"path": "x" * 9000}, timeout=10), 414)["msg"]
    assert own.startswith("URI Too Long") and "this gateway accepts" not in own, own
    _envelope(requests.get(base + "/health", headers={"X-Big": "y" * 17000}, timeout=10), 431)
    # A body over client_max_body_size (2m outside the files API): NGINX's 413.
    _envelope(requests.post(base + "/jobs", data=b"{" + b" " * (3 << 20), timeout=10,
                            headers={"Content-Type": "application/json"}), 413)
    # A body NGINX lets through (under 2m) but the gateway does not (max_body_bytes, 1 MiB):
    # the replica's own 413 and words, not replaced by NGINX's.
    big = _envelope(requests.post(base + "/jobs", data=b"{" + b" " * (3 << 19), timeout=10,
                                  headers={"Content-Type": "application/json"}), 413)
    assert "for this gateway" not in big["msg"] and "limit is" in big["msg"], big
    # Again and again: the replica reads the refused body before it closes, so NGINX's write
    # of it never meets a reset (which NGINX answered with its own 502, counting it against
    # the replica: a few such bodies took every replica out of the pool).
    statuses = [requests.post(base + "/jobs", data=b"{" + b" " * size, timeout=10,
                              headers={"Content-Type": "application/json"}).status_code
                for size in [3 << 19] * 10 + [(2 << 20) - 4096] * 10]
    assert statuses == [413] * 20, statuses
    assert requests.get(base + "/health", timeout=10).status_code == 200
    # Every replica gone: NGINX's 502, JSON. A GET or HEAD may be asked again (Retry-After);
    # anything else may have been carried out by a replica that died with it, so no
    # Retry-After invites a repeat (an error_page redirect makes every method a GET: the
    # template looks at the request line).
    for replica in cluster.replicas:
        replica.kill()
    r = requests.get(base + "/health", timeout=30)
    assert "no gateway replica answered" in _envelope(r, 502)["msg"]
    assert r.headers.get("Retry-After") == "2", r.headers
    r = requests.head(base + "/health", timeout=30)
    assert r.status_code == 502 and r.headers.get("Retry-After") == "2", (r.status_code, r.headers)
    for send in (requests.post, requests.delete, requests.patch):
        r = send(base + "/jobs/1", json={"name": "x"}, timeout=30)
        assert "may or may not have been carried out" in _envelope(r, 502)["msg"], send
        assert "Retry-After" not in r.headers, (send, r.headers)


def test_an_upload_over_the_limit_through_nginx_gets_the_replicas_413(procs, tmp_path, need_redis, need_nginx,
                                                                      need_gunicorn):
    """The files routes stream uploads through NGINX unbuffered (deploy/nginx/), so NGINX is
    still writing an upload over files.max_upload_bytes when the replica refuses it unread.
    The client gets the replica's 413 in the API's envelope, from requests (which reads the
    answer after its whole body) and from curl (which reads it as soon as it comes), also
    for a body past what the replica reads before closing (16 MiB). Before the replica read
    what still came, a third of these were NGINX's 502 or its HTML 413."""
    require(shutil.which("curl") is not None, "curl is not installed (Debian: apt-get install curl)")
    limit = 1 << 20
    cluster = HACluster(procs, tmp_path, replicas=2, workers=1, threads=8,
                        settings={"files": {"max_upload_bytes": limit}})
    base = cluster.base + PREFIX
    alice = ApiClient(cluster.base).login("alice", cluster.passwords["alice"])
    bearer = f"Bearer {alice.token}"
    answers = []
    for mib in (2, 8, 40):
        blob = tmp_path / f"blob-{mib}"
        blob.write_bytes(b"x" * (mib << 20))
        for i in range(3):
            with open(blob, "rb") as body:
                r = requests.put(base + "/files/content", params={"path": f"r{mib}-{i}"}, data=body,
                                 headers={"Authorization": bearer}, timeout=60)
            answers.append((mib, "requests", r.status_code, r.text))
            out = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-X", "PUT",
                                  "-H", f"Authorization: {bearer}", "--data-binary", f"@{blob}",
                                  f"{base}/files/content?path=c{mib}-{i}"],
                                 capture_output=True, text=True, timeout=60)
            text, _, status = out.stdout.rpartition("\n")
            answers.append((mib, "curl", int(status or 0), text or out.stderr))
    wrong = [a for a in answers if a[2] != 413 or f"the limit is {limit} bytes" not in a[3]]
    assert not wrong, wrong
    listing = alice.get("/files", params={"path": "."})       # the pool is whole, nothing was kept
    assert listing.status == 200, listing
    assert not [e["name"] for e in listing.body["data"]["entries"] if e["name"][0] in "rc"], listing
