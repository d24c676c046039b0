#!/usr/bin/env bash
# Make sure promtool is at .venv/bin/promtool, for the tests that run
# `promtool check rules` and `promtool test rules` on deploy/prometheus/.
#
# promtool comes from Debian's `prometheus` package, through apt. Only the one
# binary is taken out of the package (apt-get download + dpkg-deb), not the
# package installed: installing it would add ~96 MB, a dozen JavaScript
# packages for its web UI, and a Prometheus server that the package's scripts
# start where an init system runs. promtool is a self-contained Go program, so
# the extracted binary runs as it is. Usage: scripts/ensure-promtool.sh [DIR]
set -euo pipefail

log() { echo "ensure-promtool: $*"; }

dest="${1:-.venv/bin}"
if [ -x "$dest/promtool" ]; then
    log "promtool is installed ($dest/promtool)"
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
log "fetching Debian's prometheus package (apt-get download) for its promtool"
if ! (cd "$work" && apt-get download -qq prometheus) 2>/dev/null; then
    # no package lists yet, or stale ones
    $sudo apt-get update -qq
    (cd "$work" && apt-get download -qq prometheus)
fi
mkdir -p "$dest"
dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb | tar -x -C "$work" ./usr/bin/promtool
install -m 0755 "$work/usr/bin/promtool" "$dest/promtool"
"$dest/promtool" --version 2>&1 | head -n 1
log "promtool installed at $dest/promtool"
