#!/bin/bash
# Install HPC Gateway from this checkout on a head node (or any host that can reach the
# scheduler), as the seed's `installaiprestd` does.
#
#   deploy/install.sh [--prefix DIR] [--config FILE] [--plugins "mock slurm_ssm aip"]
#                     [--user USER] [--no-start] [--unit-dir DIR] [--python PYTHON]
#                     [--pip-args "ARGS"]
#   deploy/install.sh --uninstall [--purge] [--prefix DIR]
#
# Installs into PREFIX (default /opt/hpc-gateway):
#   venv/                 the gateway and the chosen plugins (pip, from this checkout)
#   etc/gateway.yaml      the configuration (--config FILE, else config/gateway.yaml), with
#                         work_dir and secret_file under PREFIX; an existing one is kept
#   etc/secret.key        the token signing secret (0600; replicas behind NGINX share it)
#   etc/gunicorn.conf.py, etc/hpc-gateway.env
#   bin/hpc-gateway-server (starts gunicorn), bin/hpc-gateway (the admin CLI)
#   var/                  work_dir: sessions, users file, initial-admin-password, mock jobs
#   log/                  hpc-gateway.log.<hostname> (and journald, under systemd)
# and the systemd unit hpc-gateway.service (in --unit-dir, default /etc/systemd/system),
# enabled and started when systemd runs this host (PID 1) unless --no-start. Otherwise it
# prints the command that starts the gateway.
#
# USER (default: the system account hpc-gateway, created if missing, when run as root;
# otherwise the invoking user) runs the service and owns var/, log/ and the secret. Use
# --user root for plugins that run jobs as the logged-in user (run_as: sudo).
#
# PREFIX must be new, empty or an earlier installation. --uninstall removes what the
# installer installed (venv, its two commands, unit, gunicorn config) and keeps the
# configuration, environment file, secret, state and logs; with --purge it removes PREFIX
# entirely and the account if the installer created it. Needs only PyPI for dependencies.
set -euo pipefail

NAME=hpc-gateway
PREFIX=/opt/hpc-gateway
CONFIG=""
PLUGINS="mock"
SERVICE_USER=""
UNINSTALL=0
PURGE=0
START=1
UNIT_DIR=/etc/systemd/system
PYTHON=python3
PIP_ARGS=""
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { printf '%s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,31p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
    case $1 in
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
        --config) CONFIG=${2:?--config needs a file}; shift 2 ;;
        --plugins) PLUGINS=${2?--plugins needs a list}; shift 2 ;;
        --user) SERVICE_USER=${2:?--user needs a name}; shift 2 ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        --no-start) START=0; shift ;;
        --unit-dir) UNIT_DIR=${2:?--unit-dir needs a directory}; shift 2 ;;
        --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
        --pip-args) PIP_ARGS=${2?--pip-args needs arguments}; shift 2 ;;
        -h|--help) usage 0 ;;
        *) printf 'install.sh: unknown option %s\n\n' "$1" >&2; usage 2 >&2 ;;
    esac
done

