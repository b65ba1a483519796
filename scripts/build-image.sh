#!/usr/bin/env bash
# Build the operator image `pdscaler:<version>` from this repository with podman, without any
# container registry: the Debian bookworm base images (Python 3.11) are made from Debian packages
# with mmdebstrap, cached as tarballs and imported into the local image store.
#
#   $PDSCALER_CACHE/image/base-{runtime,build}-<key>.tar   the base root filesystems
#   localhost/pdscaler-base:{runtime,build}-<key>          the imported base images
#   localhost/pdscaler:<version>                           the result (also tagged :latest)
#
# (PDSCALER_CACHE defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/pdscaler.) Idempotent: a second run
# reuses the cached tarballs, the imported bases and podman's layer cache (a source change only
# rebuilds the last layers). Needs root (mmdebstrap, rootful podman); missing Debian tools
# (podman, buildah, mmdebstrap, runc) are installed with apt-get.
#
# Environment:
#   IMAGE           result name (default localhost/pdscaler:<version from pyproject.toml>)
#   CA_BUNDLE       CA bundle given to pip inside the build as a secret, for networks that
#                   intercept HTTPS (default: the host's /etc/ssl/certs/ca-certificates.crt)
#   DEBIAN_MIRROR   (default http://deb.debian.org/debian)
#   NOFILE          open-files limit for build and run containers (default: this shell's hard
#                   limit; podman's default can exceed it and fail)
#   FORCE=1         rebuild the base tarballs and the image from scratch
set -euo pipefail

log() { printf '[build-image] %s\n' "$*" >&2; }
die() { printf '[build-image] ERROR: %s\n' "$*" >&2; exit 1; }

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -1)"
[[ -n "$VERSION" ]] || die "no version in pyproject.toml"
IMAGE="${IMAGE:-localhost/pdscaler:$VERSION}"
CACHE_ROOT="${PDSCALER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pdscaler}"
CACHE="$CACHE_ROOT/image"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
NOFILE="${NOFILE:-$(ulimit -Hn)}"
[[ "$NOFILE" == unlimited ]] && NOFILE=1048576

# The Debian packages of each base. The runtime has the interpreter, the C++ runtime that the
# manylinux wheels (numpy, scipy) expect from the system, and CA certificates: no pip, no
# compilers. The build base adds venv support (pip's wheel) for the build stages.
RUNTIME_PACKAGES="python3.11,libstdc++6,ca-certificates"
BUILD_PACKAGES="python3.11,python3.11-venv,libstdc++6,ca-certificates"
KEY="bookworm-py311-$(printf '%s|%s' "$RUNTIME_PACKAGES" "$BUILD_PACKAGES" | sha256sum | cut -c1-8)"

[[ $(id -u) -eq 0 ]] || die "run as root (mmdebstrap and rootful podman); in CI the image tests run as root"

need=()
for tool in podman:podman buildah:buildah mmdebstrap:mmdebstrap runc:runc; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
if (( ${#need[@]} )); then
    log "installing ${need[*]} with apt-get"
    apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || {
        apt-get update -q >/dev/null && apt-get install -y -q "${need[@]}" >/dev/null
    } || die "apt-get install ${need[*]} failed"
fi

# crun fails on this kind of host's cgroup set-up; runc works. cgroupfs: no systemd here.
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs --events-backend file)

START=$(date +%s)
mkdir -p "$CACHE"

make_base() {  # $1: runtime|build, $2: package list
    local kind="$1" packages="$2" tar="$CACHE/base-$1-$KEY.tar" ref="localhost/pdscaler-base:$1-$KEY"
    if [[ "${FORCE:-0}" == 1 ]]; then
        rm -f "$tar"
        "${PODMAN[@]}" image rm -f "$ref" >/dev/null 2>&1 || true
    fi
    if [[ ! -s "$tar" ]]; then
        log "mmdebstrap: bookworm ($kind: $packages) -> $tar"
        local t0; t0=$(date +%s)
        mmdebstrap --quiet --mode=root --format=tar --variant=essential --include="$packages" \
            --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
            --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
            --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*' \
            bookworm "$tar.tmp" \
            "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
            "deb $SECURITY_MIRROR bookworm-security main" \
            || die "mmdebstrap failed for the $kind base"
        mv -f "$tar.tmp" "$tar"
        log "  $kind base: $(du -h "$tar" | cut -f1) in $(( $(date +%s) - t0 )) s"
    fi
    if ! "${PODMAN[@]}" image exists "$ref"; then
        log "podman import $tar -> $ref"
        "${PODMAN[@]}" import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["/bin/bash"]' "$tar" "$ref" >/dev/null || die "podman import failed"
    fi
    printf '%s' "$ref"
}

# Tarballs of other package lists are stale.
find "$CACHE" -maxdepth 1 -name 'base-*.tar*' ! -name "base-*-$KEY.tar" -delete
BASE_RUNTIME="$(make_base runtime "$RUNTIME_PACKAGES")"
BASE_BUILD="$(make_base build "$BUILD_PACKAGES")"

secret=()
if [[ -s "$CA_BUNDLE" ]]; then
    secret=(--secret "id=cacert,src=$CA_BUNDLE")
else
    log "no CA bundle at $CA_BUNDLE: pip uses the base image's certificates"
    empty="$CACHE/empty-ca.crt"; : >"$empty"; secret=(--secret "id=cacert,src=$empty")
fi
no_cache=()
[[ "${FORCE:-0}" == 1 ]] && no_cache=(--no-cache)

log "podman build -> $IMAGE"
t0=$(date +%s)
"${PODMAN[@]}" build --layers "${no_cache[@]}" --pull=never --network host \
    --ulimit "nofile=$NOFILE:$NOFILE" "${secret[@]}" \
    --build-arg "BASE_RUNTIME=$BASE_RUNTIME" --build-arg "BASE_BUILD=$BASE_BUILD" \
    --label "org.opencontainers.image.version=$VERSION" \
    -t "$IMAGE" -f Dockerfile . >"$CACHE/build.log" 2>&1 \
    || { tail -40 "$CACHE/build.log" >&2; die "podman build failed (log: $CACHE/build.log)"; }
"${PODMAN[@]}" tag "$IMAGE" "${IMAGE%:*}:latest"
size="$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")"
log "built $IMAGE ($(( size / 1000000 )) MB) in $(( $(date +%s) - t0 )) s; total $(( $(date +%s) - START )) s"
echo "$IMAGE"
