"""`ssr_tf bench hooks`: per-batch cost of the TensorBoard callback's batch hook, Keras's
stock TensorBoard vs ssr_tf's StepTensorBoard, against the train step of the same model.

Both hooks get the same model, train counter and logs (the model's training metrics, as
the tensors Keras passes); share_of_step = hook ms per batch / train step ms.
With --train_steps N, also whole `ssr_tf train` runs of N steps (input pipeline and
validation included), alternating the stock TensorBoard and StepTensorBoard as the run's
callback, --repeats times each after one warm-up run; reports the median seconds.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import pathlib
import statistics
import sys
import tempfile
import time

import tensorflow as tf

from ssr_tf import training
from ssr_tf.bench import common
from ssr_tf.callbacks import StepTensorBoard
from ssr_tf.config import ExperimentConfig, load_config
from ssr_tf.models.ranker import build_model


def hook_ms(callback: tf.keras.callbacks.TensorBoard, model: tf.keras.Model, logs: dict,
            steps: int) -> dict:
  """Times `steps` calls of callback.on_train_batch_end, advancing the train counter."""
  callback.set_model(model)
  callback.on_train_begin()
  seconds = []
  for batch in range(steps):
    model._train_counter.assign_add(1)  # pylint: disable=protected-access
    start = time.perf_counter()
    callback.on_train_batch_end(batch, logs)
    seconds.append(time.perf_counter() - start)
  callback.on_train_end()
  return {"first_batch_ms": round(1e3 * seconds[0], 2),
          "ms_per_batch": round(1e3 * sum(seconds[1:]) / (steps - 1), 4)}


def train_seconds(cfg: ExperimentConfig, data: pathlib.Path, steps: int, repeats: int,
                  work: pathlib.Path) -> dict:
  """Median wall seconds of `ssr_tf train` runs with each TensorBoard class as the run's own."""
  seconds = {"tensorboard_stock": [], "tensorboard_step": []}
  classes = {"tensorboard_stock": tf.keras.callbacks.TensorBoard,
             "tensorboard_step": StepTensorBoard}
  original = training.StepTensorBoard
  try:
    for i in range(repeats + 1):                     # run 0 of each is a warm-up
      for name, cls in classes.items():
        training.StepTensorBoard = cls
        run_cfg = dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, **common.data_paths(data)),
            train=dataclasses.replace(cfg.train, model_dir=str(work / name), epochs=1,
                                      steps_per_epoch=steps, verbose=0,
                                      early_stopping_patience=0))
        with contextlib.redirect_stdout(sys.stderr):    # keep stdout one JSON document
          result = training.train(run_cfg, overwrite=True)
        if i:
          seconds[name].append(result["seconds"])
  finally:
    training.StepTensorBoard = original
  return {name: {"runs_s": s, "median_s": statistics.median(s)} for name, s in seconds.items()}


def main(argv: list[str], prog: str = "ssr_tf bench hooks") -> int:
  p = argparse.ArgumentParser(prog=prog, description=__doc__)
  p.add_argument("--config", default="configs/demo_ssr_d.yaml",
                 help="experiment YAML whose model and batch size are measured")
  p.add_argument("--data", default=None, help="synthetic data dir (default: generate)")
  p.add_argument("--rows", type=int, default=20000, help="rows to generate without --data")
  p.add_argument("--steps", type=int, default=300, help="timed train steps and hook calls")
  p.add_argument("--update_freq", type=int, default=100, help="TensorBoard update_freq")
  p.add_argument("--train_steps", type=int, default=0,
                 help="also time whole `ssr_tf train` runs of this many steps (0: skip)")
  p.add_argument("--repeats", type=int, default=3, help="train runs per TensorBoard class")
  args = p.parse_args(argv)
  if args.steps < 2 or args.update_freq < 1 or args.train_steps < 0 or args.repeats < 1:
    p.error("need --steps >= 2, --update_freq >= 1, --train_steps >= 0, --repeats >= 1")
  cfg = load_config(args.config)
  data = common.ensure_data(args.data, args.rows)
  spec, batches = common.load_batches(data, cfg.data.batch_size, 8)
  step = common.train_rate(spec, cfg.model, batches, args.steps)
  step_ms = 1e3 * step["batch"] / step["examples_per_s"]
  model = build_model(spec, cfg.model)
  logs = {m.name: tf.constant(0.5) for m in model.metrics}
  work = pathlib.Path(tempfile.mkdtemp(prefix="ssr_tf_hooks_"))
  out = {"benchmark": "hooks", "cpu_count": os.cpu_count(), "config": args.config,
         "model": cfg.model.name, "batch_size": cfg.data.batch_size, "steps": args.steps,
         "update_freq": args.update_freq, "logged_metrics": len(logs),
         "train_step_ms": round(step_ms, 2)}
  for name, cls in (("tensorboard_stock", tf.keras.callbacks.TensorBoard),
                    ("tensorboard_step", StepTensorBoard)):
    r = hook_ms(cls(str(work / name), update_freq=args.update_freq), model, logs, args.steps)
    out[name] = {**r, "share_of_step": round(r["ms_per_batch"] / step_ms, 4)}
  out["stock_over_step_hook"] = round(out["tensorboard_stock"]["ms_per_batch"]
                                      / max(out["tensorboard_step"]["ms_per_batch"], 1e-6), 1)
  if args.train_steps:
    runs = train_seconds(cfg, data, args.train_steps, args.repeats, work)
    out["train_runs"] = {"steps": args.train_steps, **runs, "stock_over_step": round(
        runs["tensorboard_stock"]["median_s"] / runs["tensorboard_step"]["median_s"], 3)}
  return common.emit(out)
