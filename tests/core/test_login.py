"""Logins: users file, PAM against real Unix users, rate limits, audit log."""
from __future__ import annotations

import logging
import os
import subprocess

import pytest

from gateway import create_app
from gateway.auth.users_file import UsersFile
from tests.helpers import ApiClient, ensure_unix_user, random_password, require, set_unix_password


def test_users_file_stores_argon2_hashes_never_passwords(tmp_path):
    users = UsersFile(str(tmp_path / "users.yaml"))
    users.set_password("carol", "correct horse battery", admin=False)
    text = (tmp_path / "users.yaml").read_text()
    assert "correct horse" not in text
    assert "$argon2id$" in text
    assert (tmp_path / "users.yaml").stat().st_mode & 0o777 == 0o600
    assert users.verify("carol", "correct horse battery").name == "carol"
    assert users.verify("carol", "wrong") is None
    assert users.verify("nobody", "correct horse battery") is None


def test_cli_adds_changes_and_removes_users(tmp_path):
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"work_dir: {tmp_path}\n")
    cli = [os.path.join(os.path.dirname(__import__('sys').executable), "hpc-gateway"), "--config", str(cfg)]

    def run(*args, stdin=""):
        return subprocess.run([*cli, *args], input=stdin, capture_output=True, text=True, timeout=60)

    assert run("users", "add", "dave", "--password-stdin", stdin="first-password\n").returncode == 0
    assert run("users", "add", "dave", "--password-stdin", stdin="again-password\n").returncode != 0
    assert run("users", "add", "Bad;Name", "--password-stdin", stdin="whatever-pass\n").returncode == 2
    assert run("users", "add", "erin", "--admin", "--password-stdin", stdin="short\n").returncode == 2
    app = create_app({"work_dir": str(tmp_path), "log_level": "warning"})
    assert ApiClient(app).post("/login", json={"username": "dave", "password": "first-password"}).status == 200
    assert run("users", "passwd", "dave", "--password-stdin", stdin="second-password\n").returncode == 0
    assert ApiClient(app).post("/login", json={"username": "dave", "password": "first-password"}).status == 401
    assert ApiClient(app).post("/login", json={"username": "dave", "password": "second-password"}).status == 200
    assert "dave" in run("users", "list").stdout
    assert run("users", "remove", "dave").returncode == 0
    assert ApiClient(app).post("/login", json={"username": "dave", "password": "second-password"}).status == 401


