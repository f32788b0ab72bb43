"""schemathesis against /openapi.json of a live gateway (gunicorn as deployed, mock backend):
every operation, as a normal user (over 1000 requests) and then as an administrator. No 5xx,
every response documented (status code, content type, headers, body schema), invalid input
rejected, and no operation that needs a token answers without one.

Deterministic for CI: ``--generation-deterministic``, no example database, a fixed number
of examples per operation. Bounded: ?wait= is capped at 1 s (max_wait_seconds), the
mock has one slot, held by another user's job, so nothing the fuzzer submits ever runs (job
submissions are also forced to ``hold: true``; see fuzz_hooks.py), file operations are
confined to a scratch directory, and the whole run has a time limit.

Accepted findings (failures in other owners' code, with an expiry date) are listed in
fuzz-baseline.json beside this file (none now); any other failure fails the test. A past
expiry date fails the run: the 2026-11-22 entries (gunicorn's HTML 414) expired on
2026-12-06 and failed stop 20's CI; gunicorn's refusals are JSON since (gateway/serving.py).
schemathesis.toml beside this file adds gunicorn's 414 and 431 to the statuses that count as
refusing invalid input. The run's output is
in test-artifacts/fuzz-<user>.txt.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tests.support import ensure_user, require

from .live import LiveGateway, samples_named

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BASELINE = HERE / "fuzz-baseline.json"
CONFIG = HERE / "schemathesis.toml"
USER, BOB, ADMIN = "gwalice", "gwbob", "gwadmin"
CHECKS = ",".join([
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_headers_conformance", "response_schema_conformance", "negative_data_rejection", "ignored_auth",
])
# Per operation; about 1500 requests over the 30 operations in about a minute on 2 cores.
USER_EXAMPLES = 30
ADMIN_EXAMPLES = 10
RUN_TIMEOUT = 240
REQS = "hpcgw_http_requests_total"


def schemathesis_available() -> bool:
    try:
        import schemathesis  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    require(schemathesis_available(), "schemathesis is not installed (pip install -e '.[test]')")
    sudo = os.geteuid() == 0
    if sudo:
        for name in (USER, BOB, ADMIN):
            require(ensure_user(name), f"cannot create Unix user {name}")
    tmp = tmp_path_factory.mktemp("fuzz")
    # Files live in a scratch tree the job owners can write; the fuzzer cannot leave it.
    scratch = Path(tempfile.mkdtemp(prefix="hpcgw-fuzz-files-"))
    os.chmod(scratch, 0o755)
    for name in (USER, BOB, ADMIN):
        (scratch / name).mkdir()
        if sudo:
            shutil.chown(scratch / name, name, name)
    options = {"state_dir": str(tmp / "mock"), "slots": 1, "run_as": "sudo" if sudo else "service"}
    gw = LiveGateway(tmp, workers=2, threads=8, users={USER: False, BOB: False, ADMIN: True},
                     scheduler={"backend": "mock", "options": options},
                     max_wait_seconds=1, files={"roots": [f"{scratch}/{{user}}"]},
                     auth={"login_limit": {"max_failures_per_user": 1_000_000,
                                           "max_failures_per_address": 1_000_000}})
    try:
        gw.start()
        # The one slot, taken for the whole run by a user the fuzzer never acts as.
        r = gw.post("/jobs", BOB, json={"command": "sleep 900", "name": "fuzz-blocker"})
        assert r.status_code == 200, r.text
        blocker = r.json()["data"]["job"]["jobId"]
        deadline = time.monotonic() + 30
        while gw.get(f"/jobs/{blocker}", BOB).json()["data"]["job"]["state"] != "RUNNING":
            assert time.monotonic() < deadline, "the blocker job did not start"
            time.sleep(0.2)
        gw.blocker = blocker
        yield gw
    finally:
        try:
            if gw.replica is not None and gw.replica.proc.alive():
                kill_every_job(gw)
        finally:
            gw.stop()
            shutil.rmtree(scratch, ignore_errors=True)


def kill_every_job(gw: LiveGateway) -> None:
    """Jobs outlive the gateway (detached runners): end them all before it stops."""
    for _ in range(3):
        jobs = gw.get("/jobs", ADMIN, params={"user": "all", "limit": 1000}).json()["data"]["jobs"]
        active = [j["jobId"] for j in jobs if j["state"] not in ("COMPLETED", "FAILED", "CANCELLED")]
        if not active:
            return
        for job_id in active:
            gw.post(f"/jobs/{job_id}/kill", ADMIN)
        time.sleep(0.5)


def route_counts(gw: LiveGateway) -> dict[tuple[str, str, str], float]:
    """{(route, method, status): requests} from the gateway's own /metrics."""
    out = {}
    for labels, value in samples_named(gw.scrape(), REQS).items():
        d = dict(labels)
        out[(d["route"], d["method"], d["status"])] = value
    return out


