"""`ssr_tf bench pipeline`: TFRecord read+parse rate next to the SSR-D training rate."""
from __future__ import annotations

import argparse
import os
import time

from ssr_tf import data as data_lib
from ssr_tf.bench import common
from ssr_tf.features import load_spec


def parse_rate(data_dir, spec, batch_size: int) -> dict:
  """Records/s of the whole input pipeline (list, interleave, shuffle, batch, parse)."""
  ds = data_lib.make_dataset(str(data_dir / "train/*"), spec, batch_size, training=True,
                             shuffle_buffer=10000)
  for _ in ds.take(2):                           # warm-up
    pass
  start, n = time.perf_counter(), 0
  for _, labels in ds:
    n += int(labels["click"].shape[0])
  return {"records_per_s": round(n / (time.perf_counter() - start), 1), "records": n}


def main(argv: list[str], prog: str = "ssr_tf bench pipeline") -> int:
  p = argparse.ArgumentParser(prog=prog, description=__doc__)
  p.add_argument("--data", default=None, help="data dir (default: generate)")
  p.add_argument("--rows", type=int, default=50000)
  p.add_argument("--batch_size", type=int, default=1024)
  p.add_argument("--steps", type=int, default=30)
  args = p.parse_args(argv)
  data_dir = common.ensure_data(args.data, args.rows)
  spec = load_spec(str(data_dir / "spec.yaml"))
  parse = parse_rate(data_dir, spec, args.batch_size)
  _, batches = common.load_batches(data_dir, args.batch_size, 8)
  train = common.train_rate(spec, common.model_config(common.MODELS["ssr_d"]), batches,
                            args.steps)
  return common.emit({
      "benchmark": "pipeline", "cpu_count": os.cpu_count(), "batch_size": args.batch_size,
      "parse": parse, "train_ssr_d": train,
      "parse_over_train": round(parse["records_per_s"] / train["examples_per_s"], 2)})
