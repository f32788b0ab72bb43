"""Real servers for the deployment tests: redis-server, gunicorn replicas, NGINX.

Everything listens on 127.0.0.1 on a free port, runs in its own process group (so a
"replica" can be SIGKILLed whole, master and workers, as a crashed host would be) and is
stopped by :class:`Processes` even when a test fails (and, as a last resort, at exit).
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
GUNICORN_CONF = DEPLOY / "gunicorn.conf.py"
RENDER = DEPLOY / "nginx" / "render.sh"
PREFIX = "/aip/v9.2"

_live: "weakref.WeakSet[Proc]" = weakref.WeakSet()


def _kill_all_at_exit():
    for proc in list(_live):
        proc.kill()


atexit.register(_kill_all_at_exit)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gunicorn_available() -> bool:
    try:
        import gunicorn  # noqa: F401
        return True
    except ImportError:
        return False


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05, proc: "Proc | None" = None):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception:          # noqa: BLE001 - not up yet
            value = None
        if value:
            return value
        if proc is not None and proc.popen.poll() is not None:
            raise AssertionError(f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}:\n"
                                 f"{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}"
                                 + (f":\n{proc.log_tail()}" if proc else ""))
        time.sleep(interval)


class Proc:
    """One server process (and its process group), output to a log file."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict | None = None, cwd=None):
        self.name, self.argv, self.log, self.env, self.cwd = name, argv, Path(log), env, cwd
        self.popen: subprocess.Popen | None = None

    def start(self) -> "Proc":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")
        try:
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=self.env, cwd=self.cwd, start_new_session=True)
        finally:
            out.close()
        _live.add(self)
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal_group(self, sig) -> None:
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """SIGKILL the whole process group (a crashed replica), and reap it."""
        if self.popen is None:
            return
        self.signal_group(signal.SIGKILL)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        _live.discard(self)

    def stop(self, sig=signal.SIGTERM, timeout: float = 15) -> None:
        """Graceful stop, then SIGKILL for whatever is left of the group."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.signal_group(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


class Processes:
    """Owns every server a test started; ``close()`` stops them all (fixtures call it)."""

    def __init__(self):
        self.procs: list[Proc] = []

    def add(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=10)
        self.procs.clear()


# ----------------------------------------------------------------------------- redis
class RedisServer:
    def __init__(self, procs: Processes, tmp: Path):
        self.port = free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        # No persistence: no RDB snapshots, no AOF; loopback only.
        argv = [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(tmp), "--daemonize", "no",
                "--protected-mode", "yes", "--loglevel", "warning"]
        self.proc = procs.add(Proc("redis-server", argv, tmp / "redis.log")).start()
        import redis
        self.client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        wait_until(self.client.ping, 15, "redis-server to answer PING", proc=self.proc)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


# ----------------------------------------------------------------------------- gunicorn
def write_config(path: Path, **cfg) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class GunicornReplica:
    """``gunicorn -c deploy/gunicorn.conf.py`` with GATEWAY_CONFIG=<config>."""

    def __init__(self, procs: Processes, name: str, config: Path, log_dir: Path, *, workers: int = 2,
                 threads: int = 16, extra_env: dict | None = None, scheme: str = "http", port: int | None = None,
                 verify=None):
        self.procs, self.name, self.config, self.log_dir = procs, name, config, log_dir
        cfg = yaml.safe_load(config.read_text())
        self.port = port or (cfg.get("https_port") if cfg.get("ssl") else cfg.get("http_port"))
        self.scheme, self.verify = scheme, verify
        self.env = {**os.environ, "GATEWAY_CONFIG": str(config), "GATEWAY_WORKERS": str(workers),
                    "GATEWAY_THREADS": str(threads), "GATEWAY_LOG_DIR": str(log_dir), **(extra_env or {})}
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.proc: Proc | None = None

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "gunicorn", "--config", str(GUNICORN_CONF)]

    def start(self, wait: bool = True) -> "GunicornReplica":
        argv = self.argv()
        self.proc = self.procs.add(Proc(f"gunicorn {self.name}", argv, self.log_dir / f"{self.name}.stdout",
                                        env=self.env, cwd=str(ROOT)))
        self.proc.start()
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 60) -> None:
        def healthy():
            r = requests.get(self.base + PREFIX + "/health", timeout=5, verify=self.verify)
            return r.status_code == 200
        wait_until(healthy, timeout, f"{self.name} on port {self.port} to answer /health", proc=self.proc)

    def kill(self) -> None:
        self.proc.kill()

    def restart(self, wait: bool = True) -> None:
        if self.proc is not None:
            self.proc.kill()
        self.start(wait=wait)


class GranianReplica(GunicornReplica):
    """The same app, configuration and environment served by granian (Rust HTTP, WSGI
    interface) instead of gunicorn: **for bench/slurmrestd_compare.py --front granian
    only**, to measure what the HTTP front end costs; not a supported way to deploy (no
    TLS, access log, X-Forwarded-* handling or dead-worker metrics mapping). Plain HTTP on
    127.0.0.1 with the replica's workers and threads."""

    def argv(self) -> list[str]:
        granian = Path(sys.executable).with_name("granian")
        return [str(granian), "--interface", "wsgi", "--factory", "--workers", self.env["GATEWAY_WORKERS"],
                "--blocking-threads", self.env["GATEWAY_THREADS"], "--host", "127.0.0.1", "--port", str(self.port),
                "--log-level", "warning", "gateway:create_app"]


