"""The /vis API on the mock backend: input checks, who may see a session, 409 while it starts,
410 once it ended, the address behind a proxy, and the plugin's own vis hooks taking over."""
from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.auth.users_file import UsersFile
from gateway.hookspecs import hookimpl
from gateway.models import User, VisSession
from tests.helpers import ApiClient

from .conftest import require_vis_components
from .support import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def vis_world(make_app):
    def build(**cfg):
        app, admin = make_app(**cfg)
        users = UsersFile(app.extensions["hpc_gateway"].config["auth"]["users_file"])
        clients = {"admin": admin, "app": app}
        for name in ("alice", "bob"):
            users.set_password(name, f"{name}-password-1")
            clients[name] = ApiClient(app).login(name, f"{name}-password-1")
        return clients
    return build


def ready_url(client, job_id, timeout=45, **kw):
    def ready():
        r = client.get(f"/vis/url/{job_id}", **kw)
        if r.status == 409:
            return None
        assert r.status == 200, r.body
        return r.body["data"]["visurl"]["url"]
    return wait_until(ready, timeout, f"vis job {job_id}", interval=0.2)


BAD_SUBMISSIONS = [
    ({"type": "vnc"}, "command"),
    ({"command": "xterm"}, "type"),
    ({"command": "xterm", "type": "x11"}, "type"),
    ({"command": "", "type": "vnc"}, "command"),
    ({"command": "xterm\x00", "type": "vnc"}, "command"),
    ({"command": "xterm", "type": "vnc", "geometry": "99999x1"}, "geometry"),
    ({"command": "xterm", "type": "vnc", "timeLimitMinutes": "60"}, "timeLimitMinutes"),
    ({"command": "xterm", "type": "vnc", "queue": "no such/queue"}, "queue"),
    ({"command": "xterm", "type": "vnc", "script": "#!/bin/sh"}, "script"),
]


def test_bad_submissions_are_422_with_the_field(vis_world):
    c = vis_world()
    for body, field in BAD_SUBMISSIONS:
        r = c["alice"].post("/vis/submit", json=body)
        assert r.status == 422, (body, r.body)
        assert field in r.body["errors"], (body, r.body)
    assert c["alice"].get("/jobs").body["data"]["total"] == 0


def test_unknown_queue_is_the_schedulers_refusal(vis_world):
    c = vis_world()
    r = c["alice"].post("/vis/submit", json={"command": "xterm", "type": "vnc", "queue": "nosuch"})
    assert r.status == 422 and "No such queue" in r.msg, r.body


