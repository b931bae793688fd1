#!/usr/bin/env bash
# Set up, then run the main job: plan an offline (GitOps) placement for DeepSeek-V3 on
# 32 GPUs in 4 nodes from the shipped example stats, and show what it changes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
mkdir -p out
eplb plan \
    --stats examples/stats/deepseek-v3-synthetic.json \
    --ranks 32 --redundant 32 --nodes 4 --groups 8 \
    --output out/deepseek-v3-placement.yaml --plot out/deepseek-v3-placement.png "$@"
echo
echo "Rank load before and after: out/deepseek-v3-placement.png"
echo "Apply it with: kubectl apply -f out/deepseek-v3-placement.yaml"
