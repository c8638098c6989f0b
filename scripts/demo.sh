#!/usr/bin/env bash
# `make demo`: synthetic data -> train SSR-D and the DNN baseline -> evaluate -> export ->
# score serialized tf.Example records through the reloaded SavedModel.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=demo_out
ROWS=${DEMO_ROWS:-600000}
export TF_CPP_MIN_LOG_LEVEL=2
quiet() { grep -v -E "cuInit|cuda_|cudart_stub|^[IEW]0000 |absl::InitializeLog|^WARNING: All log|TF-TRT|rebuild TensorFlow|cpu_feature_guard" || true; }
step() { printf '\n== %s\n' "$*"; }
start=$(date +%s)

step "1/6 synthetic data: $ROWS rows (ssr_tf data synth)"
if [ ! -f "$OUT/data/stats.json" ] || [ "$(python3 -c "import json;print(json.load(open('$OUT/data/stats.json'))['rows'])")" != "$ROWS" ]; then
  rm -rf "$OUT/data"
  mkdir -p "$OUT"
  $BIN/ssr_tf data synth --output "$OUT/data" --rows "$ROWS" --seed 0 2>&1 | quiet > "$OUT/synth.log"
fi
$BIN/python -c "import json; s = json.load(open('$OUT/data/stats.json')); print({k: (v['rows'], round(v['oracle_click_auc'], 4)) for k, v in s.items() if isinstance(v, dict)}, '(rows, oracle click AUC)')"
step "2/6 train SSR-D (ssr_tf train --config configs/demo_ssr_d.yaml)"
$BIN/ssr_tf train --config configs/demo_ssr_d.yaml --overwrite 2>&1 | quiet
step "3/6 train the DNN baseline (ssr_tf train --config configs/demo_dnn.yaml)"
$BIN/ssr_tf train --config configs/demo_dnn.yaml --overwrite --set train.verbose=0 2>&1 | quiet
step "4/6 evaluate on the test split (exact AUC, GAUC by user, LogLoss, NE, calibration; oracle = the true probabilities)"
for m in ssr_d dnn; do
  cfg=configs/demo_$m.yaml
  echo "-- $m"
  $BIN/ssr_tf evaluate --config $cfg 2>&1 | quiet | grep -v '^{'
done
echo "-- SSR-D vs DNN on the same test rows (ssr_tf compare: paired DeLong test; test-set noise only, not seed noise)"
$BIN/ssr_tf compare --config configs/demo_ssr_d.yaml --against configs/demo_dnn.yaml \
  --output "$OUT/compare_test.json" 2>&1 | quiet | grep -v '^{'
step "5/6 export a TF Serving SavedModel (ssr_tf export)"
rm -rf "$OUT/export"
$BIN/ssr_tf export --config configs/demo_ssr_d.yaml --output "$OUT/export" 2>&1 | quiet | tail -n 1
step "6/6 score serialized tf.Example records through the reloaded SavedModel (TensorFlow only)"
$BIN/python scripts/score_saved_model.py "$OUT/export/1" "$(ls $OUT/data/test/*.tfrecord | head -n 1)" 5 2>&1 | quiet
$BIN/python - <<'PY'
import json
s = json.load(open("demo_out/ssr_d/eval_test.json"))["tasks"]["click"]
d = json.load(open("demo_out/dnn/eval_test.json"))["tasks"]["click"]
c = json.load(open("demo_out/compare_test.json"))["tasks"]["click"]
gap = s['oracle_auc'] - s['auc']
print(f"\nSUMMARY test click AUC: SSR-D {s['auc']:.4f} | DNN {d['auc']:.4f} | oracle {s['oracle_auc']:.4f} "
      f"(SSR-D gap to oracle {gap:.4f})")
noise = "within" if c["p_value"] >= 0.05 else "beyond"
print(f"SSR-D within 0.01 of the oracle: {'yes' if gap <= 0.01 else 'no'}; "
      f"SSR-D above the DNN: {'yes' if s['auc'] > d['auc'] else 'no'} ({s['auc'] - d['auc']:+.5f}; "
      f"DeLong p = {c['p_value']:.2f}, {noise} test-set noise)")
PY
echo "demo finished in $(( $(date +%s) - start )) s"