# Paths land in an environment file and a unit file: keep them plain.
case $PREFIX in
    /*) ;;
    *) PREFIX=$(cd "$(dirname "$PREFIX")" 2>/dev/null && pwd)/$(basename "$PREFIX") || die "bad --prefix" ;;
esac
PREFIX=${PREFIX%/}
case $PREFIX in
    ''|/|*[!A-Za-z0-9/._+-]*) die "--prefix must be an absolute path of letters, digits and . _ + - (got '$PREFIX')" ;;
esac
MARKER=$PREFIX/.hpc-gateway-install

systemd_running() {
    # sd_booted(): systemd is PID 1 when /run/systemd/system exists.
    [ -d /run/systemd/system ] && [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]
}

marker_get() { [ -f "$MARKER" ] || return 0; sed -n "s/^$1=//p" "$MARKER" | tail -n 1; }

# ------------------------------------------------------------------------------ uninstall
if [ $UNINSTALL = 1 ]; then
    [ -f "$MARKER" ] || die "$PREFIX holds no HPC Gateway installation (no $MARKER)"
    unit=$(marker_get unit)
    created_user=$(marker_get created_user)
    if [ -n "$unit" ] && [ -f "$unit" ]; then
        if systemd_running && [ "$(dirname "$unit")" = /etc/systemd/system ]; then
            systemctl disable --now "$NAME.service" || true
        fi
        rm -f "$unit"
        systemd_running && [ "$(dirname "$unit")" = /etc/systemd/system ] && systemctl daemon-reload || true
        say "removed $unit"
    fi
    # Only what the installer wrote: bin/ and share/ may hold an operator's own files.
    rm -rf "$PREFIX/venv" "$PREFIX/venv.previous" "$PREFIX/venv.discard"
    rm -f "$PREFIX/bin/hpc-gateway-server" "$PREFIX/bin/hpc-gateway" "$PREFIX/share/doc/deploy.md" \
        "$PREFIX/etc/gunicorn.conf.py"
    rmdir "$PREFIX/share/doc" "$PREFIX/share" "$PREFIX/bin" 2>/dev/null || true
    if [ $PURGE = 1 ]; then
        rm -rf "$PREFIX"
        if [ -n "$created_user" ] && id "$created_user" >/dev/null 2>&1; then
            userdel "$created_user" && say "removed account $created_user"
        fi
        say "purged $PREFIX"
    else
        say "uninstalled from $PREFIX; kept etc/gateway.yaml, etc/hpc-gateway.env, etc/secret.key, var/ and log/ (--purge removes them)"
    fi
    exit 0
fi

# ------------------------------------------------------------------------------ checks
for plugin in $PLUGINS; do
    if [ ! -f "$SRC/plugins/$plugin/setup.cfg" ] && [ ! -f "$SRC/plugins/$plugin/pyproject.toml" ]; then
        die "no plugin '$plugin' in $SRC/plugins (available: $(cd "$SRC/plugins" && ls -d */ | tr -d / | tr '\n' ' '))"
    fi
done
[ -z "$CONFIG" ] || [ -r "$CONFIG" ] || die "cannot read --config $CONFIG"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "$PYTHON is older than Python 3.10"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || die "$PYTHON cannot create virtual environments (Debian: apt-get install python3-venv)"

IS_ROOT=0; [ "$(id -u)" = 0 ] && IS_ROOT=1
# --uninstall --purge removes PREFIX whole: never take over a directory that holds
# something else (--prefix /usr/local, ~/.local). Checked before any account is created.
if [ ! -f "$MARKER" ] && [ -d "$PREFIX" ] && [ -n "$(ls -A "$PREFIX")" ]; then
    die "$PREFIX is not empty and holds no HPC Gateway installation: give --prefix a new or empty directory"
fi
CREATED_USER=$(marker_get created_user)
if [ -z "$SERVICE_USER" ]; then
    if [ $IS_ROOT = 1 ]; then SERVICE_USER=$NAME; else SERVICE_USER=$(id -un); fi
fi
if ! id "$SERVICE_USER" >/dev/null 2>&1; then
    [ $IS_ROOT = 1 ] || die "account $SERVICE_USER does not exist (run as root to create it)"
    useradd --system --user-group --no-create-home --home-dir "$PREFIX/var" \
        --shell /usr/sbin/nologin --comment "HPC Gateway" "$SERVICE_USER"
    CREATED_USER=$SERVICE_USER
    say "created system account $SERVICE_USER"
elif [ $IS_ROOT = 0 ] && [ "$SERVICE_USER" != "$(id -un)" ]; then
    die "only root can install for another account ($SERVICE_USER)"
fi
SERVICE_GROUP=$(id -gn "$SERVICE_USER")

as_service_user() {
    if [ $IS_ROOT = 1 ] && [ "$SERVICE_USER" != root ]; then
        runuser -u "$SERVICE_USER" -- "$@"
    else
        "$@"
    fi
}

# ------------------------------------------------------------------------------ files
umask 022
mkdir -p "$PREFIX/etc" "$PREFIX/var" "$PREFIX/log" "$PREFIX/bin" "$PREFIX/share/doc"
{
    echo "# written by deploy/install.sh; read by --uninstall"
    echo "source=$SRC"
    echo "user=$SERVICE_USER"
    echo "created_user=$CREATED_USER"
    echo "unit=$UNIT_DIR/$NAME.service"
} > "$MARKER"

