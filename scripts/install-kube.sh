#!/usr/bin/env bash
# Build a pinned Kubernetes control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl) and a matching etcd from their published Go modules with the local Go
# toolchain, and cache the binaries by version:
#
#   $PDSCALER_CACHE/kube/<kube version>/bin/{kube-apiserver,kube-controller-manager,
#                                            kube-scheduler,kubectl,etcd}
#
# (PDSCALER_CACHE defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/pdscaler.) A second run finds the
# cached binaries, checks that they run and exits at once. Each binary is checked on its own: a
# cache that lacks some of them (e.g. one filled by an older version of this script) gets only
# the missing ones built.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces every k8s.io/<staging> module
# with ./staging/src/k8s.io/<name>. The build therefore happens in a throwaway module that
# requires k8s.io/kubernetes at the pinned tag and replaces each staging module with its
# published v0.<minor>.<patch> release. etcd's server module has the same kind of replace
# directives and gets the same treatment in a second throwaway module.
#
# Environment:
#   KUBE_VERSION   Kubernetes release to build (default below)
#   ETCD_VERSION   etcd release to build (default: the one that Kubernetes release pins)
#   BUILD_JOBS     parallel compile jobs (default 2; each uses up to ~1.5 GB)
#   FORCE=1        rebuild all binaries even if the cache holds them
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.35.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.5}"
BUILD_JOBS="${BUILD_JOBS:-2}"

log() { printf '[install-kube] %s\n' "$*" >&2; }
die() { printf '[install-kube] ERROR: %s\n' "$*" >&2; exit 1; }

CACHE_ROOT="${PDSCALER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pdscaler}"
DEST="$CACHE_ROOT/kube/$KUBE_VERSION"
BIN="$DEST/bin"
STAMP="$DEST/.complete"

KUBE_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
ALL_BINARIES=("${KUBE_BINARIES[@]}" etcd)

# A cached binary counts only if it runs and reports its version.
binary_ok() {
    local b="$1"
    [[ -x "$BIN/$b" ]] || return 1
    case "$b" in
        kubectl) "$BIN/kubectl" version --client=true >/dev/null 2>&1 ;;
        *) "$BIN/$b" --version >/dev/null 2>&1 ;;
    esac
}

MISSING=()
for b in "${ALL_BINARIES[@]}"; do
    if [[ "${FORCE:-0}" == "1" ]] || ! binary_ok "$b"; then
        MISSING+=("$b")
    fi
done

