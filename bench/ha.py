"""The HA layout under load while a replica dies: requests, answers by kind, p50/p99.

    .venv/bin/python bench/ha.py [--duration 20] [--clients 8] [--replicas 3] [--workers 2]
                                 [--threads 16] [--kill-at 6] [--restart-at 12] [--no-kill] [--json]

Starts redis-server (no persistence), N gunicorn replicas (deploy/gunicorn.conf.py, shared
secret, Redis session store, one mock scheduler state) and NGINX (deploy/nginx/
hpc-gateway-ha.conf rendered for them), all on 127.0.0.1; runs the client load of
tests/deploy/ha.py (logins, keyed submissions, job polls and long polls, job lists) through
NGINX, SIGKILLs replica 1 (master and workers) at --kill-at and restarts it at
--restart-at; then checks every submission against the scheduler and prints the figures.
Everything is stopped at the end. Prints figures only; the test (tests/deploy/test_ha.py)
asserts.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.deploy.ha import HACluster, format_summary, run_load  # noqa: E402
from tests.deploy.servers import Processes  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--clients", type=int, default=8, help="client threads")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per replica")
    parser.add_argument("--threads", type=int, default=16, help="threads per worker")
    parser.add_argument("--kill-at", type=float, default=6)
    parser.add_argument("--restart-at", type=float, default=12)
    parser.add_argument("--no-kill", action="store_true", help="baseline: no replica is killed")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON too")
    args = parser.parse_args()

    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="hpcgw-bench-ha-") as tmp:
        try:
            cluster = HACluster(procs, Path(tmp), replicas=args.replicas, workers=args.workers,
                                threads=args.threads, pending_seconds=3)
            victim = cluster.replicas[min(1, args.replicas - 1)]
            events = [] if args.no_kill else [(args.kill_at, f"SIGKILL {victim.name}", victim.kill),
                                              (args.restart_at, f"restart {victim.name}", victim.restart)]
            result = run_load(cluster.base, cluster.passwords, threads=args.clients, duration=args.duration,
                              events=events)
            summary = result.summary()
            at_scheduler = cluster.scheduler_jobs()
            summary["at_scheduler_exactly_once"] = sum(
                1 for s in result.submissions if at_scheduler.get(s.name) == [s.job_id])
            summary["duplicates_at_scheduler"] = sum(1 for ids in at_scheduler.values() if len(ids) > 1)
            print(format_summary(summary))
            print(f"at the scheduler exactly once: {summary['at_scheduler_exactly_once']}/{summary['submissions']}; "
                  f"names with more than one job: {summary['duplicates_at_scheduler']}")
            if args.json:
                print(json.dumps(summary, indent=2))
        finally:
            procs.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
