"""`ssr_tf bench train`: training examples/s of ssr_s, ssr_d and dnn on the same batches."""
from __future__ import annotations

import argparse
import os

from ssr_tf.bench import common


def main(argv: list[str], prog: str = "ssr_tf bench train") -> int:
  p = argparse.ArgumentParser(prog=prog, description=__doc__)
  p.add_argument("--data", default=None, help="synthetic/converted data dir (default: generate)")
  p.add_argument("--rows", type=int, default=20000, help="rows to generate without --data")
  p.add_argument("--batch_size", type=int, default=1024)
  p.add_argument("--steps", type=int, default=30, help="timed steps per model")
  p.add_argument("--impl", default="tf", choices=["tf", "fused", "auto"])
  args = p.parse_args(argv)
  data_dir = common.ensure_data(args.data, args.rows)
  spec, batches = common.load_batches(data_dir, args.batch_size, 8)
  results = {name: common.train_rate(spec, common.model_config(entry, args.impl), batches,
                                     args.steps)
             for name, entry in common.MODELS.items()}
  base = results["dnn"]["examples_per_s"]
  for r in results.values():
    r["ratio_vs_dnn"] = round(r["examples_per_s"] / base, 3)
  return common.emit({"benchmark": "train", "cpu_count": os.cpu_count(), "impl": args.impl,
                      "num_fields": len(spec.features), "models": results})
