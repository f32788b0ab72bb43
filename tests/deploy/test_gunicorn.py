"""deploy/gunicorn.conf.py: long polls hold threads, not workers; metrics add up across workers."""
from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time

import requests

from tests.helpers import ApiClient

from .servers import PREFIX, GunicornReplica, free_port, wait_until, write_config


def _replica(procs, tmp, settings: dict | None = None, **kw):
    (tmp / "run").mkdir()          # as systemd's RuntimeDirectory= would provide
    config = write_config(tmp / "gateway.yaml", bind="127.0.0.1", http_port=free_port(), work_dir=str(tmp / "work"),
                          log_level="info", scheduler={"backend": "mock", "options": {"state_dir": str(tmp / "mock")}},
                          **(settings or {}))
    replica = GunicornReplica(procs, "replica", config, tmp / "log", extra_env={"RUNTIME_DIRECTORY": str(tmp / "run")},
                              **kw).start()
    password = (tmp / "work" / "initial-admin-password").read_text().strip()
    return replica, ApiClient(replica.base).login("admin", password)


def test_long_polls_hold_threads_not_the_worker(tmp_path, procs, need_gunicorn):
    # Five polls of one user wait their full time: more than max_waits_per_user's default
    # share (a quarter of 8 threads) allows, so the share is raised here.
    replica, admin = _replica(procs, tmp_path, {"max_waits_per_user": 5}, workers=1, threads=8)
    job_id = admin.submit(command="true", hold=True)          # HELD until released: a poll waits
    polls_done = []

    def poll():
        r = requests.get(f"{replica.base}{PREFIX}/jobs/{job_id}", params={"wait": 6, "since": "HELD"},
                         headers={"Authorization": f"Bearer {admin.token}"}, timeout=30)
        polls_done.append((time.monotonic(), r.status_code))

    pollers = [threading.Thread(target=poll) for _ in range(5)]
    for t in pollers:
        t.start()
    time.sleep(1)
    # The one worker still answers while five polls wait in it.
    assert requests.get(f"{replica.base}{PREFIX}/health", timeout=5).status_code == 200
    assert admin.job(job_id)["state"] == "HELD"
    assert admin.get("/jobs").status == 200
    answered_at = time.monotonic()
    assert not polls_done, "the polls should still be waiting"
    for t in pollers:
        t.join(30)
    assert [s for _, s in polls_done] == [200] * 5
    assert all(at > answered_at for at, _ in polls_done)


def test_a_users_polls_beyond_their_share_answer_early_and_the_others_still_wait(tmp_path, procs, need_gunicorn):
    """As deployed, one user's long polls may hold a quarter of a worker's threads (2 of 8
    here); that user's other polls answer within a second, so other users' requests and
    /health find free threads."""
    replica, admin = _replica(procs, tmp_path, workers=1, threads=8)
    job_id = admin.submit(command="true", hold=True)
    done = []

    def poll():
        r = requests.get(f"{replica.base}{PREFIX}/jobs/{job_id}", params={"wait": 8, "since": "HELD"},
                         headers={"Authorization": f"Bearer {admin.token}"}, timeout=30)
        done.append((time.monotonic(), r.status_code, r.json()["data"]["job"]["state"]))

    pollers = [threading.Thread(target=poll) for _ in range(5)]
    for t in pollers:
        t.start()
        time.sleep(0.1)
    time.sleep(3)
    early = list(done)
    assert len(early) == 3 and all(s == 200 and st == "HELD" for _, s, st in early), early
    for t in pollers:
        t.join(30)
    assert len(done) == 5 and all(s == 200 for _, s, _ in done)


def _health_total(base) -> float:
    text = requests.get(base + "/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(
        r'^hpcgw_http_requests_total\{[^}]*route="/aip/v9\.2/health"[^}]*\} ([0-9.e+]+)$', text, re.M))


def test_metrics_add_up_across_workers_and_survive_a_dead_worker(tmp_path, procs, need_gunicorn):
    replica, _ = _replica(procs, tmp_path, workers=2, threads=2)
    before = _health_total(replica.base)
    for _ in range(40):
        # A new connection each time, so both workers take some.
        assert requests.get(replica.base + PREFIX + "/health", headers={"Connection": "close"},
                            timeout=10).status_code == 200
    log = next((tmp_path / "log").glob("hpc-gateway.log.*")).read_text()
    served_by = set(re.findall(r'\[(\d+)\] INFO gunicorn\.access: .*"GET /aip/v9\.2/health', log))
    assert len(served_by) == 2, f"one worker took every request; cannot check aggregation ({served_by})"
    assert _health_total(replica.base) - before == 40

    # A fresh multiprocess directory in the runtime directory, with the workers' files.
    made = list((tmp_path / "run").glob("hpc-gateway-metrics-*"))
    assert len(made) == 1 and any(name.endswith(".db") for name in os.listdir(made[0]))
    metrics_dir = str(made[0])
    from gunicorn.config import KNOWN_SETTINGS
    if any(setting.name == "control_socket" for setting in KNOWN_SETTINGS):       # gunicorn >= 25.1
        assert (tmp_path / "run" / "gunicorn.ctl").exists()      # its control socket: one per instance

    # A worker killed outright is replaced; figures it counted stay counted.
    victim = int(sorted(served_by)[0])
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: "Booting worker" in log_after(tmp_path, log), 30, "the master to replace the worker",
               proc=replica.proc)
    assert _health_total(replica.base) - before >= 40

    replica.proc.stop()
    assert not os.path.exists(metrics_dir), "the multiprocess directory is removed at exit"