def test_a_session_from_pending_to_gone(vis_world):
    require_vis_components()
    c = vis_world(scheduler={"options": {"slots": 1}}, trusted_proxies=1)
    alice, bob, admin = c["alice"], c["bob"], c["admin"]
    blocker = alice.submit(command="sleep 60", name="blocker")
    alice.wait_for(blocker, "RUNNING", timeout=30)
    r = alice.post("/vis/submit", json={"command": "sleep 300", "type": "vnc", "queue": "vnc",
                                        "geometry": "1024x768", "timeLimitMinutes": 30})
    assert r.status == 200, r.body
    job_id = r.body["data"]["vis"]["jobId"]
    job = alice.job(job_id)
    assert job["name"] == "vnc-sleep" and job["queue"] == "vnc" and job["timeLimitMinutes"] == 30
    assert job["state"] == "PENDING"

    # Waiting for a slot: 409 "not ready yet", with Retry-After, on both routes.
    for path in (f"/vis/url/{job_id}", f"/vis/{job_id}"):
        r = alice.get(path)
        assert r.status == 409 and "not ready yet" in r.msg and "PENDING" in r.msg, r.body
        assert r.headers["Retry-After"] == "2" and r.body["data"] is None
    # Not theirs: another user and an admin alike.
    for other in (bob, admin):
        assert other.get(f"/vis/url/{job_id}").status == 403
        assert other.get(f"/vis/{job_id}").status == 403

    assert alice.post(f"/jobs/{blocker}/kill").status == 200
    url = ready_url(alice, job_id)
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert q["host"] == "localhost" and q["port"] == "80" and q["encrypt"] == "0"   # the test client's Host
    # The websocket's path carries a ticket, which NGINX has the gateway check (no login: a
    # browser's websocket has no Authorization header).
    prefix, address, port, ticket = q["path"].split("/")
    assert prefix == "novnc-ws" and ticket
    anonymous = ApiClient(c["app"])
    check = {"address": address, "port": port, "ticket": ticket}
    assert anonymous.get("/vis/websocket-check", params=check).status == 204
    assert ready_url(alice, job_id) == url                          # the same ticket every time
    for bad in ({"port": str(int(port) + 1)}, {"address": "10.9.9.9"}, {"ticket": ticket[:-2]},
                {"ticket": ticket.replace(".", ".x", 1)}):
        r = anonymous.get("/vis/websocket-check", params={**check, **bad})
        assert r.status == 403 and "ticket" in r.msg, (bad, r.body)
    for missing in check:
        r = anonymous.get("/vis/websocket-check", params={k: v for k, v in check.items() if k != missing})
        assert r.status == 422 and missing in str(r.body["errors"]), r.body
    # Behind a proxy (trusted_proxies: 1): the address names the proxy the browser used.
    r = alice.get(f"/vis/url/{job_id}", headers={"X-Forwarded-Host": "hpc.example.org:8443",
                                                 "X-Forwarded-Proto": "https"})
    q = {k: v[0] for k, v in parse_qs(urlsplit(r.body["data"]["visurl"]["url"]).query).items()}
    assert (q["host"], q["port"], q["encrypt"]) == ("hpc.example.org", "8443", "1")

    r = alice.get(f"/vis/{job_id}")
    assert r.status == 200, r.body
    vis = r.body["data"]["vis"]
    assert vis["jobId"] == job_id and vis["state"] == "RUNNING" and vis["nativeState"] == "RUN"
    assert str(vis["display"]) == q["sid"] and vis["execHost"] == q["exec"]
    assert bob.get(f"/vis/url/{job_id}").status == 403

    assert alice.post(f"/jobs/{job_id}/kill").status == 200
    alice.wait_for(job_id, "CANCELLED", timeout=30)
    for path in (f"/vis/url/{job_id}", f"/vis/{job_id}"):
        r = alice.get(path)
        assert r.status == 410 and "has ended (CANCELLED" in r.msg, r.body
    # The ticket ends with its job: a port another desktop takes next is not open to it.
    r = anonymous.get("/vis/websocket-check", params=check)
    assert r.status == 403 and "is over" in r.msg, r.body


def test_not_a_vis_job_or_no_job(vis_world):
    c = vis_world()
    plain = c["alice"].submit(command="sleep 30", hold=True)
    r = c["alice"].get(f"/vis/url/{plain}")
    assert r.status == 404 and "not a visualization job" in r.msg
    assert c["alice"].get("/vis/url/999999").status == 404
    assert c["alice"].get("/vis/url/..%2F..%2Fetc").status == 404
    assert c["alice"].get("/vis/url/1").status in (403, 404)
    assert ApiClient(c["app"]).get(f"/vis/url/{plain}").status == 401


def test_idempotent_submission(vis_world):
    c = vis_world()
    body = {"command": "sleep 30", "type": "vnc"}
    first = c["alice"].post("/vis/submit", json=body, headers={"Idempotency-Key": "vis-1"})
    again = c["alice"].post("/vis/submit", json=body, headers={"Idempotency-Key": "vis-1"})
    assert first.status == again.status == 200
    job_id = first.body["data"]["vis"]["jobId"]
    assert again.body["data"]["vis"]["jobId"] == job_id
    c["alice"].post(f"/jobs/{job_id}/kill")


class OwnVisHooks:
    """A plugin's own vis hooks, registered beside the mock: the core must use them."""

    def __init__(self):
        self.session = None
        self.specs = []

    @hookimpl
    def vis_session(self, user, job_id):
        return self.session

    @hookimpl
    def submit_vis_job(self, user, spec):
        self.specs.append(spec)
        return "4242"


