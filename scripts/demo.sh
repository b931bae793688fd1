#!/usr/bin/env bash
# Set up, then run the main job: the local sandbox demo. A Kubernetes API, four pods of a
# reference MoE engine with the sidecar, Prometheus and the operator start on this machine;
# skewed load is rebalanced online, the skew shifts, and it is rebalanced again. Ends with a
# summary and an HTML report in out/demo/. Extra arguments go to `eplb demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
eplb demo --report out/demo "$@"
