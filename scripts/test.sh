#!/usr/bin/env bash
# Set up, then run the whole test suite: lint, types, tests.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
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
