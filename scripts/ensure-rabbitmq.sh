#!/usr/bin/env bash
# Make sure a RabbitMQ answers at 127.0.0.1:5672 and `rabbitmqctl` can manage it
# (the fault suite gives each test a virtual host of its own).
#
# If it answers, nothing is done. Otherwise rabbitmq-server is installed from
# Debian's packages when missing, started, and this waits until it answers.
set -euo pipefail

log() { echo "ensure-rabbitmq: $*"; }

answers() {
    timeout 20 rabbitmqctl -q status >/dev/null 2>&1 \
        && python3 -c 'import socket; socket.create_connection(("127.0.0.1", 5672), 2).close()' 2>/dev/null
}

if command -v rabbitmqctl >/dev/null && answers; then
    log "RabbitMQ answers at 127.0.0.1:5672"
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
if ! command -v rabbitmq-server >/dev/null; then
    log "installing rabbitmq-server (apt-get)"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server </dev/null
fi

log "starting rabbitmq-server"
$sudo service rabbitmq-server start >/dev/null 2>&1 || $sudo rabbitmq-server -detached
for _ in $(seq 60); do
    if answers; then
        log "RabbitMQ answers at 127.0.0.1:5672"
        exit 0
    fi
    sleep 1
done
log "RabbitMQ did not answer within 60 s" >&2
exit 1
