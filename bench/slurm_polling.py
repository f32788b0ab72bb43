#!/usr/bin/env python3
"""How hard polling clients hit slurmctld through the slurm_ssm plugin.

N threads (in P processes, like gunicorn workers sharing one cache dir) call the plugin's
get_job / list_jobs as fast as they can for D seconds against the real test Slurm
(tests/cluster/slurm.sh); the controller's REQUEST_JOB_INFO RPCs are counted with sdiag
(reset first with ``sdiag -r``). Printed: calls/s, p50/p99 latency per call, and the
controller's job-info RPCs per second, with the shared snapshot and (``--baseline``) without
it (snapshot_interval 0: one squeue per call), for comparison.

    .venv/bin/python bench/slurm_polling.py [--threads 32] [--procs 2] [--seconds 10]
                                            [--jobs 50] [--interval 1.0] [--baseline]
    .venv/bin/python bench/slurm_polling.py --api [--clients 8,64] [--workers 2] [--seconds 10]

``--api``: the same through HTTP: the gateway under gunicorn (deploy/gunicorn.conf.py) on
127.0.0.1 with the slurm_ssm backend, GET /jobs and GET /jobs/{id} from 8 and 64 concurrent
keep-alive clients (threads of this process): req/s, p50, p99 and slurmctld's job-info RPC/s
for each.

Needs root (sudo -u, sdiag -r) and brings the cluster up if it is down. Bounded: every run
lasts --seconds; the jobs it submits are cancelled at the end. It first waits (at most
--purge-wait) for finished jobs an earlier run left in squeue: slurmctld lists them for
MinJobAge (300 s), and a bench right after a comparison would otherwise poll 5,000 jobs.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.models import JobQuery, JobSpec, User  # noqa: E402

USER = User("gwalice")


def job_info_rpcs() -> int:
    """slurmctld's REQUEST_JOB_INFO count since the last ``sdiag -r``."""
    out = subprocess.run(["sdiag"], capture_output=True, text=True, timeout=30, check=True).stdout
    m = re.search(r"REQUEST_JOB_INFO\s+\(\s*\d+\)\s+count:(\d+)", out)
    return int(m.group(1)) if m else 0


def make_plugin(cache_dir: str, interval: float):
    from gateway_slurm_ssm import make_scheduler
    # interval 0 is the baseline "a squeue per call": no stale answers while one runs either.
    return make_scheduler({"transport": {"type": "local"}, "run_as": "sudo", "cache_dir": cache_dir,
                           "snapshot_interval": interval, "command_timeout": 60,
                           **({"snapshot_stale_grace": 0} if interval == 0 else {})})


def _worker(cache_dir, interval, job_ids, threads, seconds, start_at, results):
    plugin = make_plugin(cache_dir, interval)
    lat = {"get_job": [], "list_jobs": []}
    lock = threading.Lock()
    while time.time() < start_at:
        time.sleep(0.005)
    stop = time.monotonic() + seconds

    def loop(seed):
        rnd = random.Random(seed)
        mine = {"get_job": [], "list_jobs": []}
        while time.monotonic() < stop:
            if rnd.random() < 0.8:
                t = time.perf_counter()
                plugin.get_job(user=USER, job_id=rnd.choice(job_ids))
                mine["get_job"].append(time.perf_counter() - t)
            else:
                t = time.perf_counter()
                plugin.list_jobs(user=USER, query=JobQuery(user=USER.name))
                mine["list_jobs"].append(time.perf_counter() - t)
        with lock:
            for k, v in mine.items():
                lat[k].extend(v)

    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    results.put((lat, plugin.snapshot.refreshes))


