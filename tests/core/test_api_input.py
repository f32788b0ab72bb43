"""Bad input: a clear message in the envelope, the right status, and nothing run."""
import io
import json

import pytest


@pytest.fixture
def client(make_app):
    return make_app()[1]


def _jobs(client):
    return client.get("/jobs", params={"limit": 1000}).body["data"]["total"]


def test_malformed_json_is_400_and_runs_nothing(client):
    before = _jobs(client)
    r = client.post("/jobs", data='{"command": "touch /tmp/x"', headers={"Content-Type": "application/json"})
    assert r.status == 400
    assert r.body == {"msg": r.body["msg"], "data": None}
    assert "Malformed JSON" in r.body["msg"]
    assert _jobs(client) == before


@pytest.mark.parametrize("body, field", [
    ({"command": 42}, "command"),
    ({"command": "true", "cpus": "2"}, "cpus"),
    ({"command": "true", "cpus": 0}, "cpus"),
    ({"command": "true", "cpus": 2.5}, "cpus"),
    ({"command": "true", "hold": "yes"}, "hold"),
    ({"command": "true", "memoryMB": -1}, "memoryMB"),
    ({"command": "true", "timeLimitMinutes": 10**9}, "timeLimitMinutes"),
    ({"command": "true", "queue": "a b"}, "queue"),
    ({"command": "true", "queue": "q;rm -rf /"}, "queue"),
    ({"command": "true", "name": "x\ny"}, "name"),
    ({"command": "true", "name": "a" * 200}, "name"),
    ({"command": "true", "workDir": "/tmp\x00/x"}, "workDir"),
    ({"command": "true", "workDir": "~/../bob"}, "workDir"),
    ({"command": "true", "stdout": "/tmp/../etc/passwd"}, "stdout"),
    ({"command": "true", "stderr": ".."}, "stderr"),
    ({"scriptLocation": "/home/alice/../bob/run.sh"}, "scriptLocation"),
    ({"command": "true", "environment": {"BAD-KEY": "v"}}, "environment"),
    ({"command": "true", "environment": {"1X": "v"}}, "environment"),
    ({"command": "true", "environment": {"K": 1}}, "environment"),
    ({"command": "true", "environment": ["K=v"]}, "environment"),
    ({"command": "true", "nativeOptions": "--exclusive"}, "nativeOptions"),
    ({"command": "true", "nativeOptions": ["ok", "\x00"]}, "nativeOptions"),
    ({"command": "true", "array": "1-10;ls"}, "array"),
    ({"command": "true", "dependency": "afterok:1;reboot"}, "dependency"),
    ({"command": "true", "dependency": "afterok:1180591620717411303424"}, "dependency"),
    ({"command": "true", "unknownOption": 1}, "unknownOption"),
    ({"command": "a\x00b"}, "command"),
])
def test_wrong_types_and_values_are_422_with_the_field_named(client, body, field):
    before = _jobs(client)
    r = client.post("/jobs", json=body)
    assert r.status == 422, r.body
    assert r.body["data"] is None
    assert field in r.body["errors"], r.body
    assert field in r.body["msg"]
    assert _jobs(client) == before


@pytest.mark.parametrize("body", [{}, {"script": "#!/bin/sh\n", "command": "true"},
                                  {"name": "x"}, [], "true", None])
def test_exactly_one_job_source_is_required(client, body):
    r = client.post("/jobs", json=body)
    assert r.status == 422, r.body
    assert r.body["msg"].startswith("Invalid input")


def test_body_over_the_limit_is_413(make_app):
    _, client = make_app(max_body_bytes=4096)
    r = client.post("/jobs", json={"script": "#!/bin/sh\n" + "#" * 10000})
    assert r.status == 413
    assert "4096" in r.body["msg"]


def test_query_parameters_are_checked(client):
    assert client.get("/jobs", params={"limit": "many"}).status == 422
    assert client.get("/jobs", params={"offset": -1}).status == 422
    jid = client.submit(command="true", hold=True)
    r = client.get(f"/jobs/{jid}", params={"wait": "forever"})
    assert r.status == 422
    assert client.get(f"/jobs/{jid}/output", params={"stream": "stdin"}).status == 422
    assert client.get(f"/jobs/{jid}/output", params={"limit": 0}).status == 422
    assert client.get(f"/jobs/{jid}/output", params={"offset": 2 ** 63}).status == 422