STAGE=""
VENV=$PREFIX/venv
VENV_ASIDE=""
on_exit() {
    local rc=$?
    [ -z "$STAGE" ] || rm -rf "$STAGE"
    # A rebuild that did not finish: the previous venv goes back (the installation and a
    # service that restarts keep working).
    if [ -n "$VENV_ASIDE" ] && [ -d "$VENV_ASIDE" ]; then
        rm -rf "$VENV" && mv "$VENV_ASIDE" "$VENV" && printf 'install.sh: put the previous %s back\n' "$VENV" >&2
    fi
    exit "$rc"
}
trap on_exit EXIT

# Which interpreter a Python is, as it answers itself: the file behind it (links resolved),
# its installation and its exact build. A venv's python answers for the interpreter it was
# made with; another name for the same interpreter (python3, python3.11, a pyenv shim)
# answers the same. (pyvenv.cfg says less: its home is a directory several interpreters may
# share, e.g. /usr/bin, and its version goes stale when the interpreter is updated in place.)
py_identity() {
    "$1" -I -c 'import os, sys; print(f"{os.path.realpath(sys.executable)} (Python {sys.version}; prefix {os.path.realpath(sys.base_prefix)})".replace("\n", " "))' 2>/dev/null
}

say "installing the gateway and plugins ($PLUGINS) into $VENV"
if [ -d "$VENV.previous" ] && [ ! -L "$VENV.previous" ]; then
    # An earlier run was killed while it rebuilt (its EXIT trap never ran): venv.previous is
    # the venv that worked, $VENV what was half built. The working one goes back first, then
    # this run decides as any other.
    say "putting back $VENV.previous, left by an installer stopped while it rebuilt $VENV"
    rm -rf "$VENV"
    mv "$VENV.previous" "$VENV"
fi
if [ -e "$VENV" ] || [ -L "$VENV" ]; then
    want=$(py_identity "$PYTHON") || die "$PYTHON does not run"
    have=$(py_identity "$VENV/bin/python") || have=""
    # pip must import too: when the interpreter a venv names moves to another minor version
    # in place (/usr/bin/python3 -> 3.12), the venv's python is the new one, and its
    # site-packages (lib/python3.11) are not its own.
    if [ "$have" != "$want" ] || ! "$VENV/bin/python" -I -c 'import pip' >/dev/null 2>&1; then
        # Another interpreter (or a broken venv): a new venv, made where it will run (a venv
        # is not relocatable: its scripts name their python by path). The old one is renamed
        # aside, not removed: a running service keeps the files it has open, and if the
        # rebuild fails the old venv is put back. The service runs the new one once restarted
        # (below, where systemd runs it).
        if [ -z "$have" ]; then
            say "rebuilding $VENV: its python does not run or is missing"
        elif [ "$have" != "$want" ]; then
            say "rebuilding $VENV for --python $PYTHON: it runs $have, and $PYTHON is $want"
        else
            say "rebuilding $VENV: its python cannot import pip (an interpreter updated in place?)"
        fi
        rm -rf "$VENV.previous"             # a link or file planted there (a directory went back above)
        mv "$VENV" "$VENV.previous"
        VENV_ASIDE=$VENV.previous
    fi
fi
[ -e "$VENV" ] || "$PYTHON" -m venv "$VENV"
if ! as_service_user "$VENV/bin/python" -c '' 2>/dev/null; then
    die "$SERVICE_USER cannot run $VENV/bin/python (it is $(readlink -f "$VENV/bin/python")): give --python an interpreter every account may run (e.g. /usr/bin/python3) and a --prefix it may reach"
fi
# Build from a copy: pip builds in the source tree, and the checkout should stay clean.
STAGE=$(mktemp -d)
( cd "$SRC" && tar --exclude=__pycache__ --exclude='*.egg-info' --exclude=build -cf - \
    setup.cfg pyproject.toml README.md gateway $(for p in $PLUGINS; do printf 'plugins/%s ' "$p"; done) \
    $( [ -f MANIFEST.in ] && echo MANIFEST.in ) ) | tar -C "$STAGE" -xf -
targets=("$STAGE")
for plugin in $PLUGINS; do targets+=("$STAGE/plugins/$plugin"); done
# shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input $PIP_ARGS "${targets[@]}"
# The previous venv stays aside until the configuration has loaded in the new one (below).

# Configuration: an existing one is the operator's and is kept.
CONF=$PREFIX/etc/gateway.yaml
if [ -f "$CONF" ]; then
    say "keeping the existing $CONF"
