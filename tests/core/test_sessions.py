"""Sessions across replicas: any instance sharing the secret and the store accepts a token
another issued; the idle timeout slides; logout revokes everywhere; bad tokens are 401."""
from __future__ import annotations

import os
import time

import pytest

from gateway import create_app
from tests.helpers import ApiClient
from tests.support.redis_server import redis_server


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared' / 'sessions.sqlite'}"
    else:
        with redis_server() as url:
            yield url


def _pair(tmp_path, store_url, timeout=30.0):
    """Two app instances ("replicas") sharing only the secret file and the session store."""
    shared = {"secret_file": str(tmp_path / "shared" / "secret.key"), "session_store": store_url,
              "timeout": timeout, "log_level": "warning",
              "auth": {"users_file": str(tmp_path / "shared" / "users.yaml")}}
    apps = []
    for name in ("a", "b"):
        apps.append(create_app({**shared, "work_dir": str(tmp_path / name),
                                "scheduler": {"backend": "mock",
                                              "options": {"state_dir": str(tmp_path / "mock")}}}))
    password = (tmp_path / "a" / "initial-admin-password").read_text().strip()
    return apps, password


def test_a_token_from_one_replica_works_on_another(tmp_path, store_url):
    (a, b), password = _pair(tmp_path, store_url)
    token = ApiClient(a).login("admin", password).token
    on_b = ApiClient(b)
    on_b.token = token
    assert on_b.get("/jobs").status == 200


def test_logout_on_one_replica_revokes_on_every_replica(tmp_path, store_url):
    (a, b), password = _pair(tmp_path, store_url)
    client_a = ApiClient(a).login("admin", password)
    client_b = ApiClient(b)
    client_b.token = client_a.token
    assert client_b.get("/jobs").status == 200
    assert client_a.post("/logout").status == 200
    r = client_b.get("/jobs")
    assert r.status == 401
    assert "log in again" in r.body["msg"]
    assert client_a.get("/jobs").status == 401


