"""`ssr_tf bench ics_start`: what ICS keeps at initialisation and in the first training steps.

Trains a config's SSR model (the training optimizer, the config's batch size) for
``--steps`` steps and, at step 0 and at the ``--at`` steps, scores one fixed validation
batch and reports per SSR layer and view:

  zeros       share of exact zeros in the view's filter output h (ICS: of its d_v* dims),
  dead        views whose h is zero for every example of the batch,
  near_dead   views with more than 95% zeros,
  relu_zeros  share of zeros of ReLU(z) alone (z = x W_proj, before the competition),

and, at step 0, the zeros share with W_proj scaled by each of ``--scales``. ICS is
positively homogeneous (ICS(c z) = c ICS(z) for c > 0: the mean and the subtracted
alpha * mean scale with z), so the zero pattern cannot depend on W_proj's initial scale;
the scale row checks that on the real weights.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import tensorflow as tf

from ssr_tf import data as data_lib
from ssr_tf import optimizers, task
from ssr_tf.callbacks import filter_stage, filtered_views, ssr_layers
from ssr_tf.config import load_config
from ssr_tf.errors import UserError

NEAR_DEAD = 0.95


def view_stats(h: tf.Tensor) -> dict:
  """h [batch, views, e] -> zeros share overall and per view, dead and near-dead views."""
  zero = (h.numpy() == 0.0)
  per_view = zero.mean(axis=(0, 2))
  return {"zeros": round(float(zero.mean()), 4),
          "zeros_per_view": [round(float(z), 4) for z in per_view],
          "dead": int(zero.all(axis=(0, 2)).sum()),
          "near_dead": int((per_view > NEAR_DEAD).sum())}


def relu_zeros(layer, x: tf.Tensor) -> float:
  """Share of zeros of ReLU(x W_proj): what the ReLU alone removes before competition."""
  z = tf.matmul(x, tf.reshape(layer.proj_kernel, [layer.input_dim, -1]))
  return round(float(tf.reduce_mean(tf.cast(z <= 0.0, tf.float32))), 4)


def snapshot(model, features: dict) -> list[dict]:
  out = []
  for layer, (x, h) in zip(ssr_layers(model), filter_stage(model, features)):
    row = view_stats(h)
    if layer.mode == "dynamic":
      row["relu_zeros"] = relu_zeros(layer, x)
    out.append(row)
  return out


def scale_check(model, features: dict, scales: list[float]) -> dict:
  """Zeros share per layer with every W_proj multiplied by each scale (restored after)."""
  layers = [l for l in ssr_layers(model) if l.mode == "dynamic"]
  saved = [l.proj_kernel.numpy() for l in layers]
  out = {}
  try:
    for c in scales:
      for l, w in zip(layers, saved):
        l.proj_kernel.assign(w * c)
      out[str(c)] = [view_stats(h)["zeros"] for h in filtered_views(model, features)]
  finally:
    for l, w in zip(layers, saved):
      l.proj_kernel.assign(w)
  return out


def main(argv: list[str], prog: str = "ssr_tf bench ics_start") -> int:
  p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
  p.add_argument("--config", required=True, help="experiment config of an SSR model")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  p.add_argument("--steps", type=int, default=1000)
  p.add_argument("--at", default="10,50,100,250,500,1000",
                 help="steps after which to measure (comma-separated)")
  p.add_argument("--probe_rows", type=int, default=2048)
  p.add_argument("--scales", default="0.1,1,10", help="W_proj scales checked at step 0")
  args = p.parse_args(argv)
  at = sorted({int(s) for s in args.at.split(",") if s.strip()})
  cfg = load_config(args.config, args.set)
  tf.keras.utils.set_random_seed(cfg.train.seed)
  spec, model = task.build(cfg)
  if not ssr_layers(model):
    raise UserError(f"--config {args.config}: model.name {cfg.model.name!r} has no SSR layers")
  model.compile(optimizer=optimizers.make_optimizer(cfg, model))
  probe = next(iter(data_lib.make_dataset(cfg.data.valid, spec, args.probe_rows,
                                          training=False, key="data.valid",
                                          compression=cfg.data.compression)))[0]
  train = iter(data_lib.make_dataset(cfg.data.train, spec, cfg.data.batch_size, training=True,
                                     key="data.train", compression=cfg.data.compression,
                                     seed=cfg.train.seed, shuffle_buffer=10_000,
                                     repeat=True))
  step_fn = tf.function(model.train_step)
  out = {"benchmark": "ics_start", "config": args.config, "model": cfg.model.name,
         "backbone": cfg.model.backbone, "seed": cfg.train.seed,
         "batch_size": cfg.data.batch_size, "probe_rows": args.probe_rows,
         "proj_scale_zeros_at_init": scale_check(model, probe,
                                                 [float(s) for s in args.scales.split(",")]),
         "steps": {"0": snapshot(model, probe)}}
  done = 0
  for target in at:
    if target > args.steps:
      break
    for _ in range(target - done):
      step_fn(next(train))
    done = target
    out["steps"][str(target)] = snapshot(model, probe)
  print(json.dumps(out))
  return 0