class GeventReplica(GunicornReplica):
    """deploy/gunicorn.conf.py with gunicorn's gevent worker (``-k gevent``, 1000 connections
    per worker) instead of the deployed gthread GatewayWorker: **for bench/slurmrestd_compare.py
    --front gevent only** (what gunicorn's other worker gives on the same app); not a
    supported deployment (no slow-client deadlines; a blocking flock, PAM or password hash
    stalls every connection of the worker)."""

    def argv(self) -> list[str]:
        return super().argv() + ["--worker-class", "gevent", "--worker-connections", "1000"]


# ----------------------------------------------------------------------------- nginx
def render(template: str, *args: str) -> str:
    out = subprocess.run([str(RENDER), str(DEPLOY / "nginx" / template), *args],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise AssertionError(f"render.sh failed: {out.stderr}")
    return out.stdout


class Nginx:
    """A private NGINX (its own prefix, pid, logs, temp dirs) serving one rendered site file."""

    def __init__(self, procs: Processes, tmp: Path, site: str):
        self.tmp = tmp
        for sub in ("logs", "conf", "temp"):
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        (tmp / "conf" / "site.conf").write_text(site)
        user = "user root;\n" if os.geteuid() == 0 else ""
        (tmp / "conf" / "nginx.conf").write_text(f"""{user}worker_processes 2;
pid {tmp}/nginx.pid;
error_log {tmp}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {tmp}/logs/access.log;
    client_body_temp_path {tmp}/temp/body;
    proxy_temp_path {tmp}/temp/proxy;
    fastcgi_temp_path {tmp}/temp/fastcgi;
    uwsgi_temp_path {tmp}/temp/uwsgi;
    scgi_temp_path {tmp}/temp/scgi;
    include {tmp}/conf/site.conf;
}}
""")
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        check = subprocess.run([binary, "-t", "-p", str(tmp), "-c", str(tmp / "conf" / "nginx.conf")],
                               capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise AssertionError(f"nginx -t refused the rendered configuration:\n{check.stderr}\n{site}")
        self.proc = procs.add(Proc("nginx", [binary, "-p", str(tmp), "-c", str(tmp / "conf" / "nginx.conf"),
                                             "-g", "daemon off;"], tmp / "logs" / "stdout.log")).start()

    def error_log(self) -> str:
        try:
            return (self.tmp / "logs" / "error.log").read_text(errors="replace")
        except OSError:
            return ""

    def access_log(self) -> str:
        try:
            return (self.tmp / "logs" / "access.log").read_text(errors="replace")
        except OSError:
            return ""


def nginx_available() -> bool:
    return bool(shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"))


def redis_available() -> bool:
    return bool(shutil.which("redis-server"))