else
    if [ -n "$CONFIG" ]; then
        cp "$CONFIG" "$CONF"; mode=fill
    elif [ -f "$SRC/config/gateway.yaml" ]; then
        cp "$SRC/config/gateway.yaml" "$CONF"; mode=set
    else
        printf 'scheduler:\n  backend: mock\n' > "$CONF"; mode=set
    fi
    # work_dir and secret_file under the prefix: set in the documented file; in a file given
    # with --config only where it says nothing.
    "$PREFIX/venv/bin/python" - "$CONF" "$mode" "work_dir=$PREFIX/var" "secret_file=$PREFIX/etc/secret.key" <<'PY'
import json, re, sys
import yaml
path, mode, *pairs = sys.argv[1:]
text = open(path, encoding="utf-8").read()
data = yaml.safe_load(text) or {}
if not isinstance(data, dict):
    sys.exit(f"{path}: the configuration must be a mapping")
for pair in pairs:
    key, value = pair.split("=", 1)
    if mode == "fill" and data.get(key):
        continue
    line = f"{key}: {json.dumps(value)}"
    for pattern in (rf"^{key}:.*$", rf"^#\s?{key}:\s.*$"):
        if re.search(pattern, text, re.M):
            text = re.sub(pattern, lambda _: line, text, count=1, flags=re.M)
            break
    else:
        text = text.rstrip("\n") + f"\n{line}\n"
    if (yaml.safe_load(text) or {}).get(key) != value:
        sys.exit(f"{path}: could not set {key}")
open(path, "w", encoding="utf-8").write(text)
PY
    say "wrote $CONF"
fi

# The signing secret (0600, the service account's): generated once, kept on reinstall.
SECRET=$("$PREFIX/venv/bin/python" -c 'import sys; from gateway.config import load_config; print(load_config(sys.argv[1])["secret_file"])' "$CONF")
# Often in a directory the service account owns (<work_dir>/secret.key), where that account
# could put a link at any moment: root's writes, chmod and chown through it would give the
# account /etc/shadow. So root walks the path one directory at a time (following a link
# only if root owns it: the account cannot make one), creates the file (O_EXCL) or opens it
# without following a link, and checks, writes, chmods and chowns it through that
# descriptor, never by its name twice. A link of anyone else's, a hard link (a second name
# for someone else's file) or anything but a regular file is refused.
OWNER=""
[ $IS_ROOT = 1 ] && OWNER="$SERVICE_USER:$SERVICE_GROUP"
"$PREFIX/venv/bin/python" - "$SECRET" "$OWNER" <<'PY' || die "refusing the secret file $SECRET (see above)"
import errno, grp, os, pwd, secrets, stat, sys
path, owner = os.path.abspath(sys.argv[1]), sys.argv[2]


def refuse(why):
    sys.exit(f"install.sh: {path}: {why}: remove it, or point secret_file at the file itself")


*dirs, name = path.split("/")[1:]
dfd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
for part in dirs:
    try:
        st = os.stat(part, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        os.mkdir(part, 0o755, dir_fd=dfd)                 # as mkdir -p would (umask applies)
        st = os.stat(part, dir_fd=dfd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode) and st.st_uid != 0:
        refuse(f"its directory {part} is a symbolic link of another account's")
    nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
    os.close(dfd)
    dfd = nfd
flags = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
try:
    fd, new = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | flags, 0o600, dir_fd=dfd), True
except FileExistsError:
    try:
        fd, new = os.open(name, os.O_RDONLY | flags, dir_fd=dfd), False
    except OSError as e:
        refuse("it is a symbolic link" if e.errno == errno.ELOOP else e.strerror)
st = os.fstat(fd)
if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
    refuse(f"not a regular file with one name (links: {st.st_nlink})")
if not new and st.st_size == 0:
    # Empty: write it through a second descriptor, which must be the same file.
    wfd = os.open(name, os.O_WRONLY | flags, dir_fd=dfd)
    wst = os.fstat(wfd)
    if (wst.st_dev, wst.st_ino) != (st.st_dev, st.st_ino):
        refuse("it changed while being checked")
    os.close(fd)
    fd, new = wfd, True
