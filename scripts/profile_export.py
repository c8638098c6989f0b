"""CPU cost of one serving_default call of an export, by op type, as the server runs it.

Loads EXPORT_DIR/VERSION with the TF1 loader into a session with one intra-op and one
inter-op thread (the `ssr_tf serve` default per session slot), feeds N serialized
tf.Examples from TFRECORD, and prints one JSON object: mean wall ms per call and the
traced ms per op type (FULL_TRACE step stats averaged over the traced calls).

Usage: python scripts/profile_export.py EXPORT_DIR/VERSION 'TFRECORD_GLOB' [N] [--fused]
(--fused loads ssr_tf.ops first, for exports written with `ssr_tf export --fused`).
"""
import collections
import glob
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402
from tensorflow.core.protobuf import config_pb2  # noqa: E402

TIMED_CALLS = 200
TRACED_CALLS = 20


def _records(pattern: str, n: int) -> list[bytes]:
  out: list[bytes] = []
  for path in sorted(glob.glob(pattern)):
    gz = "GZIP" if path.endswith(".gz") else ""
    for rec in tf.data.TFRecordDataset(path, compression_type=gz).take(n - len(out)):
      out.append(rec.numpy())
    if len(out) >= n:
      return out
  raise SystemExit(f"{pattern}: fewer than {n} records")


def main(argv: list[str]) -> int:
  args = [a for a in argv if a != "--fused"]
  if len(args) < 2:
    raise SystemExit(__doc__)
  export_dir, pattern = args[0], args[1]
  n = int(args[2]) if len(args) > 2 else 128
  if "--fused" in argv:
    import ssr_tf.ops  # pylint: disable=import-outside-toplevel
    if not ssr_tf.ops.is_available():            # loads ops/_ssr_ops.so (registers the ops)
      raise SystemExit(f"--fused: the op library did not load: {ssr_tf.ops.load_error()}")
  records = _records(pattern, n)
  config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1,
                                    inter_op_parallelism_threads=1)
  graph = tf.Graph()
  with graph.as_default(), tf.compat.v1.Session(config=config) as sess:
    meta = tf.compat.v1.saved_model.load(sess, ["serve"], export_dir)
    sig = meta.signature_def["serving_default"]
    feed = sig.inputs["examples"].name
    fetches = [sig.outputs[k].name for k in sorted(sig.outputs)]
    call = sess.make_callable(fetches, [feed])
    for _ in range(20):
      call(records)
    start = time.perf_counter()
    for _ in range(TIMED_CALLS):
      call(records)
    mean_ms = (time.perf_counter() - start) * 1e3 / TIMED_CALLS
    by_op: collections.Counter = collections.Counter()
    nodes = 0
    options = config_pb2.RunOptions(trace_level=config_pb2.RunOptions.FULL_TRACE)
    for _ in range(TRACED_CALLS):
      run_meta = config_pb2.RunMetadata()
      sess.run(fetches, {feed: records}, options=options, run_metadata=run_meta)
      for dev in run_meta.step_stats.dev_stats:
        for node in dev.node_stats:
          label = node.timeline_label
          op = label.split("=")[-1].split("(")[0].strip() if "=" in label else node.node_name
          by_op[op] += node.all_end_rel_micros / 1e3 / TRACED_CALLS
          nodes += 1
  top = {op: round(ms, 3) for op, ms in by_op.most_common(12)}
  print(json.dumps({"export": export_dir, "candidates": n, "intra_op_threads": 1,
                    "mean_ms_per_call": round(mean_ms, 3),
                    "traced_ms_per_call": round(sum(by_op.values()), 3),
                    "nodes_per_call": nodes // TRACED_CALLS, "top_ops_ms": top,
                    "loadavg": os.getloadavg()}, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