def test_a_query_parameter_the_operation_does_not_take_is_422_naming_it(client):
    """A misspelt parameter must not change the answer silently: ?wiat=30 answered at once
    (no long poll), and ?jobid=5 (for jobId) named a path in the home directory, not in
    the job's, for every files operation, DELETE included. jQuery's cache-buster `_` is
    let through."""
    jid = client.submit(command="true", hold=True)
    for method, path, params, name in [
            ("GET", "/jobs", {"stat": "RUNNING"}, "stat"),
            ("GET", f"/jobs/{jid}", {"wiat": 30}, "wiat"),
            ("GET", f"/jobs/{jid}/output", {"steam": "stderr"}, "steam"),
            ("GET", "/files", {"path": ".", "jobid": jid}, "jobid"),
            ("DELETE", "/files/content", {"path": "x", "jobid": jid}, "jobid")]:
        r = client.request(method, path, params=params)
        assert r.status == 422 and r.body["data"] is None, (path, r.status, r.body)
        assert r.body["errors"] == {name: ["Unknown field."]} and name in r.body["msg"], r.body
    assert client.get("/jobs", params={"_": "1733550000000", "state": "HELD,PENDING"}).body["data"]["total"] >= 1
    assert client.get(f"/jobs/{jid}", params={"_": "1"}).status == 200
    assert client.get("/files", params={"path": ".", "_": "1"}).status == 200


def test_unknown_routes_and_methods_answer_the_envelope(client):
    r = client.get("/nowhere")
    assert r.status == 404 and r.body["data"] is None and "No such route" in r.body["msg"]
    r = client.request("DELETE", "/jobs")
    assert r.status == 405 and r.body["data"] is None
    r = client.post("/jobs/1/explode")
    assert r.status == 404


def test_path_traversal_in_job_ids_is_404(client):
    for jid in ("..%2F..%2Fetc%2Fpasswd", "1;ls", "$(id)"):
        r = client.get(f"/jobs/{jid}")
        assert r.status == 404, (jid, r.body)
    # Refused by the gateway's own check (the plugin never sees them): a trailing newline,
    # an id shaped like an option.
    for jid, given in (("1%0A", "1\n"), ("-rf", "-rf"), ("--help", "--help")):
        r = client.get(f"/jobs/{jid}")
        assert (r.status, r.body["msg"]) == (404, f"no such job: {given!r}"), (jid, r.body)


def test_names_with_a_trailing_newline_are_not_valid():
    """`$` matches before a final newline: every validator anchors with \\Z."""
    from gateway.auth.users_file import valid_username
    from gateway.files import paths
    assert valid_username("alice") and not valid_username("alice\n")
    assert paths.valid_user_name("alice") and not paths.valid_user_name("alice\n")


def test_shell_metacharacters_are_carried_literally_and_never_interpreted(client, tmp_path):
    sentinel = tmp_path / "pwned"
    evil = f"x; touch {sentinel}; $(touch {sentinel}) `touch {sentinel}` | touch {sentinel}"
    jid = client.submit(command="echo \"$EVIL\"", name="n;$(id)`id`|&", environment={"EVIL": evil},
                        workDir=str(tmp_path))
    job = client.wait_for(jid, {"COMPLETED", "FAILED"})
    assert job["state"] == "COMPLETED"
    assert job["name"] == "n;$(id)`id`|&"
    assert client.output(jid)["data"] == evil + "\n"
    assert not sentinel.exists()


def test_errors_never_leak_a_traceback(tmp_path, monkeypatch):
    from gateway.hookspecs import hookimpl
    from tests.helpers import app_with_plugin

    class Boom:
        @hookimpl
        def list_hosts(self):
            raise RuntimeError("secret internals")

    _, c = app_with_plugin(monkeypatch, tmp_path, Boom(), "boom")
    r = c.get("/hosts")
    assert r.status == 500
    assert "secret internals" not in r.body["msg"] and r.body["data"] is None


def test_an_output_slice_is_capped_and_the_rest_follows_from_next_offset(client):
    """A 16 MiB limit of binary output was a ~96 MiB JSON answer (each byte a 6-character
    \\ufffd) and a 224 MB peak: the mock returns at most max_output_bytes (1 MiB) per call,
    as slurm_ssm does, and nextOffset leads on to the rest."""
    jid = client.submit(command="yes xxxxxxx | head -c 1500000", name="big-output")
    client.wait_for(jid, "COMPLETED")
    first = client.output(jid, limit=16 * 1024 * 1024)
    assert len(first["data"]) == 1024 * 1024 and first["nextOffset"] == 1024 * 1024
    rest = client.output(jid, offset=first["nextOffset"], limit=16 * 1024 * 1024)
    assert len(rest["data"]) == 1500000 - 1024 * 1024 and set(first["data"] + rest["data"]) == {"x", "\n"}


