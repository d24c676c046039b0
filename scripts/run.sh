#!/usr/bin/env bash
# `make run`: every process of the Procfile on this machine, with a Redis of its own.
#
# 1. .env, if present (start from .env.example): each KEY=value line sets KEY
#    unless the environment already has it, so `PORT=9000 make run` and
#    `make run PORT=9000` still win. A second terminal gets the same values with
#    `set -a; . ./.env; set +a`.
# 2. the defaults of the variables `make run` itself needs.
# 3. scripts/ensure-redis.sh --own: a Redis at REDIS_URL that this checkout
#    started, or starts one; one it did not start is refused (ALLOW_EXISTING_REDIS=1).
# 4. webhook-ingest check-config, then honcho. honcho is given no env file of
#    its own: it would let .env override the environment, the other way round.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-$ROOT/.venv}"

if [ -f .env ]; then
    declare -A from_file=()
    while IFS= read -r line || [ -n "$line" ]; do
        line="${line#"${line%%[![:space:]]*}"}"  # leading blanks
        line="${line#export }"
        case "$line" in "" | "#"*) continue ;; esac
        key="${line%%=*}"
        value="${line#*=}"
        if ! [[ "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || [ "$key" = "$line" ]; then
            echo "run: .env: not KEY=value: ${key:0:40}" >&2
            exit 2
        fi
        # One pair of surrounding quotes is the value's, as in the shell.
        case "$value" in
            \"*\") value="${value:1:${#value}-2}" ;;
            \'*\') value="${value:1:${#value}-2}" ;;
        esac
        # A later line of .env overrides an earlier one, as `. ./.env` does.
        if [ -z "${!key+set}" ] || [ -n "${from_file[$key]:-}" ]; then
            export "$key=$value"
            from_file[$key]=1
        fi
    done < .env
    echo "run: read .env (the environment wins over it)"
fi

export PORT="${PORT:-8000}"
# With no REDIS_URL at all, a Redis of make run's own on 6380 (started below if
# nothing answers there), never the system's on 6379: on a shared machine the
# default would otherwise write jobs, queues and the beat schedule into another
# service's database 0.
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6380/0}"
export FLOWER_PORT="${FLOWER_PORT:-5555}"
# On one machine the receiver listens on loopback unless told otherwise
# (BIND_ADDRESS=0.0.0.0); the service's own default is every interface.
export BIND_ADDRESS="${BIND_ADDRESS:-127.0.0.1}"

scripts/ensure-redis.sh --own
"$VENV/bin/webhook-ingest" check-config
PATH="$VENV/bin:$PATH" exec "$VENV/bin/honcho" start -f Procfile --env /dev/null
