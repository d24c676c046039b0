#!/usr/bin/env bash
# Make sure a Redis answers at $REDIS_URL (default redis://localhost:6379/0).
#
# If one answers, nothing is done. Otherwise a local redis-server is started on
# the URL's host and port (installed from Debian's packages first if missing),
# with its data in .run/redis/<port>, and this waits until it answers.
#
#   --with-binary   also make sure the redis-server binary is installed, even when
#                   a Redis already answers (the tests start private servers).
#   --own           the caller is about to write into this Redis (`make run`): a
#                   Redis this checkout did not start (the system's on 6379, another
#                   clone's) is refused with one line, unless ALLOW_EXISTING_REDIS=1.
#                   On a shared machine `make run` would otherwise write its jobs,
#                   its beat schedule and its queues into someone else's database.
set -euo pipefail

REDIS_URL="${REDIS_URL:-redis://localhost:6379/0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="$ROOT/.run"

# A Sentinel deployment (redis+sentinel://) is the operator's own: nothing is
# started for it, and whether its sentinels and master answer is what
# `webhook-ingest check-config` (run next by `make run`) reports.
case "$REDIS_URL" in
    redis+sentinel://* | rediss+sentinel://*)
        echo "ensure-redis: REDIS_URL names Redis Sentinel; not starting a Redis (check-config asks the sentinels)"
        exit 0
        ;;
esac

with_binary=0
own=0
case "${1:-}" in
    --with-binary) with_binary=1 ;;
    --own) own=1 ;;
    "") ;;
    *) echo "usage: $0 [--with-binary | --own]" >&2; exit 2 ;;
esac

log() { echo "ensure-redis: $*"; }

apt_updated=0
apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    log "installing $* (apt-get)"
    if [ "$apt_updated" -eq 0 ]; then
        $sudo apt-get update -qq
        apt_updated=1
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" </dev/null
}

# The URL's parts, one per line. python3 (here anyway: the service is Python)
# parses IPv6 hosts and percent-escapes, which sed would get wrong.
{ read -r scheme; read -r host; read -r port; read -r user; read -r password; } < <(
    python3 -c '
import sys
from urllib.parse import unquote, urlsplit
u = urlsplit(sys.argv[1])
print(u.scheme, u.hostname or "localhost", u.port or 6379,
      unquote(u.username or ""), unquote(u.password or ""), sep="\n")
' "$REDIS_URL"
)
case "$scheme" in
    redis | rediss) ;;
    *) log "REDIS_URL must be redis://host:port/db (or rediss://), got $scheme://..." >&2; exit 2 ;;
esac
where="$host:$port"

answers() {
    # Not `redis-cli -u`: it sends an empty user name for redis://:password@host
    # and fails where redis-py succeeds. REDISCLI_AUTH keeps the password out of ps.
    opts=(-h "$host" -p "$port")
    if [ "$scheme" = "rediss" ]; then opts+=(--tls); fi
    if [ -n "$user" ]; then opts+=(--user "$user"); fi
    if [ -n "$password" ]; then export REDISCLI_AUTH="$password"; fi
    # timeout: a host that drops packets must not hang `make`.
    [ "$(timeout 3 redis-cli "${opts[@]}" ping 2>/dev/null)" = "PONG" ]
}

# True when the server answering is the one this script started here: its
# process id is the one in our pid file (a stale pid file names another process).
started_here() {
    local pidfile="$RUN_DIR/redis-$port.pid" pid server_pid
    [ -f "$pidfile" ] || return 1
    pid="$(cat "$pidfile")"
    server_pid="$(timeout 3 redis-cli "${opts[@]}" info server 2>/dev/null | tr -d '\r' | sed -n 's/^process_id://p')"
    [ -n "$pid" ] && [ "$pid" = "$server_pid" ]
}

# Debian's redis-server depends on redis-tools, which brings redis-cli.
if ! command -v redis-cli >/dev/null; then
    if command -v redis-server >/dev/null; then apt_install redis-tools; else apt_install redis-server; fi
fi
if [ "$with_binary" -eq 1 ] && ! command -v redis-server >/dev/null; then
    apt_install redis-server
fi

# With --own, a server answering that this checkout did not start stops here.
refuse_foreign() {
    if [ "$own" -eq 1 ] && ! started_here && [ "${ALLOW_EXISTING_REDIS:-0}" != "1" ]; then
        log "a Redis this checkout did not start answers at $where; set REDIS_URL to a free port (e.g. REDIS_URL=redis://127.0.0.1:6380/0) to start one, or ALLOW_EXISTING_REDIS=1 to write into this one" >&2
        exit 1
    fi
}

if answers; then
    refuse_foreign
    log "Redis answers at $where"
    exit 0
fi

if [ "$scheme" != "redis" ]; then
    log "nothing answers at $where, and only a plain redis:// server can be started here" >&2
    exit 1
fi
case "$host" in
    localhost | 127.* | ::1 | 0.0.0.0) ;;
    *) log "nothing answers at $where, which is not this machine: start Redis there" >&2; exit 1 ;;
esac

if ! command -v redis-server >/dev/null; then
    apt_install redis-server
    # The package may have started its own service on the default port.
    if answers; then
        refuse_foreign
        log "Redis answers at $where (started by the package)"
        exit 0
    fi
fi

# One data dir per port: two servers sharing an append-only file would corrupt it.
datadir="$RUN_DIR/redis/$port"
logfile="$RUN_DIR/redis-$port.log"
mkdir -p "$datadir"
bind="$host"
if [ "$host" = "localhost" ]; then bind=127.0.0.1; fi
args=(--daemonize yes --bind "$bind" --port "$port"
    --save "" --appendonly yes --dir "$datadir"
    --logfile "$logfile" --pidfile "$RUN_DIR/redis-$port.pid")
# A URL with a password expects a server that asks for it.
if [ -n "$password" ] && [ "${user:-default}" = "default" ]; then args+=(--requirepass "$password"); fi

log "starting redis-server on $bind:$port (data: ${datadir#"$ROOT"/}, log: ${logfile#"$ROOT"/})"
redis-server "${args[@]}"

for _ in $(seq 50); do
    if answers; then
        log "Redis answers at $where; stop it with: redis-cli -h $bind -p $port shutdown"
        exit 0
    fi
    sleep 0.2
done

log "redis-server did not answer at $where within 10 s; its log says:" >&2
tail -n 20 "$logfile" >&2 || true
exit 1