def log_after(tmp_path, earlier: str) -> str:
    text = next((tmp_path / "log").glob("hpc-gateway.log.*")).read_text()
    return text[len(earlier):]


def test_concurrent_submissions_in_one_threaded_worker(tmp_path, procs, need_gunicorn):
    """gthread runs requests of one worker in threads at once: the plugin must take that."""
    replica, admin = _replica(procs, tmp_path, workers=1, threads=8)
    answers, barrier = [], threading.Barrier(8)

    def submit(n):
        barrier.wait()
        for i in range(3):
            answers.append(requests.post(f"{replica.base}{PREFIX}/jobs", json={"command": "true", "name": f"t{n}-{i}"},
                                         headers={"Authorization": f"Bearer {admin.token}"}, timeout=60))

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [r.status_code for r in answers] == [200] * 24, [r.text for r in answers if r.status_code != 200][:3]
    assert len({r.json()["data"]["job"]["jobId"] for r in answers}) == 24


def test_access_log_false_writes_no_line_per_request(tmp_path, procs, need_gunicorn):
    """Behind NGINX, which logs every request, the gateway's own access lines can go; the
    rest of the log (start-up, errors) stays."""
    replica, admin = _replica(procs, tmp_path, settings={"access_log": False}, workers=1, threads=4)
    for _ in range(5):
        assert requests.get(replica.base + PREFIX + "/health", timeout=10).status_code == 200
    assert admin.get("/jobs").status == 200
    log = next((tmp_path / "log").glob("hpc-gateway.log.*")).read_text()
    assert "Booting worker" in log
    assert "gunicorn.access" not in log, log[-2000:]


def test_what_gunicorn_refuses_itself_is_answered_in_the_api_envelope(tmp_path, procs, need_gunicorn):
    """A request line over limit_request_line (8190) or a header block over its limits never
    reaches the app: gunicorn answers it. As deployed, that answer is JSON like every other
    error, and the replica goes on serving."""
    replica, admin = _replica(procs, tmp_path, workers=1, threads=4)
    long_path = "é" * 1400                      # 2800 UTF-8 bytes, 8400 URL-encoded
    r = requests.get(replica.base + PREFIX + "/files", params={"path": long_path},
                     headers={"Authorization": f"Bearer {admin.token}"}, timeout=10)
    assert r.status_code == 414, r.text
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert body["data"] is None
    assert body["msg"].startswith("URI Too Long"), body   # gunicorn's words follow (parser-dependent)
    # Too many headers (gunicorn's limit_request_fields: 100): 431, JSON too.
    many = {f"X-Filler-{i}": "x" for i in range(120)}
    r = requests.get(replica.base + PREFIX + "/health", headers=many, timeout=10)
    assert r.status_code == 431, r.text
    assert r.headers["Content-Type"] == "application/json"
    assert r.json()["msg"].startswith("Request Header Fields Too Large"), r.text
    # The same request within the limit reaches the app (the path does not exist: 4xx JSON from the API).
    r = requests.get(replica.base + PREFIX + "/files", params={"path": "é" * 1000},
                     headers={"Authorization": f"Bearer {admin.token}"}, timeout=10)
    assert r.status_code in (400, 403, 404, 422), r.text
    assert r.json()["msg"] and "Request Line" not in r.json()["msg"]
    assert requests.get(replica.base + PREFIX + "/health", timeout=10).status_code == 200


def over_the_limit_answers(connect, token: str, times: int = 10) -> list[str]:
    """POST a 1.5 MiB body (max_body_bytes: 1 MiB) ``times`` over new connections from
    ``connect()``, head first, then the body piece by piece as NGINX sends it, then read the
    answer: its status, or the error that cut the exchange."""
    body = b"{" + b" " * (3 << 19)
    head = (f"POST {PREFIX}/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    answers = []
    for _ in range(times):
        with connect() as sock:
            try:
                sock.sendall(head)
                time.sleep(0.05)                  # the answer is on its way before the body is
                for start in range(0, len(body), 65536):
                    sock.sendall(body[start:start + 65536])
                    time.sleep(0.005)
                raw = b""
                while piece := sock.recv(65536):
                    raw += piece
            except OSError as exc:                # a reset, a broken pipe; under TLS an EOF
                answers.append(type(exc).__name__)
                continue
        status = raw.split(b" ", 2)[1].decode() if raw else "no answer"
        answers.append(status if b"the limit is 1048576 bytes" in raw else f"{status}: {raw[-200:]!r}")
    return answers


def test_a_body_over_the_limit_sent_in_full_gets_its_413_not_a_reset(tmp_path, procs, need_gunicorn):
    """A client (or NGINX, which sends a buffered body of up to 2m at once) that writes its
    whole body before it reads gets the replica's 413. The app refuses such a body unread;
    gunicorn alone then reads 64 KiB more and closes, and closing on unread bytes is a reset:
    the client's write failed (NGINX answered its own 502 and took the replica out of its
    pool). As deployed, the connection reads what still comes before it closes. (Under TLS:
    tests/deploy/test_tls.py.)"""
    replica, admin = _replica(procs, tmp_path, workers=1, threads=4)
    answers = over_the_limit_answers(lambda: socket.create_connection(("127.0.0.1", replica.port), timeout=10),
                                     admin.token)
    assert answers == ["413"] * 10, answers
    assert admin.get("/jobs").status == 200
