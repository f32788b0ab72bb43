#!/usr/bin/env bash
# Installs the Debian packages the test suite and the benches start for real: Slurm + munge
# (slurmrestd and its JWT plugin for bench/slurmrestd_compare.py), OpenSSH,
# sudo, NGINX, Redis, Chromium, TigerVNC + websockify + noVNC, X clients.
# Run as root on Debian 12; elsewhere it says what is missing and exits 0 (the tests then
# skip locally, and fail under CI=true).
set -euo pipefail

PACKAGES=(
  slurm-wlm slurmrestd slurm-wlm-jwt-plugin munge
  openssh-server openssh-client sudo
  nginx redis-server
  chromium chromium-driver
  tigervnc-standalone-server tigervnc-tools websockify novnc xterm x11-apps
  procps psmisc curl openssl ca-certificates
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "system packages missing (install them as root with apt-get): ${missing[*]}" >&2
  exit 0
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
for attempt in 1 2 3; do
  if apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    # Debian starts some of these services on install; the tests start their own, on their own ports.
    for svc in nginx redis-server munge slurmctld slurmd ssh; do
      if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        systemctl stop "$svc" >/dev/null 2>&1 || true
        systemctl disable "$svc" >/dev/null 2>&1 || true
      fi
    done
    echo "system packages installed"
    exit 0
  fi
  echo "apt-get failed (attempt $attempt); retrying" >&2
  sleep 5
done
echo "could not install: ${missing[*]}" >&2
exit 1
