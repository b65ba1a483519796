#!/usr/bin/env bash
# Build a pinned helm from its Go module into the pdscaler cache (used to lint and render the
# chart against the real API server in the integration tests). A second run is instant.
set -euo pipefail
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE="${PDSCALER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pdscaler}"
DEST="$CACHE/helm"
if [ -x "$DEST/bin/helm" ] && "$DEST/bin/helm" version --short 2>/dev/null | grep -q "^${HELM_VERSION}"; then
  echo "helm ${HELM_VERSION}: cached in $DEST/bin"
  exit 0
fi
command -v go >/dev/null || { echo "install-helm: the Go toolchain (go) is required" >&2; exit 1; }
mkdir -p "$DEST/bin"
start=$(date +%s)
GOBIN="$DEST/bin" GOFLAGS=-trimpath go install -p 2 \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
  "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" > "$DEST/build.log" 2>&1 \
  || { tail -20 "$DEST/build.log" >&2; echo "install-helm: build failed" >&2; exit 1; }
echo "helm ${HELM_VERSION}: built in $(( $(date +%s) - start )) s into $DEST/bin"
