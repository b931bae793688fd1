#!/usr/bin/env bash
# Install what the project needs: promtool, then .venv (a no-op when nothing changed).
# torch is installed first, pinned to the CPU build these machines carry (an unpinned
# torch would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."

# promtool (Debian's prometheus package) unit-tests the alert rules.
if ! command -v promtool >/dev/null; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    else
        echo "setup: promtool is missing; install the 'prometheus' package (e.g. sudo apt-get install prometheus)" >&2
    fi
fi

PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
echo "$want" > "$STAMP"
