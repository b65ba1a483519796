#!/usr/bin/env bash
# Install Prometheus and promtool for the test suite from Debian's `prometheus` package without
# installing the package (no service, no user, no systemd unit): the .deb is fetched with
# `apt-get download` and unpacked with `dpkg -x` into the cache:
#
#   $PDSCALER_CACHE/prometheus/<debian version>/usr/bin/{prometheus,promtool}
#   $PDSCALER_CACHE/prometheus/current -> <debian version>
#
# (PDSCALER_CACHE defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/pdscaler.) A second run finds the
# cached binaries and exits at once.
#
# Environment:
#   PROMETHEUS_DEB_VERSION  Debian package version to fetch (default below; if the archive no
#                           longer carries it, the current candidate is used with a warning)
#   FORCE=1                 fetch again even if the cache holds the binaries
set -euo pipefail

PROMETHEUS_DEB_VERSION="${PROMETHEUS_DEB_VERSION:-2.42.0+ds-5+deb12u1}"

log() { printf '[install-prometheus] %s\n' "$*" >&2; }
die() { printf '[install-prometheus] ERROR: %s\n' "$*" >&2; exit 1; }

CACHE_ROOT="${PDSCALER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pdscaler}"
PROM_ROOT="$CACHE_ROOT/prometheus"

check_install() {
    local dir="$1"
    [[ -f "$dir/.complete" ]] || return 1
    "$dir/usr/bin/prometheus" --version >/dev/null 2>&1 || return 1
    "$dir/usr/bin/promtool" --version >/dev/null 2>&1 || return 1
}

link_current() {
    ln -sfn "$1" "$PROM_ROOT/current.tmp"
    mv -fT "$PROM_ROOT/current.tmp" "$PROM_ROOT/current"
}

if [[ "${FORCE:-0}" != "1" ]] && check_install "$PROM_ROOT/$PROMETHEUS_DEB_VERSION"; then
    link_current "$PROMETHEUS_DEB_VERSION"
    log "cached: $PROM_ROOT/$PROMETHEUS_DEB_VERSION ($("$PROM_ROOT/current/usr/bin/prometheus" --version 2>&1 | head -1))"
    exit 0
fi

command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script needs a Debian/Ubuntu system (Debian's prometheus package)"
command -v dpkg >/dev/null 2>&1 || die "dpkg not found"

START=$(date +%s)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pdscaler-prom.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
chmod 0755 "$WORK"   # lets apt's unprivileged downloader write here when run as root
cd "$WORK"

download() { apt-get download -q "$@" >/dev/null 2>"$WORK/apt.err"; }

version="$PROMETHEUS_DEB_VERSION"
if ! download "prometheus=$version"; then
    log "apt-get download failed; running apt-get update"
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -q >/dev/null || die "apt-get update failed"
    else
        sudo -n apt-get update -q >/dev/null || die "apt-get update failed (needs root or passwordless sudo)"
    fi
    if ! download "prometheus=$version"; then
        candidate="$(apt-cache policy prometheus | sed -n 's/^ *Candidate: //p')"
        [[ -n "$candidate" && "$candidate" != "(none)" ]] \
            || die "no prometheus package in the apt sources: $(cat "$WORK/apt.err")"
        log "WARNING: prometheus=$version is not available; using the candidate $candidate"
        version="$candidate"
        download "prometheus=$version" || die "apt-get download prometheus=$version failed: $(cat "$WORK/apt.err")"
    fi
fi

deb="$(ls "$WORK"/prometheus_*.deb 2>/dev/null | head -1)"
[[ -f "$deb" ]] || die "apt-get download produced no .deb"

DEST="$PROM_ROOT/$version"
rm -rf "$DEST.tmp"
mkdir -p "$DEST.tmp"
dpkg -x "$deb" "$DEST.tmp"
for b in prometheus promtool; do
    [[ -x "$DEST.tmp/usr/bin/$b" ]] || die "$b missing from $(basename "$deb")"
done
echo "deb_version=$version" >"$DEST.tmp/.complete"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
check_install "$DEST" || die "the unpacked binaries in $DEST do not run"
link_current "$version"

log "installed $("$DEST/usr/bin/prometheus" --version 2>&1 | head -1) into $DEST"
log "install time: $(( $(date +%s) - START )) s"