def test_the_plugins_own_hooks_take_over(vis_world):
    require_vis_components()
    c = vis_world()
    app, alice = c["app"], c["alice"]
    sched = app.extensions["hpc_gateway"].scheduler
    own = OwnVisHooks()
    sched.pm.register(own, name="own-vis")
    r = alice.post("/vis/submit", json={"command": "/usr/bin/xclock -update 1", "type": "vnc"})
    assert r.status == 200 and r.body["data"]["vis"]["jobId"] == "4242", r.body
    assert len(own.specs) == 1
    spec = own.specs[0]
    assert spec.name == "vnc-xclock" and spec.script.startswith("#!/bin/sh") and "xclock -update 1" in spec.script
    job_id = alice.submit(command="sleep 60", name="vnc-fake")
    alice.wait_for(job_id, "RUNNING", timeout=30)
    r = alice.get(f"/vis/url/{job_id}")
    assert r.status == 409 and "is starting" in r.msg, r.body       # vis_session said None
    key = "5e55104b" * 4
    own.session = VisSession(host="10.9.8.7", port=6150, password="Ab3dE6gH", display=33, exec_host="n7", key=key)
    r = alice.get(f"/vis/url/{job_id}")
    assert r.status == 200, r.body
    assert r.headers["Cache-Control"] == "no-store"           # it carries the desktop's password
    url = urlsplit(r.body["data"]["visurl"]["url"])
    q = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert q["path"].startswith("novnc-ws/10.9.8.7/6150/") and q["sid"] == "33" and q["exec"] == "n7"
    assert url.fragment == "password=Ab3dE6gH" and "password" not in q
    check = {"address": "10.9.8.7", "port": "6150", "ticket": q["path"].rsplit("/", 1)[1]}
    anonymous = ApiClient(app)
    r = anonymous.get("/vis/websocket-check", params=check)
    # NGINX hands websockify the desktop's token it answers with (the browser never sees it).
    assert r.status == 204 and r.headers["X-Hpcgw-Vis-Key"] == key, r.headers
    # Genuine tickets (signed with the gateway's secret) for what is not the owner's running
    # desktop: another owner, a job that is no vis job.
    tickets = app.extensions["hpc_gateway_vis_tickets"]
    started = alice.job(job_id)["startTime"]
    plain = alice.submit(command="sleep 60", name="plain")
    alice.wait_for(plain, "RUNNING", timeout=30)
    for owner, jid in (("bob", job_id), ("alice", plain)):
        job = app.extensions["hpc_gateway"].scheduler.call("get_job", user=User(owner), job_id=jid)
        forged = tickets.issue(owner, jid, "10.9.8.7", 6150, job.start_time.isoformat() if job.start_time else None)
        r = anonymous.get("/vis/websocket-check", params={**check, "ticket": forged})
        assert r.status == 403 and "is over" in r.msg, (owner, jid, r.body)
    # A requeued job runs again (maybe on another host or port, its old port free for someone
    # else's desktop): the first run's ticket opens nothing, the new address's does.
    assert alice.post(f"/jobs/{job_id}/requeue").status == 200
    wait_until(lambda: (j := alice.job(job_id))["state"] == "RUNNING" and j["startTime"] != started, 30,
               "the requeued job to run again")
    r = anonymous.get("/vis/websocket-check", params=check)
    assert r.status == 403 and "is over" in r.msg, r.body
    again = parse_qs(urlsplit(alice.get(f"/vis/url/{job_id}").body["data"]["visurl"]["url"]).query)["path"][0]
    assert again != q["path"]
    again_check = {**check, "ticket": again.rsplit("/", 1)[1]}
    assert anonymous.get("/vis/websocket-check", params=again_check).status == 204
    # An account removed from the users file: its desktops' addresses end with its sessions.
    users = UsersFile(app.extensions["hpc_gateway"].config["auth"]["users_file"])
    assert users.remove("alice")
    try:
        r = anonymous.get("/vis/websocket-check", params=again_check)
        assert r.status == 403 and "no longer a user" in r.msg, r.body
    finally:
        users.set_password("alice", "alice-password-1")
    assert anonymous.get("/vis/websocket-check", params=again_check).status == 204
    alice = ApiClient(app).login("alice", "alice-password-1")
    alice.post(f"/jobs/{plain}/kill")
    alice.post(f"/jobs/{job_id}/kill")


def test_openapi_documents_the_vis_routes(vis_world):
    c = vis_world()
    spec = c["admin"].get("/openapi.json").body
    paths = spec["paths"]
    assert "post" in paths["/aip/v9.2/vis/submit"]
    for path in ("/aip/v9.2/vis/url/{job_id}", "/aip/v9.2/vis/{job_id}"):
        responses = paths[path]["get"]["responses"]
        for code in ("200", "403", "404", "409", "410"):
            assert code in responses, (path, code)
    check = paths["/aip/v9.2/vis/websocket-check"]["get"]
    assert check["security"] == [] and {"204", "403", "422"} <= set(check["responses"])


def test_get_on_the_submit_route_is_405_not_a_job_lookup(vis_world):
    """/vis/submit is POST only; GET must not fall through to /vis/<job_id> as job "submit"."""
    c = vis_world()
    for method in ("GET", "DELETE"):
        r = c["alice"].request(method, "/vis/submit")
        assert r.status == 405, (method, r.status, r.body)
        assert "POST" in r.headers["Allow"], r.headers
