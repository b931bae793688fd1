#!/usr/bin/env bash
# Set up, then run the whole test suite: lint, types, tests.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# Bytecode for the venv and the project (uv writes none): with PYTHONDONTWRITEBYTECODE=1 set,
# every process of the tests' local worlds, each pod's engine and sidecar too, would compile
# torch and the Kubernetes client from source again (a world of 8 pods: 406 → 237 CPU-s).
# The venv once per install (~1 min on 2 cores; .venv/.bytecode remembers which install),
# the project's modules every run (2 s when up to date).  Not in setup.sh, so a fresh clone
# still sets up in seconds.  || true: the few files written for other Python versions
# (torch's py312_intrinsics.py) fail to compile, as pip's own compile step lets them.
echo "== bytecode"
if ! cmp -s .venv/.installed .venv/.bytecode; then
    python -m compileall -qq -j 0 "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" || true
    cp .venv/.installed .venv/.bytecode
fi
python -m compileall -qq core operator sidecar local
echo "== ruff"
ruff check core operator sidecar local tests benchmarks
ruff format --check core operator sidecar local tests benchmarks
echo "== mypy"
mypy
echo "== import contracts (.importlinter)"
lint-imports
echo "== pytest"
# Two workers, each with its own local cluster: one alone leaves a core idle half the time
# (waits on pods, rollouts and processes starting). tests/scheduling.py says how they share.
python -m pytest -n "${EPLB_TEST_WORKERS:-2}" "$@"