def test_the_idle_timeout_slides_with_use_and_kills_an_idle_token(tmp_path, store_url):
    timeout_s = 3.0
    (a, b), password = _pair(tmp_path, store_url, timeout=timeout_s / 60)
    busy = ApiClient(a).login("admin", password)
    idle = ApiClient(b).login("admin", password)
    # The busy token is used every half second for twice the timeout (alternating replicas).
    start = time.monotonic()
    turn = [busy, ApiClient(b)]
    turn[1].token = busy.token
    i = 0
    while time.monotonic() - start < 2 * timeout_s:
        assert turn[i % 2].get("/jobs").status == 200, "an active token expired"
        i += 1
        time.sleep(0.5)
    # The idle one has not been used for longer than the timeout.
    r = idle.get("/jobs")
    assert r.status == 401
    assert "inactivity" in r.body["msg"]
    assert busy.get("/jobs").status == 200


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "eyJzIjoiYSIsInUiOiJhZG1pbiJ9.bad.sig", "x" * 5000])
def test_malformed_and_tampered_tokens_are_401(make_app, token):
    app, client = make_app()
    other = ApiClient(app)
    other.token = token or None
    r = other.get("/jobs")
    assert r.status == 401
    assert "log in" in r.body["msg"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer ")


def test_a_token_sent_without_the_bearer_scheme_is_told_so(make_app):
    """`Authorization: <token>` (a common slip) was answered "Missing token", which sends
    the client to log in again for nothing; the answer never echoes what was sent."""
    app, client = make_app()
    flask = app.test_client()
    for header, words in [(client.token, "has no scheme"), (f"Token {client.token}", "'Token' scheme"),
                          ("Bearer", "'Bearer' but no token"), ("Bearer   ", "'Bearer' but no token"),
                          ("", "Missing token")]:
        r = flask.get("/aip/v9.2/jobs", headers={"Authorization": header})
        assert r.status_code == 401 and words in r.json["msg"] and "Bearer <token>" in r.json["msg"], r.json
        assert client.token not in r.json["msg"]
    assert flask.get("/aip/v9.2/jobs", headers={"Authorization": f"bearer {client.token}"}).status_code == 200


def test_a_token_signed_with_another_secret_is_401(make_app, tmp_path):
    _, client = make_app()
    foreign = create_app({"work_dir": str(tmp_path / "other"), "log_level": "warning",
                          "scheduler": {"backend": "mock", "options": {"state_dir": str(tmp_path / "m2")}}})
    password = (tmp_path / "other" / "initial-admin-password").read_text().strip()
    token = ApiClient(foreign).login("admin", password).token
    client.token = token
    assert client.get("/jobs").status == 401


def test_the_secret_is_generated_private_on_first_start(make_app, tmp_path):
    make_app()
    secret = tmp_path / "work" / "secret.key"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert len(secret.read_bytes().strip()) >= 32
    pw = tmp_path / "work" / "initial-admin-password"
    assert pw.stat().st_mode & 0o777 == 0o600


def test_activity_is_written_at_most_every_few_seconds(make_app):
    app, client = make_app()
    store = app.extensions["hpc_gateway"].store
    writes = []
    original = store.touch
    store.touch = lambda *a, **kw: (writes.append(a), original(*a, **kw))
    for _ in range(50):
        assert client.get("/jobs").status == 200
    assert len(writes) <= 1


def test_an_unreachable_redis_store_answers_503_not_500(tmp_path):
    with redis_server() as url:
        app = create_app({"work_dir": str(tmp_path), "session_store": url, "log_level": "warning",
                          "scheduler": {"backend": "mock", "options": {"state_dir": str(tmp_path / "m")}}})
        client = ApiClient(app).login("admin", (tmp_path / "initial-admin-password").read_text().strip())
    # The server is gone now.
    r = client.get("/jobs")
    assert r.status == 503, r.body
    assert "session store" in r.body["msg"] and r.headers.get("Retry-After")


def _create_secret(args):
    path, barrier = args
    from gateway.sessions import load_or_create_secret
    barrier.wait(10)
    return load_or_create_secret(path)


def test_workers_starting_together_share_one_complete_secret(tmp_path):
    """gunicorn's workers each build the app at once: none may see a half-written secret
    (a CI run once failed with 'holds fewer than 32 bytes' from that race)."""
    import multiprocessing
    import os
    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as manager, ctx.Pool(12) as pool:
        for round_ in range(15):
            path = str(tmp_path / f"r{round_}" / "secret.key")
            barrier = manager.Barrier(12)
            secrets_seen = pool.map(_create_secret, [(path, barrier)] * 12)
            assert len(set(secrets_seen)) == 1 and len(secrets_seen[0]) >= 32
            assert os.stat(path).st_mode & 0o077 == 0
            assert os.listdir(os.path.dirname(path)) == ["secret.key"]     # no temporary left


def test_concurrent_wrong_passwords_cannot_race_past_the_limit(tmp_path, store_url):
    """40 wrong passwords at once on two replicas (failures plus checks in flight, counted in
    the shared store, may not pass the limit): exactly max_failures_per_user of them are
    tried, the rest are 429; successful logins leave no count behind."""
    import concurrent.futures

    (a, b), password = _pair(tmp_path, store_url)

    def set_limits(**limits):
        for app in (a, b):
            app.extensions["hpc_gateway"].config["auth"]["login_limit"].update(limits)

    # Successes from one address do not use up its budget.
    set_limits(max_failures_per_user=5, max_failures_per_address=2, window_seconds=60)
    for i in range(6):
        assert ApiClient((a, b)[i % 2]).post("/login", json={"username": "admin", "password": password}).status == 200
    set_limits(max_failures_per_address=1000)

    def attempt(i):
        return ApiClient((a, b)[i % 2]).post("/login", json={"username": "admin", "password": f"wrong-{i}"}).status

    # Twelve right passwords at once: over the limit of 5 while in flight, so some wait for
    # the others' checks to end, but none is refused (a success frees its place).
    def right(i):
        return ApiClient((a, b)[i % 2]).post("/login", json={"username": "admin", "password": password}).status

    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        assert list(pool.map(right, range(12))) == [200] * 12

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(attempt, range(40)))
    assert statuses.count(401) == 5 and statuses.count(429) == 35, statuses
    assert ApiClient(a).post("/login", json={"username": "admin", "password": password}).status == 429


