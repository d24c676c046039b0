#!/usr/bin/env bash
# Make sure the nginx binary is installed (Debian's package), for the tests that
# run the reverse-proxy recipe (deploy/nginx/webhook-ingest.conf) in front of the
# receiver. Only the binary: the tests start their own nginx on free ports with a
# private prefix, so no nginx service is started or needed here.
set -euo pipefail

log() { echo "ensure-nginx: $*"; }

# Debian installs it in /usr/sbin, which a non-root PATH may not hold.
if command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; then
    log "nginx is installed"
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
log "installing nginx (apt-get)"
$sudo apt-get update -qq
# The package's own service may fail to start where no init system runs (a
# container); the binary is installed all the same, and that is all we need.
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx </dev/null || true
if command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; then
    log "nginx installed"
    exit 0
fi
log "nginx could not be installed" >&2
exit 1
