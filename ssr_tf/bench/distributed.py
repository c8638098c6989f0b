"""`ssr_tf bench distributed`: training examples/s per strategy, checkpoint seconds vs size.

Throughput: the same data, model (SSR-D, demo size) and global batch trained (1) on one
device, (2) with MirroredStrategy over 2 logical CPU devices and (3) with
MultiWorkerMirroredStrategy over 2 worker processes on 127.0.0.1; each case runs in
fresh processes, warms up, then times `--steps` steps of Keras fit on the same input
pipeline `ssr_tf train` uses. On a CPU-only host the replicas share the same cores, so
(2) and (3) measure the cost of distribution (all-reduce, per-replica dispatch, gRPC),
not a speed-up; on GPUs or real machines each replica brings its own device.

Checkpoints: save (CheckpointManager: data files, then the index) and restore seconds of
an embedding-dominated model state (tables + Adam slots) at growing sizes.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

PROG_NOTE = ("CPU-only host: the 2 logical devices and the 2 local workers share the same "
             "cores as the single device, so their figures show distribution overhead "
             "(all-reduce, per-replica dispatch, gRPC between processes), not speed-up")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _worker(args) -> dict:
  """One process of one throughput case (runs in a fresh process)."""
  # pylint: disable=import-outside-toplevel
  import tensorflow as tf

  from ssr_tf import data as data_lib, distribute, optimizers, task, training
  from ssr_tf.bench import common
  from ssr_tf.config import DataConfig, DistributionConfig, ExperimentConfig

  data_dir = pathlib.Path(args.data)
  cfg = ExperimentConfig(
      data=DataConfig(spec=str(data_dir / "spec.yaml"), train=str(data_dir / "train/*"),
                      batch_size=args.batch_size, shuffle_buffer=2000, deterministic=True),
      model=common.model_config(common.MODELS[args.model]),
      distribution=DistributionConfig(strategy=args.strategy,
                                      num_logical_cpu_devices=args.logical_devices))
  distribute.configure_devices(cfg.distribution)
  strategy = distribute.make_strategy(cfg.distribution)
  tf.keras.utils.set_random_seed(0)
  with strategy.scope(), distribute.variable_names():
    spec, model = task.build(cfg)
    model.compile(optimizer=optimizers.make_optimizer(
        cfg, model, distributed=args.strategy != "default"))
  files = data_lib.list_files(cfg.data.train, "data.train")
  counts = data_lib.count_records(files)
  train_in, _ = training.inputs(cfg, spec, strategy, args.batch_size, 0, counts, None)
  model.fit(train_in, epochs=1, steps_per_epoch=args.warmup, verbose=0)
  start = time.perf_counter()
  model.fit(train_in, epochs=1, steps_per_epoch=args.steps, verbose=0)
  seconds = time.perf_counter() - start
  return {"seconds": seconds, "replicas": strategy.num_replicas_in_sync,
          "task": distribute.describe(strategy)["task"]}


def _run_case(args, strategy: str, logical: int = 0, workers: int = 1) -> dict:
  """Runs one throughput case in `workers` fresh processes; examples/s of the slowest."""
  base = [sys.executable, "-m", "ssr_tf.bench.distributed", "--role", "worker",
          "--data", str(args.data), "--batch_size", str(args.batch_size),
          "--steps", str(args.steps), "--warmup", str(args.warmup), "--model", args.model,
          "--strategy", strategy, "--logical_devices", str(logical)]
  env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
  env.pop("TF_CONFIG", None)
  cluster = {"worker": [f"127.0.0.1:{_free_port()}" for _ in range(workers)]}
  procs = []
  for i in range(workers):
    if workers > 1:
      env = {**env, "TF_CONFIG": json.dumps({"cluster": cluster,
                                             "task": {"type": "worker", "index": i}})}
    procs.append(subprocess.Popen(base, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env))
  results = []
  for p in procs:
    out, err = p.communicate(timeout=1800)
    if p.returncode != 0:
      raise RuntimeError(f"{strategy} worker failed:\n{err[-3000:]}")
    results.append(json.loads(out.strip().splitlines()[-1]))
  seconds = max(r["seconds"] for r in results)
  return {"examples_per_s": round(args.steps * args.batch_size / seconds, 1),
          "seconds": round(seconds, 3), "steps": args.steps, "global_batch": args.batch_size,
          "replicas": results[0]["replicas"], "processes": workers}


def checkpoint_timing(rows_list: list[int], dim: int, repeats: int = 3) -> list[dict]:
  """Save / restore seconds of tables of `rows` x `dim` floats plus two Adam slots each."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  out = []
  for rows in rows_list:
    state = tf.Module()
    state.table = tf.Variable(tf.random.uniform([rows, dim]))
    state.m = tf.Variable(tf.zeros([rows, dim]))
    state.v = tf.Variable(tf.zeros([rows, dim]))
    ckpt = tf.train.Checkpoint(state=state)
    with tempfile.TemporaryDirectory() as tmp:
      manager = tf.train.CheckpointManager(ckpt, tmp, max_to_keep=1)
      manager.save()                                      # trace the save function
      saves, restores = [], []
      for _ in range(repeats):
        start = time.perf_counter()
        path = manager.save()
        saves.append(time.perf_counter() - start)
        start = time.perf_counter()
        ckpt.restore(path).assert_consumed()
        restores.append(time.perf_counter() - start)
      size = sum(f.stat().st_size for f in pathlib.Path(tmp).iterdir() if f.is_file())
    params = 3 * rows * dim
    out.append({"rows": rows, "dim": dim, "params_incl_adam_slots": params,
                "megabytes_on_disk": round(size / 2 ** 20, 2),
                "save_s": round(float(np.median(saves)), 4),
                "restore_s": round(float(np.median(restores)), 4)})
  return out