def test_a_changed_password_or_a_removed_user_ends_their_sessions_on_every_replica(tmp_path, store_url):
    """`hpc-gateway users passwd/remove` (the CLI, in its own process) revokes the user's live
    tokens in the shared store; before, they worked on for token_max_age_hours (24 h)."""
    import subprocess
    import sys

    import yaml

    (a, b), password = _pair(tmp_path, store_url)
    cfg = tmp_path / "cli.yaml"
    cfg.write_text(yaml.safe_dump({"work_dir": str(tmp_path / "a"), "session_store": store_url,
                                   "secret_file": str(tmp_path / "shared" / "secret.key"),
                                   "auth": {"users_file": str(tmp_path / "shared" / "users.yaml")}}))
    cli = [os.path.join(os.path.dirname(sys.executable), "hpc-gateway"), "--config", str(cfg)]

    def run(*args, stdin=""):
        return subprocess.run([*cli, *args], input=stdin, capture_output=True, text=True, timeout=60)

    for name in ("dave", "erin"):
        assert run("users", "add", name, "--password-stdin", stdin=f"{name}-password-1\n").returncode == 0
    tokens = {name: [ApiClient(app).login(name, f"{name}-password-1").token for app in (a, b)]
              for name in ("dave", "erin")}
    admin = ApiClient(a).login("admin", password)

    def works(app, token):
        client = ApiClient(app)
        client.token = token
        return client.get("/jobs").status == 200

    assert all(works(app, t) for name in tokens for app in (a, b) for t in tokens[name])
    changed = run("users", "passwd", "dave", "--password-stdin", stdin="dave-password-2\n")
    assert changed.returncode == 0 and "ended 2 sessions" in changed.stdout, changed
    removed = run("users", "remove", "erin")
    assert removed.returncode == 0 and "ended 2 sessions" in removed.stdout, removed
    assert not any(works(app, t) for name in tokens for app in (a, b) for t in tokens[name])
    assert works(a, admin.token) and works(b, admin.token)          # nobody else's
    assert works(b, ApiClient(a).login("dave", "dave-password-2").token)


def test_hand_edits_of_the_users_file_end_the_sessions_they_concern(tmp_path, store_url):
    """Removing a user or replacing a password hash by editing users.yaml (no CLI, so nothing
    revokes in the store) ends that user's tokens: each carries its login's credential stamp.
    A users file that is briefly empty or missing (rewritten in place) ends nobody's."""
    import yaml

    from gateway.auth.users_file import UsersFile

    (a, b), password = _pair(tmp_path, store_url)
    path = tmp_path / "shared" / "users.yaml"
    users = UsersFile(str(path))
    for name in ("dave", "erin", "fred"):
        users.set_password(name, f"{name}-password-1")
    tokens = {name: ApiClient(a).login(name, f"{name}-password-1").token for name in ("dave", "erin", "fred")}
    admin = ApiClient(a).login("admin", password).token

    def status(app, token):
        client = ApiClient(app)
        client.token = token
        return client.get("/jobs").status

    assert {status(app, t) for app in (a, b) for t in [*tokens.values(), admin]} == {200}
    original = path.read_text()
    path.write_text("")                                   # an editor truncating before it writes
    assert {status(app, t) for app in (a, b) for t in [*tokens.values(), admin]} == {200}
    path.unlink()
    assert {status(app, t) for app in (a, b) for t in [*tokens.values(), admin]} == {200}

    data = yaml.safe_load(original)
    del data["users"]["erin"]
    other = UsersFile(str(tmp_path / "other.yaml"))
    other.set_password("dave", "dave-password-2")
    data["users"]["dave"]["hash"] = other.entry("dave")["hash"]
    path.write_text(yaml.safe_dump(data))
    for app in (a, b):
        assert status(app, tokens["dave"]) == 401 and status(app, tokens["erin"]) == 401
        assert status(app, tokens["fred"]) == 200 and status(app, admin) == 200
    client = ApiClient(b)
    client.token = tokens["dave"]
    assert "password changed" in client.get("/jobs").body["msg"]
    assert status(a, ApiClient(b).login("dave", "dave-password-2").token) == 200
    # Put back as it was, the old password's tokens are the user's again (nothing was revoked).
    path.write_text(original)
    assert status(a, tokens["erin"]) == 200 and status(b, tokens["dave"]) == 200


