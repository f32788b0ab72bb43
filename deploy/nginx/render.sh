#!/bin/sh
# Render an HPC Gateway NGINX template: fill its ${HPCGW_...} placeholders (and nothing else:
# NGINX's own $variables are left alone) and print the result.
#
#   render.sh TEMPLATE --replica HOST:PORT [--replica HOST:PORT ...] [--listen [ADDR:]PORT]
#             [--cert FILE --key FILE] [--max-fails N] [--fail-timeout 10s] [--read-timeout 120s]
#
# --listen defaults to 18088 (18443 for a template that uses a certificate). The read
# timeout must stay above the gateway's max_wait_seconds (the longest long poll).
set -eu

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "render.sh: $*" >&2; exit 2; }

[ $# -ge 1 ] || usage
template=$1; shift
[ -r "$template" ] || die "cannot read template $template"
command -v envsubst >/dev/null 2>&1 || die "envsubst not found (Debian: apt-get install gettext-base)"

replicas="" listen="" cert="" key="" max_fails=1 fail_timeout=10s read_timeout=120s
while [ $# -gt 0 ]; do
    case $1 in
        --replica) [ $# -ge 2 ] || usage; replicas="$replicas $2"; shift 2 ;;
        --listen) [ $# -ge 2 ] || usage; listen=$2; shift 2 ;;
        --cert) [ $# -ge 2 ] || usage; cert=$2; shift 2 ;;
        --key) [ $# -ge 2 ] || usage; key=$2; shift 2 ;;
        --max-fails) [ $# -ge 2 ] || usage; max_fails=$2; shift 2 ;;
        --fail-timeout) [ $# -ge 2 ] || usage; fail_timeout=$2; shift 2 ;;
        --read-timeout) [ $# -ge 2 ] || usage; read_timeout=$2; shift 2 ;;
        -h|--help) usage ;;
        *) die "unknown option $1" ;;
    esac
done

[ -n "$replicas" ] || die "give at least one --replica HOST:PORT"
# Values land inside NGINX directives: allow only what an address, a path or a time can hold.
for value in $replicas $listen $max_fails $fail_timeout $read_timeout; do
    case $value in *[!A-Za-z0-9.:_\[\]-]*) die "unexpected character in '$value'" ;; esac
done
for value in "$cert" "$key"; do
    case $value in *[!A-Za-z0-9./_+@-]*) die "unexpected character in path '$value'" ;; esac
done
case $max_fails in ''|*[!0-9]*) die "--max-fails needs a number" ;; esac

uses_cert=no
grep -q 'HPCGW_CERT' "$template" && uses_cert=yes
if [ $uses_cert = yes ]; then
    [ -n "$cert" ] && [ -n "$key" ] || die "this template terminates TLS: give --cert FILE and --key FILE"
    [ -n "$listen" ] || listen=18443
else
    [ -n "$listen" ] || listen=18088
fi

servers=""
for r in $replicas; do
    line="    server $r max_fails=$max_fails fail_timeout=$fail_timeout;"
    servers=${servers:+$servers
}$line
done

HPCGW_UPSTREAM_SERVERS=$servers HPCGW_LISTEN=$listen HPCGW_CERT=$cert HPCGW_KEY=$key \
HPCGW_MAX_FAILS=$max_fails HPCGW_FAIL_TIMEOUT=$fail_timeout HPCGW_READ_TIMEOUT=$read_timeout \
    envsubst '${HPCGW_UPSTREAM_SERVERS} ${HPCGW_LISTEN} ${HPCGW_CERT} ${HPCGW_KEY} ${HPCGW_MAX_FAILS} ${HPCGW_FAIL_TIMEOUT} ${HPCGW_READ_TIMEOUT}' \
    < "$template"
