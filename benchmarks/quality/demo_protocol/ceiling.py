"""Learnable ceiling of the demo data: fit the generator's own functional form.

The oracle AUC uses the true probabilities, which no learner can know from finite rows.
This script asks how close a learner can get when it is handed the *exact structure* of
`ssr_tf.synth.generate` (default mode) and has to estimate only its parameters from the
same training rows the demo models see, through the same observed features (price as the
spec's log1p bucket, not the true price):

  logit = b + pos[position] + sum_c G[scene, c] * comp_c, with
  comp_aff = <U[user], C[category]> (rank = clusters), comp_hd = HD[hour, device],
  comp_price = s[user] * v[price bucket], comp_hist = sum_j M[hist_j, category],
  comp_quality = q[item].

Its test click AUC is a reference for what is learnable from these rows: the gap from it
to the oracle is the cost of estimating the truth from 480K rows, and the gap from a
backbone to it is what that backbone fails to learn. `--noise_terms` also learns a bias per
value of each noise field (true effect 0), to price the spurious effects a model fits.
`--noise_fields` matches `ssr_tf data synth --noise_fields`. Prints one JSON line.

  .venv/bin/python benchmarks/quality/demo_protocol/ceiling.py --rows 600000 --seed 0
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ssr_tf import metrics, synth  # noqa: E402
from ssr_tf.features import Feature, FeatureSpec  # noqa: E402
from ssr_tf.layers.embedding import FeatureEncoder  # noqa: E402


def price_feature(cfg: synth.SynthConfig) -> Feature:
  """The spec's `price` feature (log_bucketize), as the demo models read it."""
  return next(f for f in synth.spec_for(cfg, "vocab").features if f.name == "price")


def observed(cols: dict, cfg: synth.SynthConfig) -> dict[str, np.ndarray]:
  """The signal fields as the demo models' inputs encode them (price -> the spec's bucket
  id, through the models' own FeatureEncoder)."""
  price = price_feature(cfg)
  hist = cols["history_categories"]
  return {
      "scene": cols["scene"], "user": cols["user_id"], "item": cols["item_id"],
      "cat": cols["item_category"], "hour": cols["hour"], "device": cols["device"],
      "position": cols["position"],
      "price_bucket": FeatureEncoder(FeatureSpec([price])).encode(price, cols["price"]).numpy(),
      "hist": np.where(hist >= 0, hist, cfg.num_categories),     # padding = extra row
      "noise": np.stack([cols[f"noise_{j}"] for j in range(cfg.noise_fields)], -1)
               if cfg.noise_fields else np.zeros([len(hist), 0], np.int64),
  }


class Structural(tf.Module):
  """The generator's click-logit form with every table learned."""

  def __init__(self, cfg: synth.SynthConfig, num_price_buckets: int, seed: int,
               noise_terms: bool = False):
    init = tf.random_normal_initializer(0.0, 0.1, seed=seed)
    k, ncat = cfg.clusters, cfg.num_categories
    self.bias = tf.Variable(-1.6)
    self.pos = tf.Variable(tf.zeros([8]))
    self.gates = tf.Variable(tf.ones([cfg.scenes, 5]))
    self.user = tf.Variable(init([cfg.num_users, k]))
    self.cat = tf.Variable(init([ncat, k]))
    self.hour_device = tf.Variable(tf.zeros([24, 5]))
    self.slope = tf.Variable(init([cfg.num_users]))
    self.price = tf.Variable(init([num_price_buckets]))
    self.hist = tf.Variable(tf.zeros([ncat + 1, ncat]))     # row ncat = padding
    self.quality = tf.Variable(tf.zeros([cfg.num_items]))
    self.num_categories = ncat
    # Optional: a learned bias per value of every noise field (whose true effect is 0), to
    # measure what estimating spurious effects costs a model that is otherwise exact.
    self.noise = (tf.Variable(tf.zeros([cfg.noise_fields, cfg.noise_vocab]))
                  if noise_terms and cfg.noise_fields else None)

  def __call__(self, x: dict) -> tf.Tensor:
    aff = tf.reduce_sum(tf.gather(self.user, x["user"]) * tf.gather(self.cat, x["cat"]), -1)
    hd = tf.gather_nd(self.hour_device, tf.stack([x["hour"], x["device"]], -1))
    price = tf.gather(self.slope, x["user"]) * tf.gather(self.price, x["price_bucket"])
    rows = tf.gather(self.hist, x["hist"])                                   # [n, H, ncat]
    present = tf.cast(tf.not_equal(x["hist"], self.num_categories), tf.float32)
    hist = tf.reduce_sum(tf.gather(rows, x["cat"], axis=2, batch_dims=1) * present, -1)
    comps = tf.stack([aff, hd, price, hist, tf.gather(self.quality, x["item"])], -1)
    logit = (self.bias + tf.gather(self.pos, x["position"])
             + tf.reduce_sum(tf.gather(self.gates, x["scene"]) * comps, -1))
    if self.noise is not None:
      fields = tf.range(self.noise.shape[0], dtype=x["noise"].dtype)
      idx = tf.stack([tf.broadcast_to(fields, tf.shape(x["noise"])), x["noise"]], -1)
      logit += tf.reduce_sum(tf.gather_nd(self.noise, idx), -1)
    return logit