def operations(gw: LiveGateway) -> set[tuple[str, str]]:
    """(Flask rule, METHOD) of every operation in the OpenAPI document."""
    spec = requests.get(gw.url + "/openapi.json", timeout=30).json()
    ops = set()
    for path, item in spec["paths"].items():
        for method in item:
            if method in ("get", "post", "put", "patch", "delete"):
                ops.add((re.sub(r"\{(\w+)\}", r"<\1>", path), method.upper()))
    return ops


def normalize_rule(rule: str) -> str:
    """"/jobs/<job_id>/<any(kill,...):action>" -> "/jobs/<job_id>/<action>" (as in the OpenAPI paths)."""
    return re.sub(r"<(?:[^:>]+:)?(\w+)>", r"<\1>", rule)


def run_schemathesis(gw: LiveGateway, user: str, examples: int, artifacts: str, *extra: str):
    env = dict(os.environ, SCHEMATHESIS_HOOKS="tests.reliability.fuzz_hooks", HPCGW_FUZZ_API=gw.api,
               HPCGW_FUZZ_USER=user, HPCGW_FUZZ_PASSWORD=gw.passwords[user], HPCGW_FUZZ_TOKEN=gw.token(user),
               PYTHONPATH=str(ROOT), NO_COLOR="1")
    argv = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", gw.url + "/openapi.json",
            "--checks", CHECKS, "--max-examples", str(examples), "--generation-deterministic",
            "--phases", "examples,coverage,fuzzing",
            "--workers", "1", "--request-timeout", "30", "--no-color", "--output-truncate", "true",
            "--suppress-health-check", "all", "--baseline", str(BASELINE),
            "--report", "junit", "--report-junit-path", os.path.join(artifacts, f"fuzz-{user}.junit.xml"),
            *extra]
    start = time.monotonic()
    try:
        proc = subprocess.run(argv, env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"schemathesis did not finish in {RUN_TIMEOUT} s:\n{(exc.stdout or '')[-4000:]}")
    took = time.monotonic() - start
    output = proc.stdout + proc.stderr
    with open(os.path.join(artifacts, f"fuzz-{user}.txt"), "w") as fh:
        fh.write(output)
    summary = re.search(r"Test cases:\s*\n\s*(.+)", output)
    print(f"\nschemathesis as {user}: {summary.group(1) if summary else '?'} in {took:.0f} s "
          f"(output: test-artifacts/fuzz-{user}.txt)")
    return proc.returncode, output


def served(before: dict, after: dict) -> dict[tuple[str, str, str], float]:
    """Requests served between two scrapes, by (normalized rule, method, status)."""
    out: dict[tuple[str, str, str], float] = {}
    for key, value in after.items():
        n = value - before.get(key, 0.0)
        if n > 0:
            k = (normalize_rule(key[0]), key[1], key[2])
            out[k] = out.get(k, 0.0) + n
    return out


def test_fuzz_every_operation_as_a_user(gateway, artifacts_dir):
    gw = gateway
    before = route_counts(gw)
    code, output = run_schemathesis(gw, USER, USER_EXAMPLES, artifacts_dir)
    after = route_counts(gw)
    assert code == 0, f"schemathesis found failures (not in {BASELINE.name}):\n{output[-12000:]}"
    delta = served(before, after)
    # The gateway's own count: requests served during the run, route by route.
    api = {k: v for k, v in delta.items() if k[0] not in ("/metrics", "/openapi.json", "/aip/v9.2/openapi.json")}
    total = sum(api.values())
    print(f"gateway served {total:.0f} fuzzed requests; by status: "
          f"{ {s: sum(v for k, v in api.items() if k[2] == s) for s in sorted({k[2] for k in api})} }")
    assert total >= 1000, total
    assert not {k: v for k, v in api.items() if k[2].startswith("5")}, "5xx answers"
    reached = {(route, method) for route, method, _ in api}
    missing = operations(gw) - reached
    assert not missing, f"operations the fuzzer never reached: {sorted(missing)}"
    # The blocker (another user's job) was never touched: nothing the fuzzer submitted ran.
    job = gw.get(f"/jobs/{gw.blocker}", BOB).json()["data"]["job"]
    assert job["state"] == "RUNNING", job


def test_fuzz_admin_operations_as_an_administrator(gateway, artifacts_dir):
    gw = gateway
    before = route_counts(gw)
    # Job actions stay with the user run: as an admin the fuzzer could end the blocker.
    code, output = run_schemathesis(gw, ADMIN, ADMIN_EXAMPLES, artifacts_dir,
                                    "--include-path-regex", "/(hosts|queues|users|cluster|jobs$|health)")
    after = route_counts(gw)
    assert code == 0, f"schemathesis found failures (not in {BASELINE.name}):\n{output[-12000:]}"
    api = served(before, after)
    assert not {k: v for k, v in api.items() if k[2].startswith("5")}, "5xx answers"
    # Admin actions were really exercised (not only refused with 403).
    for rule in ("/aip/v9.2/hosts/<name>/<action>", "/aip/v9.2/queues/<name>/<action>"):
        statuses = {k[2] for k in api if k[0] == rule}
        assert statuses - {"403", "401"}, (rule, statuses)