def run(label, interval, job_ids, threads, procs, seconds):
    cache_dir = tempfile.mkdtemp(prefix="gw-bench-slurm-")
    make_plugin(cache_dir, interval).list_jobs(user=USER, query=JobQuery())   # warm: one snapshot
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    per_proc = max(1, threads // procs)
    start_at = time.time() + 0.5
    subprocess.run(["sdiag", "-r"], check=True, capture_output=True, timeout=30)
    ps = [ctx.Process(target=_worker, args=(cache_dir, interval, job_ids, per_proc, seconds, start_at, results))
          for _ in range(procs)]
    for p in ps:
        p.start()
    lat = {"get_job": [], "list_jobs": []}
    refreshes = 0
    for _ in ps:
        got, n = results.get(timeout=seconds + 120)
        refreshes += n
        for k, v in got.items():
            lat[k].extend(v)
    for p in ps:
        p.join(30)
    rpcs = job_info_rpcs()
    calls = sum(len(v) for v in lat.values())
    print(f"\n{label}: {procs} process(es) x {per_proc} threads, {seconds:g} s, snapshot_interval={interval:g}")
    print(f"  calls: {calls} ({calls / seconds:,.0f}/s); squeue runs by the plugin: {refreshes}")
    for k, v in lat.items():
        if v:
            v.sort()
            p99 = v[min(len(v) - 1, int(len(v) * 0.99))]
            print(f"  {k:9s} {len(v) / seconds:9,.0f}/s  p50 {statistics.median(v) * 1000:8.2f} ms"
                  f"  p99 {p99 * 1000:8.2f} ms")
    print(f"  slurmctld REQUEST_JOB_INFO: {rpcs} in {seconds:g} s = {rpcs / seconds:.2f} RPC/s")
    return rpcs / seconds


def api_run(base, token, path_for, clients, seconds):
    import requests
    lat, errors = [], []
    lock = threading.Lock()
    subprocess.run(["sdiag", "-r"], check=True, capture_output=True, timeout=30)
    stop = time.monotonic() + seconds

    def client(seed):
        rnd = random.Random(seed)
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        mine, bad = [], 0
        while time.monotonic() < stop:
            t = time.perf_counter()
            r = session.get(base + path_for(rnd), timeout=60)
            mine.append(time.perf_counter() - t)
            bad += r.status_code != 200
        with lock:
            lat.extend(mine)
            errors.append(bad)

    ts = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    rpcs = job_info_rpcs()
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return len(lat) / seconds, statistics.median(lat) * 1000, p99 * 1000, rpcs / seconds, sum(errors)


def api_bench(args, job_ids):
    import secrets

    import requests

    from gateway.auth.users_file import UsersFile
    from tests.deploy.servers import GunicornReplica, Processes, free_port, write_config
    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-slurm-api-"))
    password = secrets.token_urlsafe(12)
    UsersFile(str(tmp / "users.yaml")).set_password(USER.name, password)
    config = write_config(
        tmp / "gateway.yaml", bind="127.0.0.1", http_port=free_port(), work_dir=str(tmp / "work"),
        auth={"users_file": str(tmp / "users.yaml")}, log_level="warning",
        scheduler={"backend": "slurm_ssm", "options": {
            "transport": {"type": "local"}, "run_as": "sudo", "cache_dir": str(tmp / "slurm-cache"),
            "snapshot_interval": args.interval}})
    procs = Processes()
    try:
        replica = GunicornReplica(procs, "slurm", config, tmp / "log", workers=args.workers,
                                  threads=args.gunicorn_threads).start()
        prefix = "/aip/v9.2"
        r = requests.post(replica.base + prefix + "/login", json={"username": USER.name, "password": password},
                          timeout=30)
        r.raise_for_status()
        token = r.json()["data"]["token"]["token"]
        print(f"gateway: gunicorn {args.workers} workers x {args.gunicorn_threads} threads, "
              f"slurm_ssm snapshot_interval={args.interval:g}, {args.seconds:g} s per run")
        print(f"{'clients':>7} {'request':<16} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-200':>7} "
              f"{'ctld job-info RPC/s':>20}")
        paths = {"GET /jobs": lambda rnd: f"{prefix}/jobs",
                 "GET /jobs/{id}": lambda rnd: f"{prefix}/jobs/{rnd.choice(job_ids)}"}
        for clients in args.clients:
            for label, path_for in paths.items():
                rps, p50, p99, rpc, bad = api_run(replica.base, token, path_for, clients, args.seconds)
                print(f"{clients:>7} {label:<16} {rps:>8,.0f} {p50:>8.1f} {p99:>8.1f} {bad:>7} {rpc:>20.2f}")
    finally:
        procs.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--jobs", type=int, default=50, help="jobs in the queue while polling")
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--baseline", action="store_true", help="also run with snapshot_interval 0")
    ap.add_argument("--api", action="store_true", help="through HTTP: gunicorn + the gateway")
    ap.add_argument("--clients", type=lambda v: [int(x) for x in v.split(",")], default=[8, 64])
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers (--api)")
    ap.add_argument("--gunicorn-threads", type=int, default=32, help="threads per worker (--api)")
    ap.add_argument("--purge-wait", type=float, default=360.0,
                    help="wait at most this long for finished jobs of earlier runs to leave squeue "
                         "(MinJobAge, 300 s), so the figures are for this bench's queue; 0: do not wait")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (sudo -u gwalice, sdiag -r)")
    from tests.support import ensure_user
    if not ensure_user(USER.name):                          # a fresh machine has no such user
        sys.exit(f"could not create the Unix user {USER.name} (useradd)")
    from tests.cluster.slurm_cluster import start_slurm
    ok, why = start_slurm()
    if not ok:
        sys.exit(why)
    if args.purge_wait > 0:
        from bench.slurmrestd_compare import wait_for_purge
        wait_for_purge(args.jobs, args.purge_wait)
    submitter = make_plugin(tempfile.mkdtemp(prefix="gw-bench-slurm-"), 0)
    job_ids = [submitter.submit_job(user=USER, spec=JobSpec(command="sleep 600", name=f"bench-{i}",
                                                            hold=i % 3 == 0))
               for i in range(args.jobs)]
    queued = len(subprocess.run(["squeue", "-h", "--states=all", "-o", "%i"], capture_output=True,
                                text=True).stdout.split())
    print(f"{len(job_ids)} bench jobs submitted; {queued} jobs in squeue in all")
    try:
        if args.api:
            api_bench(args, job_ids)
            return
        shared = run("shared snapshot", args.interval, job_ids, args.threads, args.procs, args.seconds)
        if args.baseline:
            base = run("snapshot_interval 0 (a squeue for every call, one at a time)", 0.0, job_ids, args.threads, args.procs,
                       min(args.seconds, 5.0))
            print(f"\nREQUEST_JOB_INFO per second: {shared:.2f} shared vs {base:.2f} without")
        else:
            print(f"\nREQUEST_JOB_INFO per second: {shared:.2f}")
    finally:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60)


if __name__ == "__main__":
    main()