if (( ${#MISSING[@]} == 0 )); then
    log "cached: $BIN ($("$BIN/kube-apiserver" --version), etcd $("$BIN/etcd" --version | sed -n 's/^etcd Version: //p'))"
    exit 0
fi
log "to build: ${MISSING[*]}"
needs() { local b; for b in "${MISSING[@]}"; do [[ "$b" == "$1" ]] && return 0; done; return 1; }
MISSING_KUBE=()
for b in "${KUBE_BINARIES[@]}"; do
    if needs "$b"; then MISSING_KUBE+=("$b"); fi
done

command -v go >/dev/null 2>&1 || die "the Go toolchain ('go') is not on PATH; install Go >= 1.25 (https://go.dev/dl/) and re-run"
GO_VERSION="$(go env GOVERSION)"
log "building Kubernetes $KUBE_VERSION and etcd $ETCD_VERSION with $GO_VERSION (jobs=$BUILD_JOBS)"

START=$(date +%s)

export GOTOOLCHAIN=local
export GOFLAGS="-trimpath -mod=mod"
export GOMAXPROCS="${GOMAXPROCS:-$BUILD_JOBS}"
export CGO_ENABLED=0
export GOWORK=off

WORK="$(mktemp -d "${TMPDIR:-/tmp}/pdscaler-kube-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

STAGE="$WORK/out"
mkdir -p "$STAGE"

# ---------------------------------------------------------------- Kubernetes
if (( ${#MISSING_KUBE[@]} > 0 )); then
staging_minor="${KUBE_VERSION#v1.}"            # 35.4
STAGING_VERSION="v0.${staging_minor}"          # v0.35.4
major="1"
minor="${staging_minor%%.*}"                   # 35

mkdir -p "$WORK/kube"
cd "$WORK/kube"
go mod init pdscaler.local/kubebuild >/dev/null 2>&1

# Find the staging modules from the release's own go.mod.
KMOD_JSON="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION")" \
    || die "could not download k8s.io/kubernetes@$KUBE_VERSION from the Go module proxy"
json_field() { sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}\$/\1/p" <<<"$KMOD_JSON"; }
KMOD_FILE="$(json_field GoMod)"
KINFO_FILE="$(json_field Info)"
[[ -f "$KMOD_FILE" ]] || die "could not download k8s.io/kubernetes@$KUBE_VERSION from the Go module proxy"
mapfile -t STAGING < <(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/.*#\1#p' "$KMOD_FILE")
(( ${#STAGING[@]} > 10 )) || die "found only ${#STAGING[@]} staging modules in $KMOD_FILE"
GO_DIRECTIVE="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$KMOD_FILE")"

{
    echo "module pdscaler.local/kubebuild"
    echo
    echo "go ${GO_DIRECTIVE:-1.25.0}"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    echo "replace ("
    for m in "${STAGING[@]}"; do
        echo "	$m => $m $STAGING_VERSION"
    done
    echo ")"
} >go.mod
log "throwaway module: k8s.io/kubernetes $KUBE_VERSION + ${#STAGING[@]} staging modules at $STAGING_VERSION"

# The release's tag time (from the module proxy's .info) serves as a reproducible build date.
BUILD_DATE="$(sed -n 's/.*"Time": *"\([^"]*\)".*/\1/p' "$KINFO_FILE" 2>/dev/null || true)"
BUILD_DATE="${BUILD_DATE:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}"

ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X '$pkg.gitVersion=$KUBE_VERSION'"
    ldflags+=" -X '$pkg.gitMajor=$major'"
    ldflags+=" -X '$pkg.gitMinor=$minor'"
    ldflags+=" -X '$pkg.gitCommit='"
    ldflags+=" -X '$pkg.gitTreeState=archive'"
    ldflags+=" -X '$pkg.buildDate=$BUILD_DATE'"
done

for cmd in "${MISSING_KUBE[@]}"; do
    t0=$(date +%s)
    log "go build k8s.io/kubernetes/cmd/$cmd ..."
    go build -p "$BUILD_JOBS" -ldflags "$ldflags" -o "$STAGE/$cmd" "k8s.io/kubernetes/cmd/$cmd" \
        || die "building $cmd failed (see the Go output above)"
    log "  $cmd built in $(( $(date +%s) - t0 )) s"
done
fi

# ---------------------------------------------------------------- etcd
if needs etcd; then
mkdir -p "$WORK/etcd"
cd "$WORK/etcd"
go mod init pdscaler.local/etcdbuild >/dev/null 2>&1
{
    echo "module pdscaler.local/etcdbuild"
    echo
    echo "go 1.24"
    echo
    echo "require ("
    echo "	go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    echo "	go.etcd.io/etcd/api/v3 $ETCD_VERSION"
    echo "	go.etcd.io/etcd/client/pkg/v3 $ETCD_VERSION"
    echo "	go.etcd.io/etcd/client/v3 $ETCD_VERSION"
    echo "	go.etcd.io/etcd/pkg/v3 $ETCD_VERSION"
    echo ")"
} >go.mod
t0=$(date +%s)
log "go build go.etcd.io/etcd/server/v3 ($ETCD_VERSION) ..."
go build -p "$BUILD_JOBS" -ldflags "-s -w -X 'go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION'" \
    -o "$STAGE/etcd" go.etcd.io/etcd/server/v3 \
    || die "building etcd failed (see the Go output above)"
log "  etcd built in $(( $(date +%s) - t0 )) s"
fi

# ---------------------------------------------------------------- install into the cache
mkdir -p "$BIN"
for b in "${MISSING[@]}"; do
    install -m 0755 "$STAGE/$b" "$BIN/$b.tmp"
    mv -f "$BIN/$b.tmp" "$BIN/$b"
done
{
    echo "kube_version=$KUBE_VERSION"
    echo "etcd_version=$ETCD_VERSION"
    echo "go_version=$GO_VERSION"
    echo "binaries=${ALL_BINARIES[*]}"
} >"$STAMP"
for b in "${ALL_BINARIES[@]}"; do
    binary_ok "$b" || die "$BIN/$b does not run"
done

ELAPSED=$(( $(date +%s) - START ))
log "installed into $BIN"
"$BIN/kubectl" version --client=true >&2
log "etcd: $("$BIN/etcd" --version | head -1)"
log "build time (${MISSING[*]}): ${ELAPSED} s"