def test_a_users_file_left_unparseable_keeps_the_last_good_version(tmp_path, store_url, caplog):
    (a, b), password = _pair(tmp_path, store_url)
    path = tmp_path / "shared" / "users.yaml"
    client = ApiClient(a).login("admin", password)
    good = path.read_text()
    path.write_text(good + "  broken: [\n")                # a hand edit left half done
    with caplog.at_level("ERROR", logger="gateway.auth.users_file"):
        assert client.get("/jobs").status == 200
        assert ApiClient(b).login("admin", password).get("/jobs").status == 200
    assert "still using the version read before" in caplog.text
    # Emptied to `users: {}` on purpose (not a truncated file): the last user's sessions end.
    path.write_text("users: {}\n")
    assert client.get("/jobs").status == 401


def test_a_password_changed_during_the_check_gives_the_old_one_no_session(tmp_path):
    """The token carries the stamp of the hash the login verified, not of the file by the time
    the token is made."""
    from gateway.auth.users_file import UsersFile
    from gateway.errors import Unauthorized
    from gateway.sessions import SqliteSessionStore, TokenManager

    users = UsersFile(str(tmp_path / "users.yaml"))
    users.set_password("dave", "dave-password-1")
    tokens = TokenManager(b"k" * 32, SqliteSessionStore(str(tmp_path / "s.sqlite")), 30, stamp=users.stamp)
    identity = users.verify("dave", "dave-password-1")        # the slow check passes...
    users.set_password("dave", "dave-password-2")              # ...while the password changes
    token = tokens.issue(identity.name, stamp=identity.stamp)
    with pytest.raises(Unauthorized) as e:
        tokens.check(token)
    assert "password changed" in e.value.msg
    fresh = users.verify("dave", "dave-password-2")
    assert tokens.check(tokens.issue(fresh.name, stamp=fresh.stamp)).user == "dave"


def test_a_users_file_that_does_not_parse_stops_the_start_with_the_reason(tmp_path):
    from gateway.errors import ConfigError
    users = tmp_path / "users.yaml"
    users.write_text("users:\n  alice: {hash: [\n")
    with pytest.raises(ConfigError) as e:
        create_app({"work_dir": str(tmp_path / "w"), "log_level": "warning", "auth": {"users_file": str(users)},
                    "scheduler": {"backend": "mock", "options": {"state_dir": str(tmp_path / "mock")}}})
    assert str(users) in e.value.msg and "flow" in e.value.msg


def test_live_sessions_are_counted_in_batches(store_url):
    """/metrics counts live sessions; on Redis in pipelined batches of 500 (one round trip per
    session took seconds with many). Idle and revoked ones are not live."""
    from gateway.sessions import open_store
    store = open_store(store_url)
    try:
        now = time.time()
        for i in range(1203):
            store.create(f"live-{i}", "dave", now, 3600)
        for i in range(7):
            store.create(f"idle-{i}", "dave", now - 7200, 3600 * 3)
        for i in range(5):
            store.revoke(f"live-{i}", 3600)
        assert store.live_count(now, 1800) == 1198
    finally:
        store.close()


def test_an_unsupported_session_store_is_refused_without_echoing_its_password():
    """The message goes to the log (journald): a URL's credentials must not."""
    from gateway.errors import ConfigError
    from gateway.sessions import open_store
    with pytest.raises(ConfigError) as info:
        open_store("memcached://gw:hunter2@cache.example:11211/0")
    assert "memcached:" in str(info.value) and "hunter2" not in str(info.value)


