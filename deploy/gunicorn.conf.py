"""gunicorn settings for HPC Gateway, driven by gateway.yaml (the file GATEWAY_CONFIG names).

    GATEWAY_CONFIG=/opt/hpc-gateway/etc/gateway.yaml gunicorn --config deploy/gunicorn.conf.py

- Binds ``bind``:``http_port``, or ``bind``:``https_port`` with ``cert``/``key`` when ``ssl: 1``
  (then nothing listens on http_port: plain HTTP to the TLS port fails the handshake).
- Worker class ``gthread`` (gateway.serving.GatewayWorker: gthread with deadlines on slow
  clients, ``client_header_timeout`` and ``client_io_timeout``): a long poll (GET /jobs/{id}?wait=N) sleeps in one thread of a
  worker, not in a whole worker process, so ``workers x threads`` polls may wait at once while
  the workers' other threads keep serving. The worker heartbeat runs in the worker's main
  loop, independent of request threads, so a 60 s poll never trips ``timeout``.
- Workers: GATEWAY_WORKERS, else ``workers`` in gateway.yaml, else 2 x CPUs (2..8).
  Threads per worker: GATEWAY_THREADS, else ``threads`` in gateway.yaml, else 32.
- Keep-alive longer than NGINX's upstream ``keepalive_timeout`` (60 s in
  deploy/nginx/*.conf): the replica never closes an idle connection NGINX is about to reuse,
  which would fail a POST that NGINX must not replay.
- Metrics: PROMETHEUS_MULTIPROC_DIR is set (before anything imports prometheus_client) to
  a fresh directory, emptied at start and removed at exit; ``child_exit`` marks dead workers.
- Logs: stderr (journald under systemd) and, when GATEWAY_LOG_DIR is set, the per-host file
  ``$GATEWAY_LOG_DIR/hpc-gateway.log.<hostname>`` (as the seed's aiprestd.log.$HOSTNAME).
"""
import os
import shutil
import socket
import tempfile

