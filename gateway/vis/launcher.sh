# HPC Gateway visualization launcher: the body of every vis job's script (POSIX sh).
#
# The gateway prepends the settings below (the user's command shell-quoted) and submits the
# whole as an ordinary batch job of whichever scheduler (mock, Slurm, LSF/AIP). As the job's
# user, on the execution host, it:
#   1. starts TigerVNC's Xvnc on a free X display (probing /tmp/.X<n>-lock and the socket,
#      retrying on collision), with VNC authentication by a fresh random password and an
#      X authority cookie; Xvnc listens on no TCP port, only on a 0600 Unix socket;
#   2. starts websockify on a free TCP port of VIS_PORT_MIN..VIS_PORT_MAX in front of it,
#      letting through only a websocket that names this session's random key (?token=KEY,
#      websockify's TokenFile plugin on a 0600 file): the port alone opens nothing;
#   3. writes host, port, display, password and key to ~/.hpc-gateway/vis/<job id>.json (mode
#      0600, directory 0700), where the gateway reads it as the user; nothing secret is
#      ever printed, logged or put on a command line;
#   4. runs the command on that display, and ends the session (Xvnc, websockify, the
#      session file) when the command ends, when Xvnc or websockify dies, or when the job is
#      killed (TERM/INT/HUP; the schedulers send SIGTERM before SIGKILL).
# Exit status: the command's; 143/130/129 when killed; 1 when the session could not start;
# 127 when a needed program is missing.
#
# Settings (set by the gateway above this body; may also come from the environment):
#   VIS_COMMAND     the command line to run on the desktop (run by /bin/sh -c)
#   VIS_GEOMETRY    WIDTHxHEIGHT of the desktop (default 1280x800)
#   VIS_LISTEN      address websockify listens on: an IP address, or "hostname" for the
#                   address the execution host's name resolves to (default 127.0.0.1)
#   VIS_PORT_MIN, VIS_PORT_MAX   websockify's port range (default 6100..6199)
#   VIS_DISPLAY_MIN, VIS_DISPLAY_MAX   X displays to try (default 10..199)

set -u
umask 077

: "${VIS_COMMAND:?VIS_COMMAND must name the command to run}"
VIS_GEOMETRY=${VIS_GEOMETRY:-1280x800}
VIS_LISTEN=${VIS_LISTEN:-127.0.0.1}
VIS_PORT_MIN=${VIS_PORT_MIN:-6100}
VIS_PORT_MAX=${VIS_PORT_MAX:-6199}
VIS_DISPLAY_MIN=${VIS_DISPLAY_MIN:-10}
VIS_DISPLAY_MAX=${VIS_DISPLAY_MAX:-199}

say() { printf 'hpc-gateway vis: %s\n' "$*"; }
fail() { printf 'hpc-gateway vis: %s\n' "$*" >&2; exit "${2:-1}"; }

job_id=${SLURM_JOB_ID:-${LSB_JOBID:-${GATEWAY_JOB_ID:-}}}
case $job_id in
    ''|*[!0-9A-Za-z._-]*) fail "no usable job id in SLURM_JOB_ID, LSB_JOBID or GATEWAY_JOB_ID" 2 ;;
esac

missing=
for prog in Xvnc vncpasswd websockify xauth awk od; do
    command -v "$prog" >/dev/null 2>&1 || missing="$missing $prog"
done
[ -z "$missing" ] || fail "missing on $(hostname):$missing (Debian: tigervnc-standalone-server tigervnc-tools websockify xauth)" 127

# The session file lives in the home directory the passwd database gives this account: the
# gateway computes the same path (the job's $HOME may differ, e.g. under sudo or sbatch).
home=$(getent passwd "$(id -u)" | cut -d: -f6)
[ -n "$home" ] && [ -d "$home" ] || home=${HOME:-}
[ -n "$home" ] && [ -d "$home" ] || fail "no home directory for $(id -un) to hold the session file"
session_dir=$home/.hpc-gateway/vis
session=$session_dir/$job_id.json
mkdir -p "$session_dir" || fail "cannot create $session_dir"
chmod 700 "$home/.hpc-gateway" "$session_dir"
rm -f "$session"                      # a previous run of this job id (requeue) is stale

# websockify's token file names the Xvnc socket after "KEY: unix_socket:": a path with a
# colon or a blank would be misread there (and refuse every viewer), so such a TMPDIR is
# passed over for /tmp.
tmp_base=${TMPDIR:-/tmp}
case $tmp_base in
    *:*|*[[:space:]]*) tmp_base=/tmp ;;
