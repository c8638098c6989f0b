#!/usr/bin/env bash
# The twelve fresh pairs of fresh_pairs_plan.md (seeds 11-22, demo configs; plan 2d8ef47, run 2026-11-25).
#   DATA=/tmp/dx/data OUT=/tmp/s7 benchmarks/quality/demo_protocol/fresh_pairs.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:?set OUT}
here=benchmarks/quality/demo_protocol
for s in $(seq 11 22); do
  $here/run.sh f7_ssr_s$s configs/demo_ssr_d.yaml --set train.seed=$s
  $here/run.sh f7_dnn_s$s configs/demo_dnn.yaml --set train.seed=$s
  echo "fresh seed $s" >> "$OUT/compare.txt"
  .venv/bin/ssr_tf compare --config "$OUT/m/f7_ssr_s$s/config.yaml" \
    --against "$OUT/m/f7_dnn_s$s/config.yaml" 2>/dev/null | grep "^click" >> "$OUT/compare.txt"
done