# Before the gateway (and so prometheus_client) is imported anywhere in this process: the
# metric value class is chosen when prometheus_client is first imported.
# A reload (SIGHUP) runs this file again in the same master: its live workers keep the dir.
_reload = os.environ.get("HPCGW_METRICS_MASTER") == str(os.getpid())
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if not _reload:
    if not _metrics_dir:
        _metrics_dir = tempfile.mkdtemp(prefix="hpc-gateway-metrics-",
                                        dir=os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir
        os.environ["HPCGW_METRICS_OWNED"] = "1"
    else:
        os.makedirs(_metrics_dir, exist_ok=True)
        for _name in os.listdir(_metrics_dir):    # fresh: figures of a previous run are stale
            if _name.endswith(".db"):
                os.unlink(os.path.join(_metrics_dir, _name))
    os.environ["HPCGW_METRICS_MASTER"] = str(os.getpid())
_own_metrics_dir = os.environ.get("HPCGW_METRICS_OWNED") == "1"

from gateway.config import count_setting, load_config  # noqa: E402  (after the environment is set)
from gateway.errors import ConfigError  # noqa: E402
from gateway.serving import GatewayWorker  # noqa: E402
from gateway.serving import install as _one_write_responses  # noqa: E402
from gateway.serving import json_refusals  # noqa: E402

# Headers and body in one write (gateway/serving.py): one system call less per answer, and
# no answer cut between its headers and its body when a replica dies.
_one_write_responses()
# What gunicorn refuses before the app (request line too long, bad headers): JSON, as the API.
json_refusals()

_cfg = load_config()      # GATEWAY_CONFIG, else the built-in defaults; errors stop the start


def _count(env: str, key: str, default: int) -> int:
    try:
        return count_setting(env, _cfg, key, default)
    except ConfigError as exc:
        raise SystemExit(exc.msg) from None


def _bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


wsgi_app = "gateway:create_app()"

# GATEWAY_BIND wins over bind: (make run sets 127.0.0.1: a try-out should not listen on every
# interface while the mock runs every user's jobs as this account).
_host = os.environ.get("GATEWAY_BIND") or _cfg["bind"]
if _cfg["ssl"] == 1:
    bind = [_bind_address(_host, _cfg["https_port"])]
    certfile = _cfg["cert"]
    keyfile = _cfg["key"]
else:
    bind = [_bind_address(_host, _cfg["http_port"])]

worker_class = "gateway.serving.GatewayWorker"
# A client that stops sending its request, its body, or reading its answer frees its thread.
GatewayWorker.header_timeout = _cfg["client_header_timeout"]
GatewayWorker.io_timeout = _cfg["client_io_timeout"]
# Answers are written, never sendfile()d: a write obeys client_io_timeout, sendfile() on a
# blocking socket would wait for a reader that stopped for good. (Downloads are pipes from
# dd anyway; only static Swagger UI files would take the sendfile path.)
sendfile = False
# The TLS handshake runs in the request's thread, under client_header_timeout (gunicorn's
# default; with the handshake inside wrap_socket the header deadline could not cut it).
do_handshake_on_connect = False
# Long enough for the longest documented query (paths up to 4096 characters, URL-encoded);
# NGINX's large_client_header_buffers in deploy/nginx/ must allow as much.
limit_request_line = 8190
workers = _count("GATEWAY_WORKERS", "workers", max(2, min(8, 2 * (os.cpu_count() or 1))))
threads = _count("GATEWAY_THREADS", "threads", 32)
# Connections a worker holds (waiting requests and idle keep-alive ones from NGINX).
worker_connections = max(1000, threads * 4)
# Heartbeat timeout of a worker (not of a request: gthread requests run in threads).
timeout = 60
# On stop or reload, let long polls (at most max_wait_seconds) finish.
graceful_timeout = int(_cfg.get("max_wait_seconds", 60)) + 10
keepalive = 75
# NGINX (or a trusted proxy on this host) sets X-Forwarded-Proto.
forwarded_allow_ips = os.environ.get("GATEWAY_FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"        # heartbeat files off a possibly slow disk
proc_name = "hpc-gateway"
# gunicorn >= 25.1 has a control socket (gunicornc), by default one per account
# ($HOME/.gunicorn/gunicorn.ctl): several instances on a host would fight over it. One per
# instance, in its runtime (systemd) or work directory; none if that path is too long.
_ctl = os.path.join(os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or _cfg["work_dir"], "gunicorn.ctl")
if len(_ctl.encode()) < 100:
    control_socket = _ctl
else:
    control_socket_disable = True

# ------------------------------------------------------------------------------ logging
loglevel = _cfg["log_level"]
_handlers = {"console": {"class": "logging.StreamHandler", "formatter": "generic", "stream": "ext://sys.stderr"}}
_log_dir = os.environ.get("GATEWAY_LOG_DIR")
if _log_dir:
    os.makedirs(_log_dir, exist_ok=True)
    _handlers["file"] = {
        # Watched: logrotate may move the file; the handler reopens it.
        "class": "logging.handlers.WatchedFileHandler", "formatter": "generic",
        "filename": os.path.join(_log_dir, f"hpc-gateway.log.{socket.gethostname().split('.')[0]}"),
    }
_level = loglevel.upper()
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": _level, "handlers": list(_handlers)},
    "loggers": {
        "gunicorn.error": {"level": _level, "handlers": list(_handlers), "propagate": False,
                           "qualname": "gunicorn.error"},
        # access_log: false keeps the logger but below its level: a request costs no log line.
        "gunicorn.access": {"level": "INFO" if _cfg["access_log"] else "WARNING",
                            "handlers": list(_handlers), "propagate": False,
                            "qualname": "gunicorn.access"},
    },
    "handlers": _handlers,
    "formatters": {"generic": {"format": "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
                               "datefmt": "%Y-%m-%dT%H:%M:%S%z"}},
}
# Who, what, status, bytes, microseconds; the client address is NGINX's X-Forwarded-For.
access_log_format = '%({x-forwarded-for}i)s %(h)s "%(r)s" %(s)s %(b)s %(D)sus'


# ------------------------------------------------------------------------------ hooks
def child_exit(server, worker):
    """A worker died (or was replaced): its live gauges must not count any more."""
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid, _metrics_dir)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