def test_json_nested_past_the_recursion_limit_is_400_before_login(make_app):
    """200 KB of [[[...]]]: within max_body_bytes, but json.loads raises RecursionError."""
    app, client = make_app()
    deep = "[" * 100_000 + "]" * 100_000
    r = app.test_client().post("/aip/v9.2/login", data=deep, content_type="application/json")
    assert r.status_code == 400 and "Malformed JSON" in r.get_json()["msg"]
    before = _jobs(client)
    r = client.post("/jobs", data=deep, headers={"Content-Type": "application/json"})
    assert r.status == 400 and "Malformed JSON" in r.body["msg"]
    assert _jobs(client) == before


def _chunked(app, path, body: bytes):
    """A body without Content-Length, as a chunked request reaches the app (gunicorn
    terminates the stream and says so in wsgi.input_terminated)."""
    return app.test_client().post(path, input_stream=io.BytesIO(body), headers={
        "Transfer-Encoding": "chunked", "Content-Type": "application/json"},
        environ_overrides={"wsgi.input_terminated": True})


def test_a_chunked_body_over_the_limit_is_413_not_cut_and_run(make_app, tmp_path):
    """werkzeug reads a body without Content-Length up to the limit and drops the rest: a
    valid login followed by spaces logged in on the cut body."""
    app, _ = make_app(max_body_bytes=4096)
    password = (tmp_path / "work" / "initial-admin-password").read_text().strip()
    login = json.dumps({"username": "admin", "password": password}).encode()
    r = _chunked(app, "/aip/v9.2/login", login + b" " * 8192)
    assert r.status_code == 413 and "4096" in r.get_json()["msg"]
    r = _chunked(app, "/aip/v9.2/login", login + b" " * (4096 - len(login)))    # at the limit
    assert r.status_code == 200 and r.get_json()["data"]["token"]
    # ...and read as any other body: not JSON is a 415 for a chunked one too.
    r = app.test_client().post("/aip/v9.2/login", input_stream=io.BytesIO(b"user=admin"), headers={
        "Transfer-Encoding": "chunked", "Content-Type": "application/x-www-form-urlencoded"},
        environ_overrides={"wsgi.input_terminated": True})
    assert r.status_code == 415, r.get_json()


