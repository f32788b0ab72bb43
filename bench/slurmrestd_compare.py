#!/usr/bin/env python3
"""The gateway against Slurm's own REST daemon (slurmrestd), side by side, same load.

On the test Slurm (tests/cluster/slurm.sh) with --jobs held jobs queued over two users
(gwalice, gwbob; separate sbatch --hold jobs), this starts

- the gateway: gunicorn as deployed (deploy/gunicorn.conf.py, its default workers and
  threads), the slurm_ssm plugin with the local transport (run_as: sudo), 127.0.0.1;
- slurmrestd: Debian's, JWT authentication, -s openapi/v0.0.38, 127.0.0.1, as an
  unprivileged account (tests/cluster/slurmrestd.sh; this turns on JWT in the test Slurm,
  which restarts slurmctld once and keeps its queue);

and drives both with the same load generator (bench/loadgen.py: asyncio + aiohttp, one
keep-alive connection per client, closed loop), one server after the other for each
scenario (the order alternates from scenario to scenario):

  list     a user's job list: gateway GET /jobs?limit=1000 (the user's 500 jobs, one page);
           slurmrestd GET /slurm/v0.0.38/jobs (every job: it has no per-user filter, so that
           is what its client must fetch)                                    8 and 64 clients
  detail   one job: GET /jobs/{id} vs GET /slurm/v0.0.38/job/{id}, a random job of the
           client's user each time                                           8 and 200 clients
  storm    500 clients, each polling one job of its user's for --storm-seconds, no pause
  longpoll the same storm on the gateway with its long poll (GET /jobs/{id}?wait=N): a held
           job does not change, so each answer comes after N seconds (gateway only). A long
           poll holds a gunicorn thread while it waits: as deployed (4 workers x 32 threads
           on 2 CPUs) 128 wait at once and the others queue, and gunicorn's workers take
           connections unevenly (one may hold 200 of the 500), so this run has its own
           gateway with --longpoll-threads threads per worker (default 512; 0: as deployed)
  submit   POST /jobs vs POST /slurm/v0.0.38/job/submit, a held two-line script, 4 clients,
           for --seconds or --submit-max submissions, whichever comes first (a cancelled job
           stays in squeue for MinJobAge, 300 s: tens of thousands would slow every test
           after); the jobs held in squeue are counted against the 200 answers, then cancelled

For each run: req/s (answers 200 per second), p50/p99 latency, errors (any other answer,
timeout or connection error), slurmctld's job-info RPCs per second (sdiag, reset with
``sdiag -r`` before the run: REQUEST_JOB_INFO + REQUEST_JOB_INFO_SINGLE +
REQUEST_JOB_USER_INFO; for the gateway they are its snapshot refreshes), and the CPU time
the server, slurmctld and the load generator used. Then the gateway/slurmrestd ratio and
the issue's targets: list >= 10x, detail >= 1x, submissions >= 0.5x; the storm on the
gateway with 0 errors, p99 < 1 s and <= 2 job-info RPC/s.

    sudo .venv/bin/python bench/slurmrestd_compare.py [--seconds 15] [--storm-seconds 60]
         [--jobs 1000] [--only list,detail,storm,longpoll,submit] [--quick] [--json out.json]
         [--front gunicorn|granian|gevent]

--front granian serves the same app, configuration, workers and threads with granian
(a Rust HTTP server with a WSGI interface; ``pip install '.[bench]'``) instead of gunicorn:
it measures what the HTTP front end costs. --front gevent runs deploy/gunicorn.conf.py
with gunicorn's gevent worker (1000 connections per worker) instead of the deployed
gthread one. Both are bench options, not ways to deploy.

Needs root. Everything listens on 127.0.0.1 and every run is bounded; at the end the gateway
and slurmrestd are stopped, the queued jobs cancelled, and Slurm left up (taken down only if
this script had to bring it up). The machine's 2 cores are shared by the load generator,
the gateway, slurmrestd and slurmctld: figures are for that, not for a dedicated server.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadgen import Request, machine_info, run

CLUSTER = ROOT / "tests" / "cluster"
USERS = ("gwalice", "gwbob")
QUEUE_NAME = "gwbench-queue"
SUBMIT_NAME = "gwbench-submit"
RESTD_PORT = int(os.environ.get("GATEWAY_SLURMRESTD_PORT", "6820"))
RESTD = f"http://127.0.0.1:{RESTD_PORT}/slurm/v0.0.38"
SCRIPT = "#!/bin/sh\ntrue\n"
JOB_INFO_RPCS = ("REQUEST_JOB_INFO", "REQUEST_JOB_INFO_SINGLE", "REQUEST_JOB_USER_INFO")


# ------------------------------------------------------------------------------ slurm
def sh(*argv, timeout=60, check=True) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, check=check)


def sdiag_reset() -> None:
    sh("sdiag", "-r", timeout=30)


def sdiag_rpcs() -> dict:
    """RPC counts by message type since the last reset."""
    out = sh("sdiag", timeout=30).stdout
    part = out.split("Remote Procedure Call statistics by message type", 1)[-1]
    part = part.split("Remote Procedure Call statistics by user", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s*(\w+)\s+\(\s*\d+\)\s+count:(\d+)", part, re.MULTILINE)}


def other_tests() -> bool:
    """Whether a test run shares the machine (its figures are then not clean)."""
    return bool(sh("pgrep", "-f", "pytest", check=False).stdout.strip())


def pid_of(pidfile: Path):
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cpu_seconds(pids) -> float:
    """utime+stime (and waited-for children's) of these processes, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, TypeError):
            continue
        total += sum(int(x) for x in fields[11:15])
    return total / tick


def submit_queue(n: int) -> dict:
    """n held jobs, alternating between USERS, one sbatch each (4 at a time)."""
    def one(i):
        user = USERS[i % len(USERS)]
        out = sh("runuser", "-u", user, "--", "sbatch", "--hold", "--parsable", f"--job-name={QUEUE_NAME}",
                 "--output=/dev/null", "--chdir=/tmp", "--wrap=sleep 600", timeout=60).stdout
        return user, out.strip().split(";")[0]
    jobs = {u: [] for u in USERS}
    with ThreadPoolExecutor(4) as pool:
        for user, job_id in pool.map(one, range(n)):
            jobs[user].append(job_id)
    return jobs


FINISHED_STATES = "CANCELLED,COMPLETED,FAILED,TIMEOUT,NODE_FAIL,PREEMPTED,OUT_OF_MEMORY,BOOT_FAIL,DEADLINE"


def wait_for_purge(jobs: int, limit: float) -> None:
    """A comparison cancels thousands of jobs at its end, and slurmctld lists them for
    MinJobAge (300 s): a run started meanwhile would measure lists several times longer than
    the bench's own queue. Wait (bounded) until they are purged."""
    def finished() -> int:
        return len(sh("squeue", "-h", f"--states={FINISHED_STATES}", "-o", "%i", timeout=60).stdout.split())
    left, deadline = finished(), time.monotonic() + limit
    if left <= jobs // 2:
        return
    print(f"waiting up to {limit:.0f} s for slurmctld to purge {left} finished jobs (MinJobAge) ...", flush=True)
    while left > jobs // 10 and time.monotonic() < deadline:
        time.sleep(5)
        left = finished()
    print(f"{left} finished jobs left in squeue", flush=True)


def queued_by_user(name: str) -> dict:
    """Pending jobs called ``name``, by user (a queue a --keep-queue run left)."""
    out = sh("squeue", "-h", "--states=PENDING", f"--name={name}", "-o", "%i %u", timeout=60).stdout
    jobs = {u: [] for u in USERS}
    for line in out.splitlines():
        job_id, user = line.split()
        if user in jobs:
            jobs[user].append(job_id)
    return jobs


def cancel_by_name(name: str) -> None:
    sh("scancel", f"--name={name}", timeout=120, check=False)


def count_pending(name: str) -> int:
    out = sh("squeue", "-h", "--states=PENDING", f"--name={name}", "-o", "%i", timeout=60).stdout
    return len(out.split())


# ------------------------------------------------------------------------------ servers
class Gateway:
    label = "gateway"

    def __init__(self, tmp: Path, plugin_options: dict | None = None, threads: int | None = None,
                 workers: int | None = None, config: dict | None = None, front: str = "gunicorn"):
        from tests.reliability.live import LiveGateway
        self.plugin_options = dict(plugin_options or {})
        self.config = dict(config or {})
        self.front = front
        self.live = LiveGateway(tmp / "gw", workers=workers, threads=threads, users={u: False for u in USERS},
                                front=front, **self.config,
                                scheduler={"backend": "slurm_ssm", "options": {
                                    "transport": {"type": "local"}, "run_as": "sudo",
                                    "cache_dir": str(tmp / "gw" / "slurm-cache"), **self.plugin_options}})

    def start(self):
        self.live.start()
        self.api = self.live.api
        self.auth = {u: {"Authorization": f"Bearer {self.live.token(u)}"} for u in USERS}
        return self

    def stop(self):
        self.live.stop()

    def pids(self):
        return [self.live.master_pid, *self.live.worker_pids()]

    def describe(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in {**self.config, **self.plugin_options}.items())
        front = {"gunicorn": f"gunicorn -c deploy/gunicorn.conf.py: {self.live.expected_workers} gthread "
                             f"workers x {self.live.threads_per_worker} threads",
                 "gevent": f"gunicorn -c deploy/gunicorn.conf.py -k gevent (bench only, not a deployment "
                           f"option): {self.live.expected_workers} gevent workers x 1000 connections",
                 "granian": f"granian --interface wsgi (bench only, not a deployment option): "
                            f"{self.live.expected_workers} workers x {self.live.threads_per_worker} blocking "
                            "threads"}[self.front]
        return f"{front}; slurm_ssm, local transport, run_as sudo{extra or ' (defaults)'}"

    def list_req(self, user):
        return Request("GET", f"{self.api}/jobs?limit=1000", self.auth[user])

    def detail_req(self, user, job_id, wait=None):
        return Request("GET", f"{self.api}/jobs/{job_id}" + (f"?wait={wait:g}" if wait else ""), self.auth[user])

    def submit_req(self, user, n):
        return Request("POST", f"{self.api}/jobs", self.auth[user],
                       {"script": SCRIPT, "name": SUBMIT_NAME, "hold": True, "workDir": "/tmp",
                        "stdout": "/dev/null"})

    def check(self, jobs) -> str:
        import requests
        u = USERS[0]
        r = requests.get(self.list_req(u).url, headers=self.auth[u], timeout=60)
        r.raise_for_status()
        listed = {j["jobId"] for j in r.json()["data"]["jobs"]}
        missing = set(jobs[u]) - listed
        assert not missing, f"gateway list lacks {len(missing)} of {u}'s jobs"
        r = requests.get(self.detail_req(u, jobs[u][0]).url, headers=self.auth[u], timeout=60)
        r.raise_for_status()
        assert r.json()["data"]["job"]["state"] == "HELD", r.text[:300]
        return f"list of {u}: {len(listed)} jobs, {len(r.content)} B per detail"


class SlurmRestd:
    label = "slurmrestd"

    def __init__(self, tmp: Path):
        self.pidfile = Path(os.environ.get("GATEWAY_SLURM_DIR", "/var/tmp/hpc-gateway-slurm")) / "run" / "slurmrestd.pid"

    def start(self):
        res = sh(CLUSTER / "slurmrestd.sh", "start", timeout=300, check=False)
        if res.returncode != 0:
            raise SystemExit(f"slurmrestd did not start:\n{res.stdout}{res.stderr}")
        self.auth = {}
        for u in USERS:
            token = sh(CLUSTER / "slurmrestd.sh", "token", u, 3600, timeout=60).stdout.strip()
            self.auth[u] = {"X-SLURM-USER-NAME": u, "X-SLURM-USER-TOKEN": token}
        return self

    def stop(self):
        sh(CLUSTER / "slurmrestd.sh", "stop", timeout=60, check=False)

    def pids(self):
        return [pid_of(self.pidfile)]

    def describe(self) -> str:
        threads = os.environ.get("GATEWAY_SLURMRESTD_THREADS") or "20 (its default)"
        return f"slurmrestd 22.05 -a rest_auth/jwt -s openapi/v0.0.38, {threads} threads"

    def list_req(self, user):
        return Request("GET", f"{RESTD}/jobs", self.auth[user])

    def detail_req(self, user, job_id, wait=None):
        return Request("GET", f"{RESTD}/job/{job_id}", self.auth[user])

    def submit_req(self, user, n):
        return Request("POST", f"{RESTD}/job/submit", self.auth[user],
                       {"script": SCRIPT, "job": {"name": SUBMIT_NAME, "hold": True,
                                                  "current_working_directory": "/tmp",
                                                  "standard_output": "/dev/null",
                                                  "environment": {"PATH": "/usr/bin:/bin"}}})

    def check(self, jobs) -> str:
        import requests
        u = USERS[0]
        r = requests.get(self.list_req(u).url, headers=self.auth[u], timeout=120)
        r.raise_for_status()
        listed = {str(j["job_id"]) for j in r.json()["jobs"]}
        missing = set(jobs[u]) - listed
        assert not missing, f"slurmrestd list lacks {len(missing)} of {u}'s jobs"
        size = len(r.content)
        r = requests.get(self.detail_req(u, jobs[u][0]).url, headers=self.auth[u], timeout=60)
        r.raise_for_status()
        assert str(r.json()["jobs"][0]["job_id"]) == jobs[u][0], r.text[:300]
        return f"list: {len(listed)} jobs ({size / 1e6:.1f} MB), {len(r.content)} B per detail"


# ------------------------------------------------------------------------------ scenarios
@dataclass
class Scenario:
    name: str
    kind: str            # list | detail | storm | longpoll | submit
    clients: int
    seconds: float
    servers: tuple = ("gateway", "slurmrestd")


def request_builder(server, sc: Scenario, jobs: dict, wait: float):
    rnd = [random.Random(i) for i in range(sc.clients)]

    def user_of(c):
        return USERS[c % len(USERS)]

    if sc.kind == "list":
        return lambda c, n: server.list_req(user_of(c))
    if sc.kind == "detail":
        return lambda c, n: server.detail_req(user_of(c), rnd[c].choice(jobs[user_of(c)]))
    if sc.kind in ("storm", "longpoll"):
        w = wait if sc.kind == "longpoll" else None
        return lambda c, n: server.detail_req(user_of(c), jobs[user_of(c)][(c // len(USERS)) % len(jobs[user_of(c)])], w)
    if sc.kind == "submit":
        return lambda c, n: server.submit_req(user_of(c), n)
    raise ValueError(sc.kind)


def run_one(server, sc: Scenario, jobs: dict, wait: float, ctld_pid, submit_max: int) -> dict:
    build = request_builder(server, sc, jobs, wait)
    timeout = 60.0 + (wait if sc.kind == "longpoll" else 0)
    pids = server.pids()
    if sc.kind == "submit":
        cancel_by_name(SUBMIT_NAME)
    busy_before = other_tests()
    sdiag_reset()
    cpu0 = (cpu_seconds(pids), cpu_seconds([ctld_pid]))
    res = run(sc.clients, sc.seconds, build, timeout=timeout,
              max_requests=submit_max if sc.kind == "submit" else None)
    cpu1 = (cpu_seconds(server.pids()), cpu_seconds([ctld_pid]))
    rpcs = sdiag_rpcs()
    out = res.summary()
    el = res.elapsed or 1.0
    out.update({
        "server": server.label, "scenario": sc.name, "kind": sc.kind,
        "other_tests_running": busy_before or other_tests(),
        "job_info_rpcs": sum(rpcs.get(k, 0) for k in JOB_INFO_RPCS),
        "job_info_rpc_per_s": round(sum(rpcs.get(k, 0) for k in JOB_INFO_RPCS) / el, 2),
        "rpcs": dict(sorted(rpcs.items(), key=lambda kv: -kv[1])[:8]),
        "server_cpu_s": round(cpu1[0] - cpu0[0], 2), "slurmctld_cpu_s": round(cpu1[1] - cpu0[1], 2),
    })
    if sc.kind == "longpoll":
        out["wait_s"] = wait
    if sc.kind == "submit":
        time.sleep(1.0)
        out["submitted_in_squeue"] = count_pending(SUBMIT_NAME)
        cancel_by_name(SUBMIT_NAME)
    return out


TARGETS = {"list": ("ratio", 10.0), "detail": ("ratio", 1.0), "submit": ("ratio", 0.5)}


def judge(results: list) -> list:
    """The issue's targets, one verdict per scenario."""
    verdicts = []
    by = {(r["scenario"], r["server"]): r for r in results}
    for name in dict.fromkeys(r["scenario"] for r in results):
        gw, rd = by.get((name, "gateway")), by.get((name, "slurmrestd"))
        kind = (gw or rd)["kind"]
        ratio = (gw["req_per_s"] / rd["req_per_s"]) if gw and rd and rd["req_per_s"] else None
        if gw is not None and ratio is not None:
            gw["ratio"] = round(ratio, 2)
        v = {"scenario": name, "ratio": None if ratio is None else round(ratio, 2)}
        if kind in TARGETS and gw and rd:
            want = TARGETS[kind][1]
            v.update(target=f"gateway/slurmrestd req/s >= {want:g}", met=ratio is not None and ratio >= want
                     and gw["errors"] == 0)
        elif kind in ("storm", "longpoll") and gw:
            p99_ok = gw["p99_ms"] is not None and (gw["p99_ms"] < 1000 if kind == "storm"
                                                  else gw["p99_ms"] - 1000 * gw.get("wait_s", 0) < 1000)
            v.update(target="gateway: 0 errors, p99 < 1 s" + (" beyond the wait" if kind == "longpoll" else "")
                     + ", <= 2 job-info RPC/s",
                     met=gw["errors"] == 0 and p99_ok and gw["job_info_rpc_per_s"] <= 2)
        verdicts.append(v)
    return verdicts


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(results: list, verdicts: list) -> str:
    vd = {v["scenario"]: v for v in verdicts}
    lines = [(f"{'scenario':<22} {'server':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
             f"{'jobinfo RPC/s':>13} {'srv CPU s':>9} {'ctld CPU s':>10} {'ratio':>6}  target")]
    for r in results:
        v = vd.get(r["scenario"], {})
        ratio = fmt(r.get("ratio"), ".2f") if r["server"] == "gateway" else ""
        tgt = ""
        if r["server"] == "gateway" and "target" in v:
            tgt = ("MET " if v["met"] else "NOT MET ") + v["target"]
        lines.append(f"{r['scenario']:<22} {r['server']:<10} {fmt(r['req_per_s'], ',.1f'):>9} "
                     f"{fmt(r['p50_ms'], '.1f'):>8} {fmt(r['p99_ms'], '.1f'):>8} {r['errors']:>6} "
                     f"{r['job_info_rpc_per_s']:>13.2f} {r['server_cpu_s']:>9.1f} {r['slurmctld_cpu_s']:>10.1f} "
                     f"{ratio:>6}  {tgt}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--seconds", type=float, default=15.0, help="per run (list, detail, submit)")
    ap.add_argument("--storm-seconds", type=float, default=60.0)
    ap.add_argument("--storm-clients", type=int, default=500)
    ap.add_argument("--wait", type=float, default=20.0, help="the long poll's ?wait= (longpoll)")
    ap.add_argument("--jobs", type=int, default=1000, help="held jobs queued over the two users")
    ap.add_argument("--submit-max", type=int, default=2000,
                    help="submissions per server at most (cancelled jobs stay in squeue for MinJobAge)")
    ap.add_argument("--only", default="list,detail,storm,longpoll,submit")
    ap.add_argument("--quick", action="store_true", help="5 s runs, 20 s storms (a smoke run)")
    ap.add_argument("--plugin-options", type=json.loads, default={},
                    help='extra slurm_ssm options for the gateway, JSON (e.g. \'{"json": "no"}\'); default: none')
    ap.add_argument("--longpoll-threads", type=int, default=512,
                    help="gunicorn threads per worker for the longpoll run (its own gateway; 0: as deployed)")
    ap.add_argument("--gateway-workers", type=int, default=None,
                    help="gunicorn workers of the gateway (default: as deployed, 2 x CPUs)")
    ap.add_argument("--gateway-threads", type=int, default=None,
                    help="gunicorn threads per worker of the gateway (default: as deployed)")
    ap.add_argument("--gateway-config", type=json.loads, default={},
                    help='extra gateway.yaml settings, JSON (e.g. \'{"running_threads": 2}\'); default: none')
    ap.add_argument("--front", choices=("gunicorn", "granian", "gevent"), default="gunicorn",
                    help="the gateway's HTTP server: gunicorn as deployed (default), granian, or gunicorn's "
                         "gevent worker (both: pip install '.[bench]') to measure what the HTTP front end "
                         "costs; same app, config and workers")
    ap.add_argument("--purge-wait", type=float, default=360.0,
                    help="seconds to wait at most for slurmctld to purge finished jobs (a previous "
                         "run's, kept for MinJobAge) when they outnumber half the bench's own; 0: don't")
    ap.add_argument("--keep-queue", action="store_true",
                    help="leave the held jobs queued for the next run (which reuses them); default: cancel them")
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (runuser, sdiag -r, scontrol token, slurmrestd's account)")
    from tests.support import ensure_user
    missing = [u for u in USERS if not ensure_user(u)]      # a fresh machine has none of them
    if missing:
        sys.exit(f"could not create the Unix users {', '.join(missing)} (useradd)")
    if args.quick:
        args.seconds, args.storm_seconds = min(args.seconds, 5.0), min(args.storm_seconds, 20.0)
    kinds = set(args.only.split(","))
    S, T = args.seconds, args.storm_seconds
    scenarios = [s for s in (
        Scenario("list 8", "list", 8, S), Scenario("list 64", "list", 64, S),
        Scenario("detail 8", "detail", 8, S), Scenario("detail 200", "detail", 200, S),
        Scenario(f"storm {args.storm_clients}", "storm", args.storm_clients, T),
        Scenario(f"longpoll {args.storm_clients}", "longpoll", args.storm_clients, T, ("gateway",)),
        Scenario("submit 4", "submit", 4, S),
    ) if s.kind in kinds]

    busy = sh("pgrep", "-af", "pytest", check=False).stdout.strip()
    if busy:
        print(f"warning: other test processes are running and share the CPUs:\n{busy}\n", file=sys.stderr)
    slurm_was_up = sh(CLUSTER / "slurm.sh", "status", timeout=60, check=False).returncode == 0
    slurmctld_pidfile = Path(os.environ.get("GATEWAY_SLURM_DIR", "/var/tmp/hpc-gateway-slurm")) / "run" / "slurmctld.pid"
    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-restd-"))
    gateway = Gateway(tmp, args.plugin_options, threads=args.gateway_threads, workers=args.gateway_workers,
                      config=args.gateway_config, front=args.front)
    restd = SlurmRestd(tmp)
    results, started = [], []
    t_start = time.monotonic()
    try:
        restd.start()                      # first: turning JWT on may restart slurmctld
        started.append(restd)
        cancel_by_name(SUBMIT_NAME)
        jobs = queued_by_user(QUEUE_NAME)
        if sorted(len(v) for v in jobs.values()) == sorted(len(range(i, args.jobs, len(USERS)))
                                                          for i in range(len(USERS))):
            print(f"reusing the {args.jobs} held jobs a --keep-queue run left")
        else:
            cancel_by_name(QUEUE_NAME)
            t0 = time.monotonic()
            jobs = submit_queue(args.jobs)
            print(f"{args.jobs} held jobs submitted in {time.monotonic() - t0:.1f} s "
                  f"({', '.join(f'{u}: {len(v)}' for u, v in jobs.items())})")
        if args.purge_wait > 0:
            wait_for_purge(args.jobs, args.purge_wait)
        queued = len(sh("squeue", "-h", "--states=all", "-o", "%i", timeout=60).stdout.split())
        print(f"{queued} jobs in squeue in all (any state)")
        gateway.start()
        started.append(gateway)
        servers = {"gateway": gateway, "slurmrestd": restd}
        for s in servers.values():
            print(f"{s.label}: {s.describe()}; check: {s.check(jobs)}")
        ctld_pid = pid_of(slurmctld_pidfile)
        for i, sc in enumerate(scenarios):
            order = [n for n in ("gateway", "slurmrestd") if n in sc.servers]
            if i % 2:
                order.reverse()
            for name in order:
                server = servers[name]
                if sc.kind == "longpoll" and args.longpoll_threads:
                    # As deployed, workers x threads (4 x 32 here) polls wait at once and the rest
                    # queue behind them; a site expecting N long polls sizes threads for N.
                    server = Gateway(tmp / "longpoll", args.plugin_options, threads=args.longpoll_threads,
                                     config=args.gateway_config, front=args.front).start()
                    started.append(server)
                    servers["gateway (long poll)"] = server
                try:
                    r = run_one(server, sc, jobs, args.wait, ctld_pid, args.submit_max)
                finally:
                    if server is not servers[name]:
                        server.stop()
                        started.remove(server)
                if server is not servers[name]:
                    r["gateway"] = server.describe()
                results.append(r)
                print(f"  {sc.name:<14} {name:<10} {r['req_per_s']:>9,.1f} req/s  p50 {fmt(r['p50_ms'], '.1f')} ms  "
                      f"p99 {fmt(r['p99_ms'], '.1f')} ms  errors {r['errors']} {r['errors_by_kind'] or ''}  "
                      f"job-info RPC/s {r['job_info_rpc_per_s']:.2f}  CPU s: server {r['server_cpu_s']:.1f}, "
                      f"slurmctld {r['slurmctld_cpu_s']:.1f}, loadgen {r['loadgen_cpu_s']:.1f}"
                      + (f"  in squeue: {r['submitted_in_squeue']}" if "submitted_in_squeue" in r else "")
                      + ("  (other tests were running)" if r["other_tests_running"] else ""),
                      flush=True)
                time.sleep(1.0)
        verdicts = judge(results)
        print()
        print(table(results, verdicts))
        doc = {"bench": "slurmrestd_compare", "machine": machine_info(), "queued_jobs": queued,
               "jobs_per_user": {u: len(v) for u, v in jobs.items()},
               "servers": {n: s.describe() for n, s in servers.items()},
               "loadgen": "bench/loadgen.py: asyncio + aiohttp, one keep-alive connection per client, closed loop",
               "longpoll_wait_s": args.wait, "total_s": round(time.monotonic() - t_start, 1),
               "results": results, "targets": verdicts}
        if args.json:
            Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print("\nJSON: " + json.dumps({"targets": verdicts}))
        return 0
    finally:
        for s in reversed(started):
            s.stop()
        cancel_by_name(SUBMIT_NAME)
        if not args.keep_queue:
            cancel_by_name(QUEUE_NAME)
        if not slurm_was_up:
            sh(CLUSTER / "slurm.sh", "down", timeout=120, check=False)


if __name__ == "__main__":
    sys.exit(main())
