#!/usr/bin/env bash
# What each extra installs, and whether its entry points run there: a fresh venv per extra
# (uv, from its shared cache), filled as the Dockerfiles fill /opt/eplb (torch==2.13.0 first,
# then the project from the files the images copy, not editable), then
#   - every module the role's entry point can import (grimp, read in .venv) is imported;
#   - the role's command answers --help;
#   - the size of site-packages: all of it, and beyond what torch==2.13.0 alone installs
#     (torch, its CUDA libraries and its own dependencies: the same in every image, and the
#     operator's takes the smaller CPU-only build).
# Usage: scripts/measure-extras.sh [REF] [EXTRA...]   (default: HEAD, every role's extra;
# an empty EXTRA, '', is the project without extras: the images before the extras).
# Runs from the repository root with .venv set up (scripts/setup.sh); work in $TMPDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
ref="${1:-HEAD}"
shift || true
extras=("$@")
[[ ${#extras[@]} -gt 0 ]] || extras=(operator sidecar plan demo)
work="${TMPDIR:-/tmp}/eplb-extras"
rm -rf "$work" && mkdir -p "$work/image" "$work/sidecar-image" "$work/all"
# What the Dockerfiles copy (the sidecar's leaves operator/ out, unless REF's still copied
# it); the local tooling only where it runs (`plan`, `demo`).
git archive "$ref" pyproject.toml README.md core operator sidecar | tar -x -C "$work/image"
sidecar_dirs=(core sidecar)
grep -q '^COPY operator/' <(git show "$ref:docker/sidecar.Dockerfile") && sidecar_dirs+=(operator)
git archive "$ref" pyproject.toml README.md "${sidecar_dirs[@]}" | tar -x -C "$work/sidecar-image"
git archive "$ref" pyproject.toml README.md core operator sidecar local | tar -x -C "$work/all"
uv=(.venv/bin/python -m uv)
python="$(.venv/bin/python -c 'import sys; print(sys.executable)')"

# A venv with torch alone (as the Dockerfiles install it first); echoes its site-packages.
torch_venv() {
    "${uv[@]}" venv --quiet --python "$python" "$1"
    "${uv[@]}" pip install --quiet --python "$1/bin/python" "torch==2.13.0"
    "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
}

# The modules each role's entry points reach in REF's code (as tests/unit/test_extras.py
# reads them).
modules() {
    PYTHONPATH="$work/all/core:$work/all/operator:$work/all/sidecar:$work/all/local" \
        .venv/bin/python - "$@" <<'EOF'
import sys, grimp
graph = grimp.build_graph("eplb_core", "eplb_operator", "eplb_sidecar", "eplb_local")
reached = set()
for entry in sys.argv[1:]:
    reached |= graph.find_upstream_modules(entry) | {entry}
# The transformers adapter is an extra of its own, loaded only when asked for.
print(" ".join(sorted(m for m in reached if ".adapters.transformers" not in m)))
EOF
}
declare -A ENTRY=(
    [operator]="eplb_operator.controller.handlers eplb_operator.controller.stand_down"
    [sidecar]="eplb_sidecar.cli"
    [plan]="eplb_operator.cli.main"
    [demo]="eplb_local.cli.demo eplb_local.cli.cluster eplb_local.world"
    [none]="eplb_operator.controller.handlers eplb_sidecar.cli"
)
declare -A COMMAND=(
    [operator]="kopf run --help"
    [sidecar]="eplb-sidecar serve --help"
    [plan]="eplb plan --help"
    [demo]="eplb demo --help"
    [none]="eplb-sidecar serve --help"
)

torch_only="$(du -sm "$(torch_venv "$work/venv-torch")" | cut -f1)"
printf '%-10s %14s %16s  %s\n' extra site-packages "beyond torch" "entry points"
printf '%-10s %11s MB %13s MB\n' torch "$torch_only" 0
for extra in "${extras[@]}"; do
    name="${extra:-none}"
    venv="$work/venv-$name"
    site="$(torch_venv "$venv")"
    src="$work/image"
    [[ "$name" == plan || "$name" == demo ]] && src="$work/all"
    [[ "$name" == sidecar ]] && src="$work/sidecar-image"
    spec="$src"
    [[ -z "$extra" ]] || spec="$src[$extra]"
    "${uv[@]}" pip install --quiet --python "$venv/bin/python" "$spec"
    # shellcheck disable=SC2086  # a list of module names
    "$venv/bin/python" -c 'import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]' \
        $(modules ${ENTRY[$name]})
    # shellcheck disable=SC2086
    PATH="$venv/bin:$PATH" ${COMMAND[$name]} >/dev/null
    total="$(du -sm "$site" | cut -f1)"
    printf '%-10s %11s MB %13s MB  %s\n' "$name" "$total" "$((total - torch_only))" \
        "ok: ${COMMAND[$name]}"
done
