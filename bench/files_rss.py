"""Peak RSS of a gunicorn worker moving a 1 GiB file both ways through the files API.

Starts gunicorn with the deployed settings (deploy/gunicorn.conf.py: gthread; one worker so
that every byte crosses the process measured) on the mock backend, logs in, uploads a file
of ``--size`` bytes (generated on the fly: pseudo-random blocks, never stored in the repo or
held in memory), downloads it back, and prints the worker's resident set size (VmRSS) and
its high-water mark (VmHWM, /proc/<pid>/status) before, during and after each transfer, plus
throughput and the checksums. Flat means: the peak after moving 1 GiB each way is within a
few chunks (files.chunk_bytes, 1 MiB) of the peak before.

    .venv/bin/python bench/files_rss.py [--size 1073741824] [--chunk 1048576] [--keep]

Needs nothing but the venv; the file lands under a temporary directory (deleted at the end
unless --keep), so ~size bytes of free disk space are needed for the duration.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import requests
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PREFIX = "/aip/v9.2"
USER = "gwbench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(entry))
            except OSError:
                continue
    return out


class Generated:
    """``size`` bytes of a repeated pseudo-random block, read in pieces (a streaming body)."""

    def __init__(self, size: int, block: int = 4 * 1024 * 1024):
        self.size, self.left = size, size
        self.block = os.urandom(block)
        self.pos = 0
        self.digest = hashlib.sha256()

    def __len__(self):
        return self.size

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = min(self.left if n is None or n < 0 else n, self.left, len(self.block) - self.pos)
        data = self.block[self.pos:self.pos + n]
        self.pos = (self.pos + n) % len(self.block)
        self.left -= n
        self.digest.update(data)
        return data


class Sampler(threading.Thread):
    """VmRSS of the worker every 50 ms; the maximum seen per phase."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.phase, self.peaks, self.stop = pid, "idle", {}, threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                rss = status_kib(self.pid, "VmRSS")
            except (OSError, KeyError):
                return
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)
            time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1024 ** 3)
    ap.add_argument("--chunk", type=int, default=1024 * 1024, help="files.chunk_bytes")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="gw-files-rss-")
    port = free_port()
    from gateway.auth.users_file import UsersFile
    password = "bench-" + os.urandom(8).hex()
    UsersFile(os.path.join(tmp, "users.yaml")).set_password(USER, password)
    config = {
        "bind": "127.0.0.1", "http_port": port, "work_dir": tmp, "log_level": "warning",
        "auth": {"users_file": os.path.join(tmp, "users.yaml")},
        "scheduler": {"backend": "mock", "options": {"state_dir": os.path.join(tmp, "mock")}},
        "files": {"max_upload_bytes": args.size + 1024 ** 2, "chunk_bytes": args.chunk},
    }
    with open(os.path.join(tmp, "gateway.yaml"), "w") as fh:
        yaml.safe_dump(config, fh)
    env = {**os.environ, "GATEWAY_CONFIG": os.path.join(tmp, "gateway.yaml"),
           "GATEWAY_WORKERS": "1", "GATEWAY_THREADS": str(args.threads)}
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    master = subprocess.Popen([gunicorn, "--config", os.path.join(ROOT, "deploy", "gunicorn.conf.py"),
                               "--timeout", "900", "gateway:create_app()"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "gunicorn.log"), "w"))  # noqa: SIM115
    base = f"http://127.0.0.1:{port}{PREFIX}"
    try:
        http = requests.Session()
        deadline = time.monotonic() + 60
        while True:
            try:
                if http.get(base + "/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline or master.poll() is not None:
                with open(os.path.join(tmp, "gunicorn.log")) as fh:
                    print(fh.read()[-3000:], file=sys.stderr)
                raise SystemExit("gunicorn did not start")
            time.sleep(0.2)
        workers = children(master.pid)
        if len(workers) != 1:
            raise SystemExit(f"expected one worker, found {workers}")
        worker = workers[0]
        token = http.post(base + "/login", json={"username": USER, "password": password}).json()["data"]["token"]["token"]
        http.headers["Authorization"] = f"Bearer {token}"
        # Warm up: the first file request imports and builds what every later one reuses.
        warm = http.put(base + "/files/content", params={"path": "warm", "overwrite": "true"}, data=b"w" * 4096)
        assert warm.status_code == 200, warm.text
        assert http.get(base + "/files/content", params={"path": "warm"}).content == b"w" * 4096

        # Start the high-water mark afresh (it is inherited from the forking master otherwise):
        # writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0, own process or root).
        try:
            with open(f"/proc/{worker}/clear_refs", "w") as fh:
                fh.write("5")
            reset = "reset after warm-up"
        except OSError as exc:
            reset = f"not reset ({exc.strerror}): includes start-up"
        sampler = Sampler(worker)
        sampler.start()
        before = (status_kib(worker, "VmRSS"), status_kib(worker, "VmHWM"))

        sampler.phase = "upload"
        body = Generated(args.size)
        t0 = time.perf_counter()
        r = http.put(base + "/files/content", params={"path": "big.bin", "overwrite": "true"}, data=body,
                     headers={"Content-Type": "application/octet-stream"}, timeout=900)
        up_s = time.perf_counter() - t0
        assert r.status_code == 200, r.text
        sent_sha = body.digest.hexdigest()
        assert r.json()["data"]["file"]["sha256"] == sent_sha, "checksum mismatch on upload"
        after_up = (status_kib(worker, "VmRSS"), status_kib(worker, "VmHWM"))

        sampler.phase = "download"
        t0 = time.perf_counter()
        got, size = hashlib.sha256(), 0
        with http.get(base + "/files/content", params={"path": "big.bin"}, stream=True, timeout=900) as resp:
            assert resp.status_code == 200, resp.text
            for chunk in resp.iter_content(1024 * 1024):
                got.update(chunk)
                size += len(chunk)
        down_s = time.perf_counter() - t0
        after_down = (status_kib(worker, "VmRSS"), status_kib(worker, "VmHWM"))
        sampler.phase = "done"
        time.sleep(0.1)
        sampler.stop.set()

        assert size == args.size and got.hexdigest() == sent_sha, "download differs from upload"
        mib = args.size / 1024 ** 2
        print(f"files_rss: gunicorn gthread, 1 worker x {args.threads} threads, mock backend, "
              f"chunk {args.chunk // 1024} KiB, file {mib:.0f} MiB (sha256 {sent_sha[:16]}... both ways)")
        print(f"  worker before    : VmRSS {before[0] / 1024:7.1f} MiB   VmHWM {before[1] / 1024:7.1f} MiB   (VmHWM {reset})")
        print(f"  after upload     : VmRSS {after_up[0] / 1024:7.1f} MiB   VmHWM {after_up[1] / 1024:7.1f} MiB"
              f"   ({mib / up_s:6.1f} MiB/s, {up_s:.1f} s; sampled peak {sampler.peaks.get('upload', 0) / 1024:.1f} MiB)")
        print(f"  after download   : VmRSS {after_down[0] / 1024:7.1f} MiB   VmHWM {after_down[1] / 1024:7.1f} MiB"
              f"   ({mib / down_s:6.1f} MiB/s, {down_s:.1f} s; sampled peak {sampler.peaks.get('download', 0) / 1024:.1f} MiB)")
        print(f"  peak growth over the whole run: {(after_down[1] - before[1]) / 1024:.1f} MiB "
              f"for {2 * mib:.0f} MiB moved")
        return 0
    finally:
        master.send_signal(signal.SIGTERM)
        try:
            master.wait(timeout=30)
        except subprocess.TimeoutExpired:
            master.kill()
        if args.keep:
            print(f"  kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
