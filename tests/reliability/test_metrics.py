"""/metrics: exact figures across several gunicorn workers, bounded labels, the plugin-side
interface (record_command, command_timer, set_snapshot_time/age)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client import generate_latest, multiprocess

from gateway import metrics as gm
from gateway.errors import SchedulerTimeout

from .live import LiveGateway, parse_samples, sample, samples_named

JOB_ROUTE = "/aip/v9.2/jobs/<job_id>"
REQS = "hpcgw_http_requests_total"
HOOKS = "hpcgw_scheduler_hook_calls_total"


def per_worker_counts(metrics_dir, route: str) -> dict[str, float]:
    """{counter file: requests of ``route`` it holds}: one file per worker pid."""
    counts = {}
    for name in sorted(os.listdir(metrics_dir)):
        if not name.startswith("counter_"):
            continue
        total = 0.0
        for family in multiprocess.MultiProcessCollector.merge([os.path.join(metrics_dir, name)]):
            for s in family.samples:
                if s.name == REQS and s.labels.get("route") == route:
                    total += s.value
        if total:
            counts[name] = total
    return counts


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    with LiveGateway(tmp_path_factory.mktemp("metrics"), workers=3, threads=4) as gw:
        yield gw


def test_counters_add_up_exactly_across_workers(gateway):
    gw = gateway
    alice = gw.token("alice")                       # logins: 2 successes (alice, bob), 3 failures
    gw.token("bob")
    for _ in range(3):
        assert gw.login("alice", "wrong password").status_code == 401
    auth = {"Authorization": f"Bearer {alice}"}
    sent = {"detail": 0, "list": 0, "health": 0}

    def one(i: int) -> None:
        # A fresh connection per request, so any worker may accept it.
        if i % 3 == 0:
            r = requests.get(f"{gw.api}/jobs/nope{i}", headers=auth, timeout=30)
            assert r.status_code == 404, r.text
        elif i % 3 == 1:
            r = requests.get(f"{gw.api}/jobs", headers=auth, timeout=30)
            assert r.status_code == 200, r.text
        else:
            r = requests.get(f"{gw.api}/health", timeout=30)
            assert r.status_code == 200, r.text

    # Bursts of concurrent requests until at least two workers served job details.
    i = 0
    with ThreadPoolExecutor(12) as pool:
        while True:
            list(pool.map(one, range(i, i + 60)))
            i += 60
            if len(per_worker_counts(gw.metrics_dir, JOB_ROUTE)) >= 2 or i >= 1800:
                break
    for n in range(i):
        sent[("detail", "list", "health")[n % 3]] += 1
    workers = per_worker_counts(gw.metrics_dir, JOB_ROUTE)
    assert len(workers) >= 2, f"every request landed on one worker: {workers}"

    scrapes = [gw.scrape() for _ in range(4)]       # served by whichever worker accepts each
    for k, m in enumerate(scrapes):
        assert sample(m, REQS, route=JOB_ROUTE, method="GET", status="404") == sent["detail"]
        assert sum(workers.values()) == sent["detail"]
        assert sample(m, REQS, route="/aip/v9.2/jobs", method="GET", status="200") == sent["list"]
        assert sample(m, REQS, route="/aip/v9.2/health", method="GET", status="200") == sent["health"]
        assert sample(m, REQS, route="/aip/v9.2/login", method="POST", status="200") == 2
        assert sample(m, REQS, route="/aip/v9.2/login", method="POST", status="401") == 3
        assert sample(m, REQS, route="/metrics", method="GET", status="200") == k    # earlier scrapes
        assert sample(m, "hpcgw_logins_total", outcome="success") == 2
        assert sample(m, "hpcgw_logins_total", outcome="failure") == 3
        # Histograms merged: count, +Inf bucket, monotonic buckets.
        hist = "hpcgw_http_request_duration_seconds"
        assert sample(m, hist + "_count", route=JOB_ROUTE, method="GET") == sent["detail"]
        buckets = sorted((float(dict(labels)["le"]), v) for labels, v in samples_named(m, hist + "_bucket").items()
                         if dict(labels)["route"] == JOB_ROUTE)
        assert buckets[-1] == (float("inf"), sent["detail"])
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
        assert 0 < sample(m, hist + "_sum", route=JOB_ROUTE, method="GET") < sent["detail"] * 5
        # Hook calls by outcome; the core's 404 for a job it does not know is a client error.
        assert sample(m, HOOKS, plugin="mock", hook="get_job", outcome="client_error") == sent["detail"]
        assert sample(m, HOOKS, plugin="mock", hook="list_jobs", outcome="ok") == sent["list"]
        # /health callers within a second share one check (gateway/api/system/views.py).
        assert 1 <= sample(m, HOOKS, plugin="mock", hook="health", outcome="ok") <= sent["health"]
        assert sample(m, "hpcgw_scheduler_hook_duration_seconds_count", plugin="mock", hook="get_job") == sent["detail"]
        # Gauges: the scrape itself is the one request in flight, over all live workers;
        # live sessions come from the shared session store.
        assert sample(m, "hpcgw_http_requests_in_flight") == 1
        assert sample(m, "hpcgw_sessions_live") == 2
        assert sample(m, "hpcgw_build_info", version="0.1.0", scheduler="mock") == 1
        # Labels are routes, never raw paths: no job id reached a label.
        assert not [key for key in m if any("nope" in v for _, v in key[1])]

    # A worker that dies keeps its counts (counters never go back); its in-flight gauge goes.
    victim = max(gw.worker_pids())
    gw.kill_worker(victim)
    after = gw.scrape()
    assert sample(after, REQS, route=JOB_ROUTE, method="GET", status="404") == sent["detail"]
    assert sample(after, HOOKS, plugin="mock", hook="list_jobs", outcome="ok") == sent["list"]
    assert sample(after, "hpcgw_http_requests_in_flight") == 1


def test_methods_and_unknown_paths_do_not_grow_the_label_set(gateway):
    for i in range(5):
        requests.request("BREW", f"{gateway.url}/coffee/{i}", timeout=10)
        requests.get(f"{gateway.url}/no/such/path/{i}", timeout=10)
    m = gateway.scrape()
    assert sample(m, REQS, route="unmatched", method="other", status="404") >= 5
    assert sample(m, REQS, route="unmatched", method="GET", status="404") >= 5
    routes = {dict(labels)["route"] for labels in samples_named(m, REQS)}
    assert not [r for r in routes if "coffee" in r or "/no/such" in r], routes


def test_a_method_a_route_does_not_take_is_counted_under_that_route(gateway):
    """405: the path is known (its rule is the label), the method is not one it takes."""
    before = sample(gateway.scrape(), REQS, route="/aip/v9.2/jobs/<job_id>", method="PUT", status="405")
    for i in range(3):
        assert requests.put(f"{gateway.url}/aip/v9.2/jobs/{i}", timeout=10).status_code == 405
    m = gateway.scrape()
    assert sample(m, REQS, route="/aip/v9.2/jobs/<job_id>", method="PUT", status="405") == before + 3
    # Two rules take /vis/submit (/vis/submit and /vis/<job_id>): the fixed one, whatever the
    # process's hash seed (a pick from valid_methods, a set, gave either by seed).
    vis = sample(m, REQS, route="/aip/v9.2/vis/submit", method="PUT", status="405")
    for _ in range(6):
        assert requests.put(f"{gateway.url}/aip/v9.2/vis/submit", timeout=10).status_code == 405
    m = gateway.scrape()
    assert sample(m, REQS, route="/aip/v9.2/vis/submit", method="PUT", status="405") == vis + 6
    assert not [k for k in samples_named(m, REQS) if dict(k).get("status") == "405" and dict(k)["route"] == "unmatched"]


# ------------------------------------------------------------------ plugin-side interface
def test_record_command_and_timer_label_only_the_program(monkeypatch):
    before = dict(parse_samples(generate_latest(gm.PROCESS_REGISTRY).decode()))
    gm.record_command("unit_plugin", ["/usr/bin/squeue", "--json", "-u", "alice"], 0.02, True)
    gm.record_command("unit_plugin", "sbatch", 0.5, False)
    with gm.command_timer("unit_plugin", "scontrol") as timing:
        timing.ok = True
    with pytest.raises(SchedulerTimeout):
        with gm.command_timer("unit_plugin", "scontrol"):
            raise SchedulerTimeout("no answer")
    m = parse_samples(generate_latest(gm.PROCESS_REGISTRY).decode())

    def delta(name, **labels):
        return sample(m, name, **labels) - sample(before, name, **labels)

    cmds = "hpcgw_scheduler_commands_total"
    assert delta(cmds, plugin="unit_plugin", command="squeue", outcome="ok") == 1
    assert delta(cmds, plugin="unit_plugin", command="sbatch", outcome="error") == 1
    assert delta(cmds, plugin="unit_plugin", command="scontrol", outcome="ok") == 1
    assert delta(cmds, plugin="unit_plugin", command="scontrol", outcome="timeout") == 1
    assert delta("hpcgw_scheduler_command_duration_seconds_count", plugin="unit_plugin", command="sbatch") == 1
    assert not [k for k in m if any(v in ("--json", "alice") for _, v in k[1])]


def test_snapshot_age_is_computed_at_scrape_time():
    """Bounded by the time each scrape took, not by a fixed margin: in the whole suite a
    scrape reads every worker file earlier tests left, and took 0.8 s once."""
    m = gm.Metrics(scheduler="unit")
    t0 = time.time()
    gm.set_snapshot_age("unit_snap", 7.0)
    first = parse_samples(m.render()[0].decode())
    age = sample(first, "hpcgw_scheduler_snapshot_age_seconds", plugin="unit_snap")
    assert 7.0 <= age <= 7.0 + (time.time() - t0) + 0.01
    time.sleep(0.3)
    later = parse_samples(m.render()[0].decode())
    assert sample(later, "hpcgw_scheduler_snapshot_age_seconds", plugin="unit_snap") >= age + 0.3
    t0 = time.time()
    gm.set_snapshot_time("unit_snap", t0)
    fresh = parse_samples(m.render()[0].decode())
    assert 0 <= sample(fresh, "hpcgw_scheduler_snapshot_age_seconds", plugin="unit_snap") <= time.time() - t0 + 0.01


def test_snapshot_time_is_the_newest_over_worker_processes(tmp_path):
    """Three processes report snapshot times; the scrape in a fourth shows the newest."""
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    now = time.time()
    for taken in (now - 30, now - 3, now - 12):
        code = f"from gateway import metrics as m; m.set_snapshot_time('p', {taken!r}); " \
               f"m.record_command('p', 'squeue', 0.01, True)"
        subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    code = textwrap.dedent("""
        from gateway import metrics as m
        print(m.Metrics().render()[0].decode())
    """)
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60,
                         capture_output=True, text=True).stdout
    t1 = time.time()
    s = parse_samples(out)
    assert sample(s, "hpcgw_scheduler_snapshot_timestamp_seconds", plugin="p") == pytest.approx(now - 3)
    assert t0 - (now - 3) <= sample(s, "hpcgw_scheduler_snapshot_age_seconds", plugin="p") <= t1 - (now - 3)
    assert sample(s, "hpcgw_scheduler_commands_total", plugin="p", command="squeue", outcome="ok") == 3


def test_event_counters_exist_at_zero_before_the_first_event(tmp_path):
    """Alerts on rate() or on absence need the series before anything happened: logins by
    outcome and slow-client cuts by phase are there at 0 from the start."""
    from gateway import create_app
    app = create_app({"work_dir": str(tmp_path), "log_level": "error",
                      "scheduler": {"backend": "mock", "options": {"state_dir": str(tmp_path / "m")}}})
    try:
        text = app.test_client().get("/metrics").get_data(as_text=True)
    finally:
        app.extensions["hpc_gateway"].scheduler.close()
    for series in ('hpcgw_logins_total{outcome="failure"}', 'hpcgw_logins_total{outcome="limited"}',
                   'hpcgw_client_timeouts_total{phase="head"}', 'hpcgw_client_timeouts_total{phase="answer"}'):
        assert f"{series} 0.0" in text, series