def test_a_body_not_sent_as_json_is_415_saying_so(make_app):
    """curl -d sends application/x-www-form-urlencoded: webargs read no body, and the answer
    blamed missing fields ("give exactly one of script, command...")."""
    app, client = make_app()
    before = _jobs(client)
    r = client.post("/jobs", data='{"command": "touch /tmp/x"}',
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 415 and "Content-Type: application/json" in r.body["msg"], r.body
    assert "application/x-www-form-urlencoded" in r.body["msg"]
    assert _jobs(client) == before
    r = app.test_client().post("/aip/v9.2/login", data='{"username": "admin", "password": "x"}',
                               content_type="text/plain")
    assert r.status_code == 415
    # No body at all is still the schema's business.
    assert client.post("/jobs").status == 422


def test_cors_for_the_configured_origins_only(make_app):
    """A portal on another origin: its browser's preflight carries no token and is answered
    before authentication; answers carry Access-Control-Allow-Origin for that origin only."""
    portal, other = "https://portal.example.org", "https://evil.example.net"
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    app, client = make_app(cors_origins=[portal])
    r = app.test_client().options("/aip/v9.2/jobs", headers={"Origin": portal, **preflight})
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == portal
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in r.headers
    r = app.test_client().options("/aip/v9.2/jobs", headers={"Origin": other, **preflight})
    assert r.status_code == 401 and "Access-Control-Allow-Origin" not in r.headers
    r = client.get("/jobs", headers={"Origin": portal})
    assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == portal
    assert "Origin" in r.headers["Vary"] and "Retry-After" in r.headers["Access-Control-Expose-Headers"]
    assert "X-Wait-Seconds" in r.headers["Access-Control-Expose-Headers"]       # a browser portal reads it
    assert "Access-Control-Allow-Origin" not in client.get("/jobs", headers={"Origin": other}).headers
    # Errors too: a browser must be able to read why.
    r = app.test_client().get("/aip/v9.2/jobs", headers={"Origin": portal})
    assert r.status_code == 401 and r.headers["Access-Control-Allow-Origin"] == portal
    # None configured (the default): no CORS headers at all.
    app, client = make_app()
    r = app.test_client().options("/aip/v9.2/jobs", headers={"Origin": portal, **preflight})
    assert r.status_code == 401 and "Access-Control-Allow-Origin" not in r.headers


def test_cors_preflights_allow_every_method_the_api_has(make_app):
    """A method missing from Access-Control-Allow-Methods is one a browser never sends (PATCH
    /jobs/{id} was)."""
    portal = "https://portal.example.org"
    app, _ = make_app(cors_origins=[portal])
    used = {m for rule in app.url_map.iter_rules() for m in rule.methods}
    r = app.test_client().options("/aip/v9.2/jobs/1", headers={
        "Origin": portal, "Access-Control-Request-Method": "PATCH",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert r.status_code == 204
    allowed = {m.strip() for m in r.headers["Access-Control-Allow-Methods"].split(",")}
    assert "PATCH" in used and used <= allowed, used - allowed


@pytest.mark.parametrize("origins", [["https://portal.example.org/app"], ["portal.example.org"], ["*.example.org"]])
def test_cors_origins_must_be_origins(origins):
    from gateway.config import load_config
    from gateway.errors import ConfigError
    with pytest.raises(ConfigError, match="cors_origins"):
        load_config({"cors_origins": origins})


def test_a_listing_filter_in_any_case_and_a_wrong_one_in_words(client):
    jid = client.submit(command="sleep 30", hold=True)
    try:
        r = client.get("/jobs", params={"state": "held,Running"})
        assert r.status == 200 and jid in {j["jobId"] for j in r.body["data"]["jobs"]}
        r = client.get("/jobs", params={"state": "finished"})
        assert r.status == 422
        assert r.body["msg"].startswith("Invalid input: state: Must be one of: PENDING"), r.body["msg"]
        assert "{" not in r.body["msg"]
    finally:
        client.post(f"/jobs/{jid}/kill")


def test_no_query_string_loads_the_same_defaults_every_time_and_a_failing_load_fails_every_time():
    """The parser loads a query schema from no query string once and copies the result (the
    polling clients' every GET): a view changing its copy, or a request with a query string,
    must not change what the next request gets, and a required parameter missing must be a
    422 every time, not only the first."""
    from flask import Flask
    from marshmallow import Schema, fields
    from werkzeug.exceptions import HTTPException

    from gateway.api.common import Blueprint

    parser = Blueprint.ARGUMENTS_PARSER

    class Optional(Schema):
        n = fields.Integer(load_default=3)
        since = fields.String()

    class Required(Schema):
        path = fields.String(required=True)

    class Listed(Schema):
        tags = fields.List(fields.String(), load_default=lambda: ["a"])

    stamps = iter(range(10 ** 6))

    class Computed(Schema):           # a default computed per load (a time, an id): never kept
        stamp = fields.Integer(load_default=lambda: next(stamps))

    optional, required, listed, computed = Optional(), Required(), Listed(), Computed()
    app = Flask(__name__)
    for _ in range(3):
        with app.test_request_context("/x"):
            args = parser.parse(optional, location="query")
            assert args == {"n": 3}
            args["n"], args["since"] = 99, "RUNNING"           # the view's copy, changed
        with app.test_request_context("/x?n=5&since=PEND"):
            assert parser.parse(optional, location="query") == {"n": 5, "since": "PEND"}
        with app.test_request_context("/x"):
            with pytest.raises(HTTPException) as exc:
                parser.parse(required, location="query")
            assert exc.value.code == 422
            tags = parser.parse(listed, location="query")
            assert tags == {"tags": ["a"]}
            tags["tags"].append("changed")                      # a list is never shared
            assert parser.parse(computed, location="query") != parser.parse(computed, location="query")
        with app.test_request_context("/x?n=oops"):
            with pytest.raises(HTTPException) as exc:
                parser.parse(optional, location="query")
            assert exc.value.code == 422


def test_the_app_asks_once_whether_a_function_is_a_coroutine_function():
    """GatewayFlask.ensure_sync remembers the sync functions (a bound method as its function,
    so the views' per-request instances do not fill the table, which is bounded anyway) and
    never takes a coroutine function for one."""
    from gateway.app import GatewayFlask

    app = GatewayFlask(__name__)

    def hook():
        return 1

    class View:
        def get(self):
            return 2

    assert app.ensure_sync(hook) is hook and app.ensure_sync(hook) is hook
    for _ in range(50):
        method = View().get
        assert app.ensure_sync(method) is method
    assert len(app._sync) == 2

    async def coroutine_view():
        return 3

    for _ in range(2):
        try:
            wrapped = app.ensure_sync(coroutine_view)
        except RuntimeError:          # Flask without its async extra refuses it: not taken as sync either
            wrapped = None
        assert wrapped is not coroutine_view
    for i in range(GatewayFlask._SYNC_BOUND + 10):
        app.ensure_sync(lambda i=i: i)
    assert len(app._sync) <= GatewayFlask._SYNC_BOUND