def main(argv: list[str], prog: str = "ssr_tf bench distributed") -> int:
  p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
  p.add_argument("--data", default=None, help="synthetic/converted data dir (default: generate)")
  p.add_argument("--rows", type=int, default=20000, help="rows to generate without --data")
  p.add_argument("--batch_size", type=int, default=512, help="global batch")
  p.add_argument("--steps", type=int, default=30, help="timed steps per case")
  p.add_argument("--warmup", type=int, default=5, help="untimed steps first (tracing)")
  p.add_argument("--model", default="ssr_d", choices=["ssr_s", "ssr_d", "dnn"])
  p.add_argument("--checkpoint_rows", default="10000,100000,1000000",
                 help="embedding rows of the checkpoint-timing states (comma-separated)")
  p.add_argument("--checkpoint_dim", type=int, default=16)
  p.add_argument("--skip", default="", help="comma-separated cases to skip: "
                 "single,mirrored,multi_worker,checkpoint")
  p.add_argument("--role", default="main", choices=["main", "worker"], help=argparse.SUPPRESS)
  p.add_argument("--strategy", default="default", help=argparse.SUPPRESS)
  p.add_argument("--logical_devices", type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.role == "worker":
    print(json.dumps(_worker(args)))
    return 0
  from ssr_tf.bench import common  # pylint: disable=import-outside-toplevel
  args.data = common.ensure_data(args.data, args.rows)
  skip = set(filter(None, args.skip.split(",")))
  result: dict = {"benchmark": "distributed", "cpu_count": os.cpu_count(), "note": PROG_NOTE,
                  "model": args.model, "throughput": {}}
  cases = (("single", "single_device", "default", 0, 1),
           ("mirrored", "mirrored_2_logical_cpus", "mirrored", 2, 1),
           ("multi_worker", "multi_worker_2_local_processes", "multi_worker_mirrored", 0, 2))
  for key, name, strategy, logical, workers in cases:
    if key not in skip:
      result["throughput"][name] = _run_case(args, strategy, logical, workers)
  base = result["throughput"].get("single_device", {}).get("examples_per_s")
  for r in result["throughput"].values():
    if base:
      r["vs_single_device"] = round(r["examples_per_s"] / base, 3)
  if "checkpoint" not in skip:
    rows = [int(r) for r in args.checkpoint_rows.split(",") if r]
    result["checkpoint"] = checkpoint_timing(rows, args.checkpoint_dim)
  print(json.dumps(result, indent=2))
  return 0


if __name__ == "__main__":
  import ssr_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
  sys.exit(main(sys.argv[1:], prog="python -m ssr_tf.bench.distributed"))
