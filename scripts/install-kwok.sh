#!/usr/bin/env bash
# Build kwok (sigs.k8s.io/kwok, the `kwok` controller that plays the kubelet for fake nodes) from
# its published Go module with the local Go toolchain, and cache it by version together with the
# Stage manifests of that release:
#
#   $PDSCALER_CACHE/kwok/<version>/bin/kwok
#   $PDSCALER_CACHE/kwok/<version>/stages/{node,pod}/<set>/*.yaml   (the release's kustomize/stage)
#
# (PDSCALER_CACHE defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/pdscaler.) A second run finds the
# cached binary, checks that it runs and exits at once.
#
# The `kwok` binary ships no Stages of its own (kwokctl injects its defaults); the test fixture
# reads the node Stages from the copied manifests, so they are exactly the pinned release's.
# The build happens in a throwaway module that requires the release (the approach of
# scripts/install-kube.sh), so GOFLAGS and the toolchain are ours.
#
# Environment:
#   KWOK_VERSION   kwok release to build (default below)
#   BUILD_JOBS     parallel compile jobs (default 2)
#   FORCE=1        rebuild even if the cache holds the binary
set -euo pipefail

KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
BUILD_JOBS="${BUILD_JOBS:-2}"

log() { printf '[install-kwok] %s\n' "$*" >&2; }
die() { printf '[install-kwok] ERROR: %s\n' "$*" >&2; exit 1; }

CACHE_ROOT="${PDSCALER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pdscaler}"
DEST="$CACHE_ROOT/kwok/$KWOK_VERSION"
BIN="$DEST/bin"
STAGES="$DEST/stages"
STAMP="$DEST/.complete"

check_install() {
    [[ -f "$STAMP" && -x "$BIN/kwok" ]] || return 1
    [[ -f "$STAGES/node/fast/node-initialize.yaml" ]] || return 1
    [[ -f "$STAGES/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" ]] || return 1
    "$BIN/kwok" --version >/dev/null 2>&1 || return 1
}

if [[ "${FORCE:-0}" != "1" ]] && check_install; then
    log "cached: $BIN/kwok ($("$BIN/kwok" --version 2>&1 | head -1))"
    exit 0
fi

command -v go >/dev/null 2>&1 || die "the Go toolchain ('go') is not on PATH; install Go >= 1.26 (https://go.dev/dl/) and re-run"
GO_VERSION="$(go env GOVERSION)"
log "building kwok $KWOK_VERSION with $GO_VERSION (jobs=$BUILD_JOBS)"
START=$(date +%s)

export GOTOOLCHAIN=local
export GOFLAGS="-trimpath -mod=mod"
export GOMAXPROCS="${GOMAXPROCS:-$BUILD_JOBS}"
export CGO_ENABLED=0
export GOWORK=off

WORK="$(mktemp -d "${TMPDIR:-/tmp}/pdscaler-kwok-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/out" "$WORK/mod"
cd "$WORK/mod"

MOD_JSON="$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION")" \
    || die "could not download sigs.k8s.io/kwok@$KWOK_VERSION from the Go module proxy"
json_field() { sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}\$/\1/p" <<<"$MOD_JSON"; }
MOD_DIR="$(json_field Dir)"
MOD_FILE="$(json_field GoMod)"
[[ -d "$MOD_DIR" && -f "$MOD_FILE" ]] || die "sigs.k8s.io/kwok@$KWOK_VERSION: module download gave no source directory"
GO_DIRECTIVE="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$MOD_FILE")"

# kwok v0.8.0's go.mod has no replace directives, so requiring it is enough. A later release that
# adds some would build against different dependencies than its own; stop and say so.
if grep -q '=>' "$MOD_FILE"; then
    die "sigs.k8s.io/kwok@$KWOK_VERSION has replace directives in its go.mod ($MOD_FILE); map them into the throwaway module as scripts/install-kube.sh does for Kubernetes"
fi
{
    echo "module pdscaler.local/kwokbuild"
    echo
    echo "go ${GO_DIRECTIVE:-1.26.0}"
    echo
    echo "require sigs.k8s.io/kwok $KWOK_VERSION"
} >go.mod
log "throwaway module: sigs.k8s.io/kwok $KWOK_VERSION (go $GO_DIRECTIVE)"

go build -p "$BUILD_JOBS" -ldflags "-s -w" -o "$WORK/out/kwok" sigs.k8s.io/kwok/cmd/kwok \
    || die "building kwok failed (see the Go output above)"

# The release's Stage manifests (YAML only; no Go files, no test data).
mkdir -p "$WORK/out/stages"
(
    cd "$MOD_DIR/kustomize/stage"
    find . -name testdata -prune -o -name '*.yaml' -print | while read -r f; do
        mkdir -p "$WORK/out/stages/$(dirname "$f")"
        cp "$f" "$WORK/out/stages/$f"
    done
)
chmod -R u+w "$WORK/out/stages"

mkdir -p "$BIN"
install -m 0755 "$WORK/out/kwok" "$BIN/kwok.tmp"
mv -f "$BIN/kwok.tmp" "$BIN/kwok"
rm -rf "$STAGES.tmp"
cp -r "$WORK/out/stages" "$STAGES.tmp"
rm -rf "$STAGES"
mv "$STAGES.tmp" "$STAGES"
{
    echo "kwok_version=$KWOK_VERSION"
    echo "go_version=$GO_VERSION"
} >"$STAMP"
check_install || die "the freshly built kwok in $BIN does not run"

log "installed into $DEST ($("$BIN/kwok" --version 2>&1 | head -1))"
log "build time: $(( $(date +%s) - START )) s"