def test_the_sqlite_session_store_is_private_to_the_gateway_account(tmp_path, caplog):
    """Its session ids with the secret make tokens. SQLite created it (and its -wal/-shm)
    0644; a store an earlier version left open is tightened, with a warning."""
    import sqlite3

    from gateway.sessions import open_store
    path = tmp_path / "new" / "sessions.sqlite"
    store = open_store(f"sqlite:///{path}")
    store.create("sid", "alice", time.time(), 60)
    files = [p for p in (path, tmp_path / "new" / "sessions.sqlite-wal", tmp_path / "new" / "sessions.sqlite-shm")
             if p.exists()]
    assert len(files) == 3, files                   # WAL mode: all three exist while open
    assert {p.name: p.stat().st_mode & 0o777 for p in files} == {p.name: 0o600 for p in files}
    store.close()

    old = tmp_path / "old.sqlite"
    sqlite3.connect(old).close()
    os.chmod(old, 0o644)
    with caplog.at_level("WARNING", logger="gateway.sessions"):
        open_store(f"sqlite:///{old}").close()
    assert old.stat().st_mode & 0o777 == 0o600 and "readable by others" in caplog.text


def test_a_token_without_a_credential_stamp_ends_once_the_backend_does_not_know_the_user(tmp_path):
    """PAM gives no stamp, so its tokens carry none. Switched to a users file (to cut some
    users off), the tokens of users it does not list must not stay valid for
    token_max_age_hours."""
    from gateway.errors import Unauthorized
    from gateway.sessions import TokenManager, open_store
    store = open_store(f"sqlite:///{tmp_path / 's.sqlite'}")
    stamps = {"alice": None}
    tokens = TokenManager(b"k" * 32, store, 3600, 24, stamp=lambda user: stamps["alice"])
    token = tokens.issue("alice", stamp=None)
    assert tokens.check(token).user == "alice"      # PAM: no stamp, no check
    stamps["alice"] = ""                            # a users file that does not list her
    with pytest.raises(Unauthorized, match="Session ended"):
        tokens.check(token)
    stamps["alice"] = "0123456789abcdef"            # one that lists her (or a backend back from a
    assert tokens.check(token).user == "alice"      # blip that gave no stamp at login) keeps it
    stamped = tokens.issue("alice", stamp="0123456789abcdef")
    stamps["alice"] = "fedcba9876543210"            # a stamped token of an old password ends
    with pytest.raises(Unauthorized, match="Session ended"):
        tokens.check(stamped)


def test_the_cli_names_an_unreachable_store_without_its_password(capsys):
    from gateway.cli import _end_sessions
    from tests.support import free_port
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"          # nothing listens there
    assert _end_sessions({"session_store": url, "token_max_age_hours": 24}, "dave") == "sessions NOT ended"
    err = capsys.readouterr().err
    assert "could not end dave's sessions in the redis: session store" in err and "hunter2" not in err, err


def test_checks_in_flight_expire_each_on_its_own(store_url):
    """A check in flight counts until it ends or until ttl after it began, whatever else
    arrives: a place a killed worker never gave back is gone ttl later even while logins
    keep coming (a window sliding with every attempt kept it, and locked the user out)."""
    from gateway.sessions import open_store
    store = open_store(store_url)
    now = time.time()
    try:
        assert store.begin("busy:u:x", "lost", 2, now) == 1           # never ended
        assert store.begin("busy:u:x", "a", 2, now + 1) == 2
        store.end("busy:u:x", "a")
        assert store.begin("busy:u:x", "b", 2, now + 2.5) == 1         # "lost" expired at now + 2
        assert store.begin("busy:u:y", "a", 2, now + 2.5) == 1         # keys apart
        store.end("busy:u:x", "b")
        store.end("busy:u:x", "b")                                     # twice: harmless
        assert store.begin("busy:u:x", "c", 2, now + 3) == 1
    finally:
        store.close()


