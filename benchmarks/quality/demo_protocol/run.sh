#!/usr/bin/env bash
# One row of the demo-protocol study (benchmarks/RESULTS_quality.md, "Learning-rate decay"):
# trains a demo config on synthetic data with --set overrides, evaluates on test, and
# appends "NAME test=AUC ORACLE val=[per-epoch validation AUC] secs=S args=..." to results.txt.
#
#   .venv/bin/ssr_tf data synth --output /tmp/dx/data --rows 600000 --seed 0
#   DATA=/tmp/dx/data OUT=/tmp/dx benchmarks/quality/demo_protocol/run.sh \
#     ssr_cos2_lr3 configs/demo_ssr_d.yaml --set data.batch_size=256 --set train.epochs=2 \
#     --set train.lr_decay=cosine --set train.learning_rate=0.003
set -euo pipefail
cd "$(dirname "$0")/../../.."
name=$1; cfg=$2; shift 2
D=${DATA:?set DATA to a folder written by ssr_tf data synth}
OUT=${OUT:-/tmp/demo_protocol}
model=$OUT/m/$name
mkdir -p "$OUT"
s=$(date +%s)
.venv/bin/ssr_tf train --config "$cfg" --overwrite --set data.spec=$D/spec.yaml \
  --set "data.train=$D/train/*.tfrecord" --set "data.valid=$D/valid/*.tfrecord" \
  --set "data.test=$D/test/*.tfrecord" --set train.model_dir=$model --set train.verbose=2 \
  --set train.ics_log_every_steps=0 "$@" > "$OUT/$name.train.log" 2>&1
.venv/bin/ssr_tf evaluate --config "$model/config.yaml" > "$OUT/$name.eval.log" 2>&1
auc=$(python3 -c "import json;t=json.load(open('$model/eval_test.json'))['tasks']['click'];print(round(t['auc'],4), round(t['oracle_auc'],4))")
vals=$(grep -o "val_click_auc: [0-9.]*" "$OUT/$name.train.log" | awk '{print $2}' | tr '\n' ' ')
echo "$name test=$auc val=[$vals] secs=$(( $(date +%s) - s )) args=$*" | tee -a "$OUT/results.txt"