if new:
    os.ftruncate(fd, 0)
    os.write(fd, (secrets.token_urlsafe(48) + "\n").encode())
    print(f"wrote a new secret to {path} (copy it to every replica behind the same NGINX)")
os.fchmod(fd, 0o600)
if owner:
    user, group = owner.split(":", 1)
    os.fchown(fd, pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid)
os.close(fd)
os.close(dfd)
PY

cp "$SRC/deploy/gunicorn.conf.py" "$PREFIX/etc/gunicorn.conf.py"
[ -f "$SRC/docs/deploy.md" ] && cp "$SRC/docs/deploy.md" "$PREFIX/share/doc/deploy.md"
ENVFILE=$PREFIX/etc/hpc-gateway.env
if [ ! -f "$ENVFILE" ]; then
    cat > "$ENVFILE" <<EOF
# Environment of the HPC Gateway service (systemd EnvironmentFile and bin/hpc-gateway-server).
GATEWAY_CONFIG=$CONF
GATEWAY_WORK_DIR=$PREFIX/var
GATEWAY_LOG_DIR=$PREFIX/log
# GATEWAY_WORKERS=4
# GATEWAY_THREADS=32
EOF
fi

cat > "$PREFIX/bin/hpc-gateway-server" <<EOF
#!/bin/sh
# Start HPC Gateway in the foreground (what the systemd unit runs).
set -a; . "$ENVFILE"; set +a
exec "$PREFIX/venv/bin/gunicorn" --config "$PREFIX/etc/gunicorn.conf.py" "\$@"
EOF
cat > "$PREFIX/bin/hpc-gateway" <<EOF
#!/bin/sh
# The admin CLI with this installation's configuration: hpc-gateway users add NAME ...
# Run by root, it acts as the service account $SERVICE_USER: the users file and the session
# store it rewrites must stay the service's (a root-owned 0600 users file locks everyone out).
set -a; . "$ENVFILE"; set +a
if [ "\$(id -u)" = 0 ] && [ "$SERVICE_USER" != root ]; then
    exec runuser -u "$SERVICE_USER" -- "$PREFIX/venv/bin/hpc-gateway" "\$@"
fi
exec "$PREFIX/venv/bin/hpc-gateway" "\$@"
EOF
chmod 755 "$PREFIX/bin/hpc-gateway-server" "$PREFIX/bin/hpc-gateway"

# Ownership: the service account owns its state, logs and secret; root keeps the code.
if [ $IS_ROOT = 1 ]; then
    if [ "$(cat /proc/sys/fs/protected_hardlinks 2>/dev/null)" = 1 ]; then
        # The account can hard-link no file it neither owns nor may read and write, so every
        # name in its tree is a file of its own or one root put there. chown -R is -P: no
        # symbolic link is followed (each changes owner itself), and it opens no directory
        # through one.
        chown -R "$SERVICE_USER:$SERVICE_GROUP" "$PREFIX/var" "$PREFIX/log"
    else
        # fs.protected_hardlinks is not 1: the account can hard-link any file of root's on
        # the same file system into its tree (/etc/shadow; and once passwd has renamed a
        # new shadow into place, the old one has that name only), and chown -R would give it
        # away. Only the two directories change owner; what in them is not the account's is
        # named, for an administrator to look at.
        chown -h "$SERVICE_USER:$SERVICE_GROUP" "$PREFIX/var" "$PREFIX/log"
        others=$(find -P "$PREFIX/var" "$PREFIX/log" -mindepth 1 ! -user "$SERVICE_USER" -print 2>/dev/null | head -n 20)
        if [ -n "$others" ]; then
            {
                printf 'install.sh: warning: fs.protected_hardlinks is not 1, so what in %s and %s is not %s'"'"'s keeps its owner (a hard link there could be any file of root'"'"'s); check, then chown it yourself:\n' \
                    "$PREFIX/var" "$PREFIX/log" "$SERVICE_USER"
                printf '%s\n' "$others" | sed 's/^/  /'
            } >&2
        fi
    fi
    chown "root:$SERVICE_GROUP" "$CONF" "$ENVFILE"
    chmod 640 "$CONF" "$ENVFILE"
    chmod 750 "$PREFIX/var" "$PREFIX/log"
    chmod 755 "$PREFIX" "$PREFIX/etc"
else
    chmod 600 "$CONF"
    chmod 700 "$PREFIX/var"
fi