def test_checks_in_flight_stay_counted_past_the_first_checks_window(make_app, monkeypatch):
    """The count of password checks in flight lived in a window fixed at the first check:
    one quick attempt opened it, a batch of slow wrong passwords sent just before it ended
    was forgotten just after, and a second batch was let in beside it (10 checks at once
    against a limit of 5). Each check's place now lasts as long as the check."""
    import threading

    import gateway.api.auth.views as views
    clock = [1_000_000.0]
    real = time

    class Clock:
        time = staticmethod(lambda: clock[0])
        monotonic = staticmethod(real.monotonic)
        sleep = staticmethod(real.sleep)

    monkeypatch.setattr(views, "time", Clock)
    monkeypatch.setattr(views, "LOGIN_QUEUE_SECONDS", 1.5)
    app, _ = make_app()
    gate, calls = threading.Event(), []

    class SlowWrong:                       # a slow wrong password (PAM's fail delay)
        def authenticate(self, name, password):
            calls.append(password)
            if password != "quick":
                gate.wait(20)
            return None

        def stamp(self, name):
            return None

    monkeypatch.setattr(app.extensions["hpc_gateway"], "authenticator", SlowWrong())
    statuses = {}

    def attempt(i, password=None):
        statuses[i] = app.test_client().post("/aip/v9.2/login", json={
            "username": "admin", "password": password or f"guess-{i}"}).status_code

    attempt("opener", "quick")                        # opens the old fixed window at T
    assert statuses["opener"] == 401
    clock[0] += 55                                    # T + 55: 4 slow checks
    batch = [threading.Thread(target=attempt, args=(i,)) for i in range(4)]
    try:
        for t in batch:
            t.start()
        deadline = time.monotonic() + 10
        while len(calls) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(calls) == 5
        clock[0] += 6                                 # T + 61: past the window of T
        late = threading.Thread(target=attempt, args=("late",))
        late.start()
        late.join(10)
        # 1 failure + 4 in flight = the limit of 5: it waits, then is told to come back.
        assert not late.is_alive() and statuses["late"] == 503, statuses
        assert len(calls) == 5, calls
    finally:
        gate.set()
        for t in batch:
            t.join(30)
    assert [statuses[i] for i in range(4)] == [401] * 4


def _open_store_at_once(path, barrier):
    from gateway.sessions import SqliteSessionStore
    barrier.wait()
    try:
        SqliteSessionStore(path).close()
        return "ok"
    except Exception as exc:  # noqa: BLE001 - the answer is what is compared
        return repr(exc)


def test_workers_opening_a_new_sqlite_store_at_once_all_boot(tmp_path):
    """Switching a new file to WAL takes it exclusively and does not wait: of 4 processes
    opening a new store at once, about one round in five had one fail with "database is
    locked" (a gunicorn worker that did not boot: CI failed on it once)."""
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    results = []
    with ctx.Manager() as manager, ctx.Pool(6) as pool:
        for i in range(15):
            barrier = manager.Barrier(6)
            results += pool.starmap(_open_store_at_once, [(str(tmp_path / f"s{i}.sqlite"), barrier)] * 6)
    assert results == ["ok"] * len(results), [r for r in results if r != "ok"]


def test_a_token_ends_at_its_max_age_and_a_forged_one_fails_also_once_a_signature_was_checked(tmp_path, monkeypatch):
    """A process checks a token's signature once and remembers it: the token must still end
    at token_max_age_hours on every later use, and a token differing by one character, or
    signed with another secret, must still be refused."""
    from gateway.errors import Unauthorized
    from gateway.sessions import SqliteSessionStore, TokenManager

    store = SqliteSessionStore(str(tmp_path / "s.sqlite"))
    tokens = TokenManager(b"k" * 32, store, timeout_minutes=10 ** 6, max_age_hours=1)
    token = tokens.issue("alice")
    for _ in range(3):
        assert tokens.check(token).user == "alice"
    body, _, signature = token.rpartition(".")
    forged = body + "." + ("A" if signature[0] != "A" else "B") + signature[1:]
    other = TokenManager(b"o" * 32, store, timeout_minutes=10 ** 6, max_age_hours=1).issue("alice")
    for bad in (forged, other, token + "x"):
        with pytest.raises(Unauthorized, match="Invalid token"):
            tokens.check(bad)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600 + 2)
    for _ in range(2):
        with pytest.raises(Unauthorized, match="Session expired: log in"):
            tokens.check(token)
    monkeypatch.setattr(time, "time", lambda: real() - 60)            # the clock stepped back
    with pytest.raises(Unauthorized, match="Session expired: log in"):
        tokens.check(token)
    fresh = TokenManager(b"k" * 32, store, timeout_minutes=10 ** 6, max_age_hours=1)   # nothing remembered
    with pytest.raises(Unauthorized, match="Session expired: log in"):
        fresh.check(token)
