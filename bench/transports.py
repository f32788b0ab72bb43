"""Latency per command of each transport: N x `true`, median / p90 / p99 / mean.

    sudo .venv/bin/python bench/transports.py [-n 200] [--only local,ssh,ssm]

- local: a subprocess on this host.
- ssh: a real sshd on 127.0.0.1 (tests/support/sshd.py); "reused" goes through the
  ControlMaster (one connection for all commands), "new connection" sets control_persist=0
  (TCP + key exchange + auth per command, measured on n/10 commands). Measured for root and
  for an unprivileged user with /bin/sh, since the remote login shell's start-up files
  (e.g. a root ~/.bashrc that runs `pyenv init`) are part of every command's cost.
- ssm: the SSM test double (tests/support/ssm_endpoint.py, commands really run with bash)
  and moto S3; this measures the transport's send + poll loop and the double, not AWS.

Needs root (sshd). Prints figures only; nothing is asserted.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.transports import make_transport  # noqa: E402


def measure(transport, n: int, argv=("true",)) -> list[float]:
    transport.run(list(argv))  # warm-up: connection, master, clients
    times = []
    for _ in range(n):
        start = time.perf_counter()
        result = transport.run(list(argv))
        times.append(time.perf_counter() - start)
        assert result.returncode == 0, result
    return times


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def report(label: str, times: list[float]) -> None:
    ms = [t * 1000 for t in times]
    print(f"{label:<38} n={len(ms):<4} median {statistics.median(ms):7.1f} ms   "
          f"p90 {pct(ms, 90):7.1f}   p99 {pct(ms, 99):7.1f}   mean {statistics.mean(ms):7.1f}",
          flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--only", default="local,ssh,ssm")
    parser.add_argument("--user", default="gwalice", help="unprivileged user for ssh")
    args = parser.parse_args()
    kinds = set(args.only.split(","))

    if "local" in kinds:
        t = make_transport({"type": "local"})
        report("local", measure(t, args.n))

    if "ssh" in kinds:
        from tests.support import ensure_user
        from tests.support.sshd import sshd
        users = ["root"] + ([args.user] if ensure_user(args.user) else [])
        with sshd(users) as server:
            for user in users:
                t = make_transport(server.transport_options(user=user))
                try:
                    report(f"ssh reused connection ({user})", measure(t, args.n))
                finally:
                    t.close()
            t = make_transport(server.transport_options(user=users[-1], control_persist=0))
            report(f"ssh new connection each ({users[-1]})", measure(t, max(5, args.n // 10)))

    if "ssm" in kinds:
        from tests.support.s3_server import s3_server
        from tests.support.ssm_endpoint import ssm_endpoint
        with ExitStack() as stack:
            s3 = stack.enter_context(s3_server(buckets=["bench"]))
            ssm = stack.enter_context(ssm_endpoint(s3_endpoint_url=s3.url))
            t = make_transport(ssm.transport_options(output_bucket="bench",
                                                     s3_endpoint_url=s3.url))
            report("ssm (test double, 50 ms first poll)", measure(t, args.n))
            requests = ssm.requests["GetCommandInvocation"] / max(1, ssm.requests["SendCommand"])
            print(f"{'':<38} GetCommandInvocation calls per command: {requests:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