def test_login_errors_say_what_to_do(make_app):
    app, _ = make_app()
    c = ApiClient(app)
    r = c.post("/login", json={"username": "admin", "password": "nope"})
    assert r.status == 401 and r.body == {"msg": "Wrong user name or password", "data": None}
    assert c.post("/login", json={"username": "admin"}).status == 422
    r = c.post("/login", data="user=admin", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 415 and "Content-Type: application/json" in r.body["msg"]


def test_a_user_name_with_control_characters_is_refused_before_anything_is_logged(make_app, caplog):
    """A newline in the user name would forge lines in the plain-text audit log."""
    app, _ = make_app()
    forged = "x\n2026-12-06 07:00:00,000 INFO gateway.audit: login ok user=root"
    with caplog.at_level(logging.INFO, logger="gateway.audit"):
        r = ApiClient(app).post("/login", json={"username": forged, "password": "whatever"})
    assert r.status == 422 and "control characters" in r.body["msg"]
    assert "login ok user=root" not in caplog.text and "login failed" not in caplog.text


def test_repeated_failures_are_limited_per_user_with_retry_after(make_app, caplog):
    app, admin = make_app(auth={"login_limit": {"max_failures_per_user": 3, "max_failures_per_address": 100,
                                                "window_seconds": 60}})
    c = ApiClient(app)
    secret_try = "wrong-password-SECRET"
    with caplog.at_level(logging.INFO, logger="gateway.audit"):
        for _ in range(3):
            assert c.post("/login", json={"username": "admin", "password": secret_try}).status == 401
        r = c.post("/login", json={"username": "admin", "password": secret_try})
    assert r.status == 429
    assert 0 < int(r.headers["Retry-After"]) <= 60
    assert "too many failed logins" in r.body["msg"]
    # Even the right password waits now: the limit is per user.
    password = open(os.path.join(app.extensions["hpc_gateway"].config["work_dir"], "initial-admin-password")).read().strip()
    assert c.post("/login", json={"username": "admin", "password": password}).status == 429
    # Other users are not locked out by admin's failures.
    assert c.post("/login", json={"username": "someone", "password": "x"}).status == 401
    # The audit log names user, address and outcome, never the password.
    text = caplog.text
    assert "login failed user=admin address=127.0.0.1" in text
    assert "rate limit" in text
    assert secret_try not in text


def test_repeated_failures_are_limited_per_address(make_app):
    app, _ = make_app(auth={"login_limit": {"max_failures_per_user": 100, "max_failures_per_address": 4,
                                            "window_seconds": 60}})
    c = ApiClient(app)
    for i in range(4):
        assert c.post("/login", json={"username": f"user{i}", "password": "x"}).status == 401
    r = c.post("/login", json={"username": "fresh", "password": "x"})
    assert r.status == 429 and "address" in r.body["msg"]


def test_forwarded_addresses_are_believed_from_the_proxies_only(make_app, caplog):
    """trusted_proxies: 1 behind NGINX. A client reaching the replica directly (past NGINX) sends
    its own X-Forwarded-For: it must still be counted, and logged, under its real address."""
    app, _ = make_app(trusted_proxies=1, proxy_addresses=["127.0.0.1", "192.0.2.0/24"],
                      auth={"login_limit": {"max_failures_per_user": 100, "max_failures_per_address": 3,
                                            "window_seconds": 60}})
    flask = app.test_client()

    def login(i, remote):
        return flask.post("/aip/v9.2/login", json={"username": f"user{i}", "password": "x"},
                          headers={"X-Forwarded-For": f"203.0.113.{i}"},
                          environ_base={"REMOTE_ADDR": remote}).status_code

    with caplog.at_level("INFO"):
        # From a proxy: each forwarded address is its own (5 addresses, 1 failure each).
        assert [login(i, "192.0.2.7") for i in range(5)] == [401] * 5
        # From elsewhere: one address however the header varies; the 4th is over the limit.
        assert [login(i, "198.51.100.9") for i in range(10, 14)] == [401, 401, 401, 429]
    assert "address=203.0.113.4" in caplog.text and "address=203.0.113.10" not in caplog.text
    assert "address=198.51.100.9" in caplog.text


def test_proxy_addresses_must_be_addresses(tmp_path):
    from gateway.config import load_config
    from gateway.errors import ConfigError
    with pytest.raises(ConfigError) as e:
        load_config({"work_dir": str(tmp_path), "proxy_addresses": ["nginx.example.org"]})
    assert "nginx.example.org" in e.value.msg


@pytest.fixture
def pam_user():
    require(os.geteuid() == 0, "PAM login of a real Unix user needs root (useradd, chpasswd, /etc/shadow)")
    name = "gwpamuser"
    assert ensure_unix_user(name)
    password = random_password()
    set_unix_password(name, password)
    yield name, password
    subprocess.run(["userdel", "-r", name], capture_output=True)


def test_pam_login_of_a_real_unix_user(tmp_path, pam_user):
    name, password = pam_user
    app = create_app({"work_dir": str(tmp_path), "log_level": "warning", "auth": {"backend": "pam"},
                      "scheduler": {"backend": "mock", "options": {"state_dir": str(tmp_path / "mock")}}})
    c = ApiClient(app)
    assert c.post("/login", json={"username": name, "password": "not-" + password}).status == 401
    r = c.post("/login", json={"username": name, "password": password})
    assert r.status == 200, r.body
    c.token = r.body["data"]["token"]["token"]
    jid = c.submit(command="id -un")
    job = c.wait_for(jid, {"COMPLETED", "FAILED"})
    assert job["userName"] == name
    assert not (tmp_path / "initial-admin-password").exists()     # PAM needs no generated user


def test_wrong_pam_passwords_do_not_queue_every_other_login(tmp_path, pam_user):
    """A failed PAM check sleeps on purpose (pam_faildelay, 3 s in Debian's "login"). Under one
    process-wide lock, six wrong passwords made a good login wait for all of them (~18-21 s);
    with a PAM handle per check and a few checks at once, it is answered with the first ones."""
    import concurrent.futures
    import time

    name, password = pam_user
    app = create_app({"work_dir": str(tmp_path), "log_level": "warning", "auth": {
        "backend": "pam", "login_limit": {"max_failures_per_user": 100, "max_failures_per_address": 100,
                                          "window_seconds": 60}},
        "scheduler": {"backend": "mock", "options": {"state_dir": str(tmp_path / "mock")}}})
    finished = {}

    def login(label, pw):
        status = ApiClient(app).post("/login", json={"username": name, "password": pw}).status
        finished[label] = time.monotonic()
        return status

    with concurrent.futures.ThreadPoolExecutor(max_workers=7) as pool:
        bad = [pool.submit(login, f"bad{i}", f"not-{password}-{i}") for i in range(6)]
        time.sleep(0.5)                         # the six are being checked (or waiting) first
        good = pool.submit(login, "good", password)
        assert good.result() == 200 and [f.result() for f in bad] == [401] * 6
    last_bad = max(t for label, t in finished.items() if label.startswith("bad"))
    assert finished["good"] < last_bad, finished


def test_a_login_that_could_not_be_checked_is_not_a_failed_login(make_app):
    """An authenticator error (an unreadable users file...) is a 500, not a wrong password:
    it must not count towards the limit (five such errors locked the user out for 300 s)."""
    app, _ = make_app(auth={"login_limit": {"max_failures_per_user": 3, "max_failures_per_address": 3,
                                            "window_seconds": 300}})
    state = app.extensions["hpc_gateway"]
    real, broken = state.authenticator.authenticate, [True]

    def authenticate(name, password):
        if broken[0]:
            raise PermissionError("users.yaml: Permission denied")
        return real(name, password)

    state.authenticator.authenticate = authenticate
    password = open(os.path.join(state.config["work_dir"], "initial-admin-password")).read().strip()
    c = ApiClient(app)
    for _ in range(5):
        assert c.post("/login", json={"username": "admin", "password": password}).status == 500
    broken[0] = False
    assert c.post("/login", json={"username": "admin", "password": password}).status == 200


def test_pam_checks_at_once_are_a_setting(tmp_path):
    """auth.pam_concurrent_checks: 1 for a PAM module that is not thread-safe."""
    from gateway.auth.pam import PamAuthenticator
    from gateway.config import load_config
    from gateway.errors import ConfigError
    cfg = load_config({"work_dir": str(tmp_path), "auth": {"backend": "pam", "pam_concurrent_checks": 1}})
    one = PamAuthenticator(cfg["auth"])
    assert one._turns.acquire(timeout=0) and not one._turns.acquire(timeout=0)
    default = PamAuthenticator(load_config({"work_dir": str(tmp_path), "auth": {"backend": "pam"}})["auth"])
    assert [default._turns.acquire(timeout=0) for _ in range(5)] == [True] * 4 + [False]
    with pytest.raises(ConfigError):
        load_config({"work_dir": str(tmp_path), "auth": {"backend": "pam", "pam_concurrent_checks": 0}})


def test_every_request_that_may_change_something_is_audited_with_its_user(make_app, caplog):
    """Submissions, kills, host and queue control, file writes: who, what, how it ended, in
    gateway.audit (login and logout write their own lines, logout now with its user)."""
    app, admin = make_app(log_level="warning")        # audited whatever log_level says
    jid = admin.submit(command="sleep 30", hold=True)
    admin.post(f"/jobs/{jid}/kill")
    admin.get(f"/jobs/{jid}")                                    # reads are not audited
    assert admin.request("PUT", "/files/content", params={"path": "~/a b.txt"}, data=b"x").status == 200
    assert admin.request("DELETE", "/files/content", params={"path": "~/a b.txt"}).status == 200
    assert admin.request("PUT", "/files/content", params={"path": "~/x\nINFO forged"}, data=b"x").status == 400
    # An unrouted request's query is not logged (a mistyped login URL may carry a password).
    assert admin.post("/login/x?username=admin&password=hunter2").status == 404
    assert admin.post("/jobs/1%0A2026-12-06 INFO gateway.audit: forged/kill").status == 404
    admin.post("/logout")
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.audit"]
    assert f"POST /aip/v9.2/jobs status=200 user=admin address=127.0.0.1 job={jid}" in lines, lines
    assert f"POST /aip/v9.2/jobs/{jid}/kill status=200 user=admin address=127.0.0.1" in lines
    # A file written and removed: which one (the query), percent-encoded as sent.
    files = [r.getMessage() for r in caplog.records if r.name == "gateway.audit" and "/files/" in r.getMessage()]
    assert files == ["PUT /aip/v9.2/files/content?path=~/a+b.txt status=200 user=admin address=127.0.0.1",
                     "DELETE /aip/v9.2/files/content?path=~/a+b.txt status=200 user=admin address=127.0.0.1",
                     "PUT /aip/v9.2/files/content?path=~/x%0AINFO+forged status=400 user=admin address=127.0.0.1"], files
    assert not [ln for ln in lines if ln.startswith("GET")]
    assert "POST /aip/v9.2/jobs/1%0A2026-12-06%20INFO%20gateway.audit:%20forged/kill status=404 " \
           "user=admin address=127.0.0.1" in lines
    assert "logout user=admin address=127.0.0.1" in lines
    assert all("\n" not in ln for ln in lines) and not any("hunter2" in ln for ln in lines)
    assert "POST /aip/v9.2/login/x status=404 user=- address=127.0.0.1" in lines


@pytest.mark.parametrize("ssl, url", [(0, "http://localhost:8088/aip/v9.2/login"),
                                      (1, "https://localhost:8443/aip/v9.2/login")])
def test_the_first_start_prints_a_login_command_that_reaches_the_gateway(tmp_path, caplog, ssl, url):
    """With ssl: 1 it named http:// on the HTTPS port, which fails."""
    with caplog.at_level("WARNING", logger="gateway"):
        create_app({"work_dir": str(tmp_path / "w"), "ssl": ssl, "http_port": 8088, "https_port": 8443,
                    "cert": str(tmp_path / "gw.crt"), "key": str(tmp_path / "gw.key"),
                    "scheduler": {"backend": "mock", "options": {"state_dir": str(tmp_path / "mock")}}})
    assert f"curl -X POST {url} " in caplog.text, caplog.text


def test_a_login_answer_is_never_cached(make_app):
    """It carries a token: `Cache-Control: no-store`, as the vis answers (a desktop's password)."""
    app, _ = make_app()
    password = open(os.path.join(app.extensions["hpc_gateway"].config["work_dir"], "initial-admin-password")).read().strip()
    r = app.test_client().post("/aip/v9.2/login", json={"username": "admin", "password": password})
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