# work_dir comes from the configuration (a --config file may name its own, e.g.
# /var/lib/hpc-gateway): the service account must be able to write it, or every start fails.
WORK=$("$PREFIX/venv/bin/python" -c 'import sys; from gateway.config import load_config; print(load_config(sys.argv[1])["work_dir"])' "$CONF")
if [ "$WORK" != "$PREFIX/var" ]; then
    if [ ! -e "$WORK" ]; then
        mkdir -p "$WORK"
        chmod 750 "$WORK"
        if [ $IS_ROOT = 1 ]; then chown "$SERVICE_USER:$SERVICE_GROUP" "$WORK"; fi
        say "created work_dir $WORK"
    fi
    if ! as_service_user test -d "$WORK" -a -w "$WORK" -a -x "$WORK"; then
        die "work_dir $WORK (from $CONF) is not a directory $SERVICE_USER may write: give it to that account, or change work_dir"
    fi
fi

# The configuration must load, and its scheduler plugin with it, as the service will.
if ! as_service_user "$PREFIX/bin/hpc-gateway" check-config; then
    die "the configuration in $CONF does not load (see above); fix it and run the installer again"
fi
# The new venv is complete and loads the configuration: the previous one goes, renamed
# first (a run killed while rm works leaves venv.discard, never a half-deleted venv.previous
# that the next run would put back).
VENV_ASIDE=""
if [ -e "$VENV.previous" ] || [ -L "$VENV.previous" ]; then
    rm -rf "$VENV.discard"
    mv "$VENV.previous" "$VENV.discard"
fi
rm -rf "$VENV.discard"

# ------------------------------------------------------------------------------ systemd
UNIT_WRITTEN=1
if [ $IS_ROOT = 0 ] && [ "$UNIT_DIR" = /etc/systemd/system ] && [ ! -w "$UNIT_DIR" ]; then
    UNIT_WRITTEN=0          # a system unit needs root; everything else is installed
    say "no systemd unit written: $UNIT_DIR needs root (give --unit-dir DIR for a copy to install by hand)"
else
    mkdir -p "$UNIT_DIR"
    sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@USER@|$SERVICE_USER|g" -e "s|@GROUP@|$SERVICE_GROUP|g" \
        "$SRC/deploy/hpc-gateway.service" > "$UNIT_DIR/$NAME.service"
    chmod 644 "$UNIT_DIR/$NAME.service"
    say "installed the systemd unit $UNIT_DIR/$NAME.service"
fi

say "On first start the gateway creates the administrator 'admin' with a random password in"
say "    $WORK/initial-admin-password"
say "Add users with: $PREFIX/bin/hpc-gateway users add NAME"
if [ $UNIT_WRITTEN = 1 ] && systemd_running && [ "$UNIT_DIR" = /etc/systemd/system ] && [ $START = 1 ]; then
    systemctl daemon-reload
    if systemctl is-active --quiet "$NAME.service"; then
        # An upgrade: enable --now leaves the old code running (a later reload or replaced
        # worker would then mix both).
        systemctl enable "$NAME.service"
        systemctl restart "$NAME.service"
    else
        systemctl enable --now "$NAME.service"
    fi
    systemctl --no-pager --lines=5 status "$NAME.service" || true
    say "HPC Gateway is running: systemctl status $NAME; logs: journalctl -u $NAME and $PREFIX/log/"
else
    if [ $START = 0 ]; then
        why="--no-start was given"
    elif [ $UNIT_WRITTEN = 0 ]; then
        why="no systemd unit without root"
    elif systemd_running; then
        why="the unit went to $UNIT_DIR, not /etc/systemd/system"
    else
        why="systemd is not running here (PID 1 is $(cat /proc/1/comm 2>/dev/null || echo unknown))"
    fi
    if [ $IS_ROOT = 1 ] && [ "$SERVICE_USER" != root ]; then
        cmd="runuser -u $SERVICE_USER -- $PREFIX/bin/hpc-gateway-server"
    else
        cmd="$PREFIX/bin/hpc-gateway-server"
    fi
    say "HPC Gateway is installed but not started ($why). Start it with:"
    say "    $cmd"
    if [ $UNIT_WRITTEN = 1 ]; then
        say "(or, where systemd runs: systemctl daemon-reload && systemctl enable --now $NAME)"
    fi
fi