esac
work=$(mktemp -d "$tmp_base/hpc-gateway-vis.XXXXXXXXXX") || fail "cannot create a private directory"
cmd_pid= ws_pid= xvnc_pid= display= ended=

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

cleanup() {
    [ -n "$ended" ] && return
    ended=1
    trap '' TERM INT HUP
    rm -f "$session" "$session_dir/.$job_id.json.tmp"
    if alive "$cmd_pid"; then
        pkill -TERM -P "$cmd_pid" 2>/dev/null
        kill -TERM "$cmd_pid" 2>/dev/null
    fi
    for pid in $ws_pid $xvnc_pid; do kill -TERM "$pid" 2>/dev/null; done
    i=0
    while [ $i -lt 30 ] && { alive "$cmd_pid" || alive "$ws_pid" || alive "$xvnc_pid"; }; do
        sleep 0.1
        i=$((i + 1))
    done
    for pid in $cmd_pid $ws_pid $xvnc_pid; do kill -KILL "$pid" 2>/dev/null; done
    wait 2>/dev/null                  # reap them: nothing is left behind, not even a zombie
    # An Xvnc that was killed outright leaves its display's lock and socket: remove ours.
    if [ -n "$display" ] && [ -n "$xvnc_pid" ] && ! alive "$xvnc_pid" \
            && [ "$(tr -d ' \n' <"/tmp/.X$display-lock" 2>/dev/null)" = "$xvnc_pid" ]; then
        rm -f "/tmp/.X$display-lock" "/tmp/.X11-unix/X$display"
    fi
    rm -rf "$work"
}
trap 'cleanup; exit 143' TERM
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 129' HUP
trap cleanup EXIT