def fit(cfg, x_tr, y_tr, x_va, y_va, epochs: int, batch: int, lr: float, seed: int,
        noise_terms: bool):
  """Adam with cosine decay; returns (predict, validation AUC per epoch) of the model at
  its best validation AUC."""
  model = Structural(cfg, price_feature(cfg).table_size(), seed, noise_terms)
  n = len(y_tr)
  steps = epochs * (n // batch)
  sched = tf.keras.optimizers.schedules.CosineDecay(lr, steps)
  opt = tf.keras.optimizers.Adam(sched)
  variables = model.trainable_variables

  @tf.function
  def step(xb, yb):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(yb, model(xb)))
    opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss

  predict = tf.function(lambda xb: tf.sigmoid(model(xb)))
  rng = np.random.default_rng(seed)
  best, best_values, curve = -1.0, None, []
  for _ in range(epochs):
    order = rng.permutation(n)
    for s in range(n // batch):
      idx = order[s * batch:(s + 1) * batch]
      step({k: v[idx] for k, v in x_tr.items()}, y_tr[idx])
    val = metrics.auc(y_va, predict(x_va).numpy())
    curve.append(round(float(val), 5))
    if val > best:
      best, best_values = val, [v.numpy() for v in variables]
  for v, value in zip(variables, best_values):
    v.assign(value)
  return predict, curve


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rows", type=int, default=600_000)
  p.add_argument("--seed", type=int, default=0, help="data seed (ssr_tf data synth --seed)")
  p.add_argument("--noise_fields", type=int, default=synth.SynthConfig.noise_fields,
                 help="ssr_tf data synth --noise_fields")
  p.add_argument("--train_seed", type=int, default=0)
  p.add_argument("--epochs", type=int, default=6)
  p.add_argument("--batch_size", type=int, default=1024)
  p.add_argument("--learning_rate", type=float, default=0.01)
  p.add_argument("--noise_terms", action="store_true",
                 help="also learn a bias per value of every noise field (true effect 0)")
  args = p.parse_args()
  start = time.time()
  cfg = synth.SynthConfig(rows=args.rows, seed=args.seed, noise_fields=args.noise_fields)
  cols = synth.generate(cfg)
  split = synth.split_ids(cfg.rows, cfg.seed)
  x = observed(cols, cfg)
  part = {name: np.flatnonzero(split == s) for s, name in enumerate(("train", "valid", "test"))}
  xs = {name: {k: v[rows] for k, v in x.items()} for name, rows in part.items()}
  ys = {name: cols["click"][rows].astype(np.float32) for name, rows in part.items()}
  tf.random.set_seed(args.train_seed)
  predict, curve = fit(cfg, xs["train"], ys["train"], xs["valid"], ys["valid"],
                          args.epochs, args.batch_size, args.learning_rate, args.train_seed,
                          args.noise_terms)
  test = metrics.auc(ys["test"], predict(xs["test"]).numpy())
  oracle = metrics.auc(ys["test"], cols["oracle_click"][part["test"]])
  print(json.dumps({
      "rows": args.rows, "data_seed": args.seed, "noise_fields": args.noise_fields,
      "train_rows": len(part["train"]),
      "train_seed": args.train_seed, "epochs": args.epochs, "batch_size": args.batch_size,
      "learning_rate": args.learning_rate, "noise_terms": args.noise_terms,
      "val_click_auc_per_epoch": curve,
      "structural_test_click_auc": round(float(test), 5),
      "oracle_test_click_auc": round(float(oracle), 5),
      "gap_to_oracle": round(float(oracle - test), 5),
      "seconds": round(time.time() - start, 1)}))


if __name__ == "__main__":
  main()
