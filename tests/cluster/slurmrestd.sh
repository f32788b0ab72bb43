#!/bin/bash
# Slurm's own REST daemon (Debian's slurmrestd) beside the test Slurm, for bench/ to compare
# the gateway with: JWT authentication, OpenAPI plugin v0.0.38 (Slurm 22.05), loopback only.
#
#   tests/cluster/slurmrestd.sh start          turn on JWT in the test Slurm (restarts slurmctld
#                                              once, the queue is kept) and start slurmrestd
#   tests/cluster/slurmrestd.sh stop           stop the slurmrestd this script started
#   tests/cluster/slurmrestd.sh status         exit 0 when it answers
#   tests/cluster/slurmrestd.sh token USER [SECONDS]   print a JWT for USER (default 3600 s)
#   tests/cluster/slurmrestd.sh logs           print its log
#
# Clients send the headers X-SLURM-USER-NAME: USER and X-SLURM-USER-TOKEN: <token>.
# slurmrestd refuses to run as root or as SlurmUser: it opens its socket as root and then
# drops to an unprivileged system account (-u/-g), made here when missing.
# Environment:
#   GATEWAY_SLURMRESTD_PORT     default 6820 (bound on 127.0.0.1 only)
#   GATEWAY_SLURMRESTD_USER     default gwrestd (a system account with no shell and no home)
#   GATEWAY_SLURMRESTD_THREADS  worker threads (default: slurmrestd's own, 20)
#   GATEWAY_SLURM_DIR           as tests/cluster/slurm.sh (pid file and log go under it)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${GATEWAY_SLURM_DIR:-/var/tmp/hpc-gateway-slurm}
PORT=${GATEWAY_SLURMRESTD_PORT:-6820}
RUSER=${GATEWAY_SLURMRESTD_USER:-gwrestd}
THREADS=${GATEWAY_SLURMRESTD_THREADS:-}
PIDFILE=$DIR/run/slurmrestd.pid
LOGFILE=$DIR/log/slurmrestd.log
BIN=/usr/sbin/slurmrestd

die() { echo "slurmrestd.sh: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root"; }

pid_alive() { [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

answers() {  # any HTTP answer (401 without a token) means it is listening and serving
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$PORT/slurm/v0.0.38/ping") || return 1
    [ "$code" != 000 ]
}

cmd_start() {
    need_root
    [ -x "$BIN" ] || die "$BIN is missing (apt-get install slurmrestd)"
    if ! id -u "$RUSER" >/dev/null 2>&1; then
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$RUSER"
    fi
    GATEWAY_SLURM_JWT=1 "$HERE/slurm.sh" up
    if pid_alive; then
        answers && { echo "slurmrestd already up on 127.0.0.1:$PORT"; return 0; }
        cmd_stop
    fi
    mkdir -p "$DIR/run" "$DIR/log"
    local args=(-a rest_auth/jwt -s openapi/v0.0.38 -u "$(id -u "$RUSER")" -g "$(id -g "$RUSER")")
    [ -n "$THREADS" ] && args+=(-t "$THREADS")
    # SLURM_JWT=daemon: slurmrestd talks to slurmctld with each client's own token.
    SLURM_JWT=daemon setsid "$BIN" "${args[@]}" "127.0.0.1:$PORT" </dev/null >>"$LOGFILE" 2>&1 &
    echo $! >"$PIDFILE"
    local i
    for i in $(seq 100); do
        answers && { echo "slurmrestd up on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"), user $RUSER)"; return 0; }
        pid_alive || break
        sleep 0.1
    done
    tail -20 "$LOGFILE" >&2 || true
    cmd_stop
    die "slurmrestd did not start"
}

cmd_stop() {
    need_root
    [ -s "$PIDFILE" ] || { echo "slurmrestd not running (no pid file)"; return 0; }
    local pid i
    pid=$(cat "$PIDFILE")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
    echo "slurmrestd stopped"
}

cmd_status() {
    if pid_alive && answers; then
        echo "slurmrestd up on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"
        exit 0
    fi
    echo "slurmrestd is not up" >&2
    exit 1
}

cmd_token() {
    need_root
    local user=${1:?usage: $0 token USER [SECONDS]} life=${2:-3600} out
    out=$(timeout 30 scontrol token username="$user" lifespan="$life") || die "scontrol token failed: $out"
    echo "${out#SLURM_JWT=}"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    token) shift; cmd_token "$@" ;;
    logs) [ -e "$LOGFILE" ] && tail -n "${LINES_PER_LOG:-200}" "$LOGFILE" ;;
    *) echo "usage: $0 start|stop|status|token USER [SECONDS]|logs" >&2; exit 2 ;;
esac