# Secrets: 8 characters (all that VNC authentication uses) and a 128-bit X cookie. printf
# is a shell builtin, so neither ever appears in a process's arguments.
password=$(LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 8)
[ ${#password} -eq 8 ] || fail "cannot generate a password"
printf '%s\n' "$password" | vncpasswd -f >"$work/passwd" || fail "vncpasswd failed"
random_hex() {  # 128 random bits, 32 hex digits
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n'
}
cookie=$(random_hex)
[ ${#cookie} -eq 32 ] || fail "cannot generate an X cookie"
# websockify's token. The gateway hands it to NGINX with the desktop's address
# (GET /vis/websocket-check), or puts it in the address (websocket: direct); another
# user's session file may name this port, never this key.
key=$(random_hex)
[ ${#key} -eq 32 ] || fail "cannot generate a websockify key"
printf '%s: unix_socket:%s\n' "$key" "$work/rfb.sock" >"$work/tokens" || fail "cannot write $work/tokens"
XAUTHORITY=$work/Xauthority
export XAUTHORITY

random() {  # random N: 0..N-1
    echo $(( $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % $1 ))
}

# 1. Xvnc on the first free display. Another session may take the same display at the same
# moment: Xvnc then exits ("server already active"), and we try the next one. Our own
# readiness mark is the RFB socket in our private directory, which only our Xvnc creates
# (after it has locked its display).
# A lock whose process is gone (a session SIGKILLed: scancel -s KILL, OOM) is no reason to
# pass a display over, or the node would run out of displays: Xvnc removes a stale lock of
# its own user, and fails on another's (then the next display). The lock holds the pid.
taken() {  # taken D: the display's lock names a live process, or a socket has no lock
    if [ -e "/tmp/.X$1-lock" ]; then
        lock_pid=$(tr -dc '0-9' <"/tmp/.X$1-lock" 2>/dev/null)
        [ -z "$lock_pid" ] || [ -d "/proc/$lock_pid" ]
        return
    fi
    [ -e "/tmp/.X11-unix/X$1" ]
}
d=$VIS_DISPLAY_MIN
while [ "$d" -le "$VIS_DISPLAY_MAX" ]; do
    if taken "$d"; then
        d=$((d + 1))
        continue
    fi
    : >"$XAUTHORITY"
    printf 'add :%s . %s\n' "$d" "$cookie" | xauth -q -f "$XAUTHORITY" source - 2>/dev/null
    rm -f "$work/rfb.sock"
    # Xvnc blacklists a client address after 5 failed logins (10 s, doubling). Through
    # websockify every viewer has the same address (the socket's path), so anyone who can
    # reach websockify could lock the owner out for good. A random 8-character password
    # (62^8) needs no such guard: TigerVNC 1.12 answers each failure after ~0.1 s
    # (measured: 309 a second over 32 connections at once).
    Xvnc ":$d" -auth "$XAUTHORITY" -nolisten tcp -rfbport -1 -rfbunixpath "$work/rfb.sock" \
        -rfbunixmode 0600 -SecurityTypes VncAuth -PasswordFile "$work/passwd" \
        -BlacklistThreshold 2147483647 \
        -geometry "$VIS_GEOMETRY" -depth 24 -AlwaysShared -desktop "job $job_id" \
        </dev/null >&2 2>&1 &
    xvnc_pid=$!
    i=0
    while [ $i -lt 100 ] && alive "$xvnc_pid" && ! [ -S "$work/rfb.sock" ]; do
        sleep 0.1
        i=$((i + 1))
    done
    if alive "$xvnc_pid" && [ -S "$work/rfb.sock" ]; then
        display=$d
        break
    fi
    kill -KILL "$xvnc_pid" 2>/dev/null
    wait "$xvnc_pid" 2>/dev/null
    xvnc_pid=
    d=$((d + 1))
done
[ -n "$display" ] || fail "no free X display in :$VIS_DISPLAY_MIN..:$VIS_DISPLAY_MAX (or Xvnc cannot start)"

# 2. websockify on a free port, tried from a random start in the range. A port taken by
# another program makes websockify exit; "listening" means a LISTEN socket on that port
# among websockify's own file descriptors (from /proc: exact, no probe connection).
exec_host=${SLURMD_NODENAME:-$(hostname)}
case $VIS_LISTEN in
    hostname)
        # Not a loopback address: Debian's /etc/hosts often names the host 127.0.1.1 first,
        # where NGINX on another host cannot reach websockify.
        address=$(getent ahostsv4 "$(hostname)" | awk '$1 !~ /^127\./ { print $1; exit }')
        [ -n "$address" ] || fail "$(hostname) resolves to no IPv4 address other than loopback (VIS_LISTEN=hostname): give vis.listen the node's address"
        ;;
    *) address=$VIS_LISTEN ;;
esac

listens() {  # listens PID PORT
    hex=$(printf '%04X' "$2")
    for inode in $(awk -v p=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { print $10 }' \
            /proc/net/tcp /proc/net/tcp6 2>/dev/null); do
        ls -l "/proc/$1/fd" 2>/dev/null | grep -q "socket:\[$inode\]" && return 0
    done
    return 1
}

port=
span=$((VIS_PORT_MAX - VIS_PORT_MIN + 1))
offset=$(random "$span")
n=0
while [ $n -lt "$span" ] && [ $n -lt 40 ]; do
    p=$((VIS_PORT_MIN + (offset + n) % span))
    n=$((n + 1))
    websockify "$address:$p" --token-plugin TokenFile --token-source "$work/tokens" </dev/null >&2 2>&1 &
    ws_pid=$!
    i=0
    while [ $i -lt 100 ] && alive "$ws_pid" && ! listens "$ws_pid" "$p"; do
        sleep 0.1
        i=$((i + 1))
    done
    if alive "$ws_pid" && listens "$ws_pid" "$p"; then
        port=$p
        break
    fi
    kill -KILL "$ws_pid" 2>/dev/null
    wait "$ws_pid" 2>/dev/null
    ws_pid=
done
[ -n "$port" ] || fail "no free port for websockify on $address in $VIS_PORT_MIN..$VIS_PORT_MAX"

# 3. The session file, written whole and then renamed into place.
tmp=$session_dir/.$job_id.json.tmp
printf '{"jobId": "%s", "host": "%s", "port": %s, "display": %s, "password": "%s", "key": "%s", "execHost": "%s", "xvncPid": %s, "websockifyPid": %s, "launcherPid": %s, "started": %s}\n' \
    "$job_id" "$address" "$port" "$display" "$password" "$key" "$exec_host" "$xvnc_pid" "$ws_pid" "$$" \
    "$(date +%s)" >"$tmp" || fail "cannot write $tmp"
mv -f "$tmp" "$session" || fail "cannot write $session"
say "desktop :$display on $exec_host is ready (websockify on $address:$port)"

# 4. The command, on the desktop. Poll rather than wait for it alone: the session also
# ends when Xvnc or websockify dies. A trapped signal runs its trap once the sleep returns.
DISPLAY=:$display
export DISPLAY
/bin/sh -c "$VIS_COMMAND" </dev/null &
cmd_pid=$!
while alive "$cmd_pid" && alive "$xvnc_pid" && alive "$ws_pid"; do
    sleep 1
done
if alive "$cmd_pid"; then
    say "the desktop went away (Xvnc or websockify ended): ending the session"
    status=1
else
    wait "$cmd_pid"
    status=$?
    cmd_pid=
    say "the command ended (exit status $status): ending the session"
fi
exit "$status"
