"""`ssr_tf bench scale`: training examples/s and peak RSS as the embedding tables grow.

A Criteo-shaped model (26 hashed categoricals, 13 dense numerics, embedding dim 16) at
each total table size in ``--rows`` (split evenly over the 26 fields), for the DNN and
SSR-D backbones of `ssr_tf bench train`, through the optimizer `ssr_tf train` builds
(``--embedding_optimizer``, default lazy_adam). Every (model, size) runs in a fresh
process, so its peak RSS is its own. Batches are random ids drawn from a space far larger
than any table (1e9 values per field), built in memory (I/O excluded); timed steps follow
warm-up steps; then one training backup (model and optimizer slots, as
BackupAndRestore writes it) is timed and sized. Every case runs `--repeats` times, interleaved
with the others, and the fastest run is reported (the least disturbed by other load on the
machine; all rates are listed too). Ratios compare each size with the smallest, within
this one run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

NUM_CATEGORICAL = 26
NUM_NUMERIC = 13


def _spec(total_rows: int):
  from ssr_tf.features import Feature, FeatureSpec  # pylint: disable=import-outside-toplevel
  per_field = max(total_rows // NUM_CATEGORICAL, 1)
  feats = [Feature(name=f"I{i + 1}", type="numeric", dtype="float32", transform="dense")
           for i in range(NUM_NUMERIC)]
  feats += [Feature(name=f"C{i + 1}", type="categorical", hash_buckets=per_field)
            for i in range(NUM_CATEGORICAL)]
  return FeatureSpec(features=feats, labels={"click": "click"})


def _batches(batch_size: int, count: int, seed: int = 0) -> list:
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    features = {f"I{i + 1}": tf.constant(rng.normal(size=batch_size), tf.float32)
                for i in range(NUM_NUMERIC)}
    features.update({f"C{i + 1}": tf.constant(rng.integers(0, 10**9, batch_size), tf.int64)
                     for i in range(NUM_CATEGORICAL)})
    out.append((features, {"click": tf.constant(rng.integers(0, 2, batch_size), tf.int64)}))
  return out


def _worker(args) -> dict:
  """One (model, size) case, in this process; returns its figures."""
  # pylint: disable=import-outside-toplevel
  from ssr_tf.bench import common
  spec = _spec(args.size)
  model_cfg = common.model_config(common.MODELS[args.model], args.impl)
  start = time.perf_counter()
  result = common.train_rate(spec, model_cfg, _batches(args.batch_size, 8), args.steps,
                             embedding_optimizer=args.embedding_optimizer,
                             checkpoint_dir=tempfile.mkdtemp(prefix="ssr_tf_scale_"))
  rows = sum(f.table_size() for f in spec.features)
  return {"embedding_rows": rows, "embedding_bytes": rows * model_cfg.embedding_dim * 4,
          "examples_per_s": result["examples_per_s"],
          "step_ms": round(1000.0 * args.batch_size / result["examples_per_s"], 2),
          "backup_s": result["backup_s"], "backup_gib": result["backup_gib"],
          "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
          "wall_s": round(time.perf_counter() - start, 1)}


def main(argv: list[str], prog: str = "ssr_tf bench scale") -> int:
  p = argparse.ArgumentParser(prog=prog, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rows", default="26000,2600000,26000000",
                 help="total embedding rows per case, comma-separated (26000,2600000,26000000)")
  p.add_argument("--models", default="dnn,ssr_d", help="of ssr_s, ssr_d, dnn (dnn,ssr_d)")
  p.add_argument("--batch_size", type=int, default=1024)
  p.add_argument("--steps", type=int, default=30, help="timed steps per case (after 3 warm-up)")
  p.add_argument("--embedding_optimizer", default="lazy_adam",
                 help="lazy_adam (default) | adagrad | ftrl | adam")
  p.add_argument("--impl", default="auto", choices=["tf", "fused", "auto"])
  p.add_argument("--repeats", type=int, default=2,
                 help="runs of every case, interleaved; the fastest is reported (2)")
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  p.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument("--model", default="dnn", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    print(json.dumps(_worker(args)))
    return 0
  from ssr_tf.bench import common  # pylint: disable=import-outside-toplevel
  from ssr_tf.errors import ConfigError  # pylint: disable=import-outside-toplevel
  try:
    sizes = [int(x) for x in args.rows.split(",")]
  except ValueError:
    raise ConfigError(f"--rows: expected comma-separated integers, got {args.rows!r}") from None
  models = args.models.split(",")
  for m in models:
    if m not in common.MODELS:
      raise ConfigError(f"--models: {m!r} is not one of {', '.join(common.MODELS)}")
  runs: dict[tuple, list] = {}
  for rep in range(args.repeats):            # interleaved, so a busy spell hits every size
    for model in models:
      for size in sizes:
        cmd = [sys.executable, "-m", "ssr_tf", "bench", "scale", "--worker", "1",
               "--model", model, "--size", str(size), "--batch_size", str(args.batch_size),
               "--steps", str(args.steps), "--embedding_optimizer", args.embedding_optimizer,
               "--impl", args.impl]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if proc.returncode:
          raise RuntimeError(f"bench scale case {model} at {size} rows failed:\n"
                             f"{proc.stderr[-3000:]}")
        case = json.loads(proc.stdout.strip().splitlines()[-1])
        runs.setdefault((model, size), []).append(case)
        print(json.dumps({"model": model, "repeat": rep, **case}), file=sys.stderr)
  results: dict[str, list] = {}
  for model in models:
    for size in sizes:
      cases = runs[(model, size)]
      case = dict(max(cases, key=lambda c: c["examples_per_s"]))   # the least disturbed run
      case["examples_per_s_all"] = [c["examples_per_s"] for c in cases]
      case["peak_rss_gib"] = max(c["peak_rss_gib"] for c in cases)
      base = (results.get(model) or [case])[0]
      case["rate_ratio_vs_smallest"] = round(case["examples_per_s"] / base["examples_per_s"], 3)
      case["step_time_ratio_vs_smallest"] = round(case["step_ms"] / base["step_ms"], 3)
      results.setdefault(model, []).append(case)
  return common.emit({"benchmark": "scale", "cpu_count": os.cpu_count(),
                      "batch_size": args.batch_size, "steps": args.steps,
                      "repeats": args.repeats,
                      "embedding_optimizer": args.embedding_optimizer,
                      "embedding_dim": 16, "fields": NUM_CATEGORICAL + NUM_NUMERIC,
                      "models": results})
