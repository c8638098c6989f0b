"""Scores serialized tf.Example records through an exported SavedModel, as TF Serving would.

Deliberately imports only TensorFlow (not ssr_tf): the export must stand on its own.
Usage: python scripts/score_saved_model.py EXPORT_DIR/VERSION TFRECORD [N]
"""
import json
import sys

import tensorflow as tf


def main() -> int:
  export_dir, shard = sys.argv[1], sys.argv[2]
  n = int(sys.argv[3]) if len(sys.argv) > 3 else 5
  model = tf.saved_model.load(export_dir)
  records = [r.numpy() for r in tf.data.TFRecordDataset(shard).take(n)]
  out = model.signatures["serving_default"](examples=tf.constant(records))
  for i in range(len(records)):
    example = tf.train.Example.FromString(records[i])
    click = example.features.feature["click"].float_list.value[0]
    scores = {k: round(float(v[i]), 4) for k, v in sorted(out.items())}  # click_prob[, pay_prob]
    print(json.dumps({"record": i, **scores, "label_click": click}))
  assert "ssr_tf" not in sys.modules
  return 0


if __name__ == "__main__":
  sys.exit(main())
