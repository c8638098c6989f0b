"""A tiny SavedModel with the ssr_tf export contract's signatures (tests, smoke runs).

The export contract (``ssr_tf export``) writes ``<base>/<version>/`` with two signatures:

* ``serving_default``: ``examples`` (DT_STRING ``[batch]``, serialized tf.Example) ->
  ``click_prob``, ``pay_prob`` (float32 ``[batch]``);
* ``predict_raw``: one tensor per feature (int64 / string / float32 ``[batch]``,
  multi-valued ``[batch, max_len]``) -> the same outputs.

:func:`build_toy_model` writes a model with exactly that interface over five features
(``user_id``, ``item_id`` int64; ``city`` string; ``price`` float32; ``history`` int64
multi-valued, ``max_len`` 4) and a small embedding + MLP computation, so the server can
be tested without training anything. Different ``seed`` values give different weights,
which lets hot-reload tests tell versions apart.
"""
from __future__ import annotations

import os

import ssr_tf  # noqa: F401  (Keras 2 / TF log level before TensorFlow loads)
import numpy as np
import tensorflow as tf

HISTORY_LEN = 4
BUCKETS = 97
DIM = 8
# name -> (tf dtype, max_len or 0 for single-valued)
TOY_FEATURES: dict[str, tuple[tf.DType, int]] = {
    "user_id": (tf.int64, 0),
    "item_id": (tf.int64, 0),
    "city": (tf.string, 0),
    "price": (tf.float32, 0),
    "history": (tf.int64, HISTORY_LEN),
}


def _raw_specs() -> dict[str, tf.TensorSpec]:
  return {name: tf.TensorSpec([None, n] if n else [None], dtype, name=name)
          for name, (dtype, n) in TOY_FEATURES.items()}


class ToyRanker(tf.Module):
  """Embeddings of four categorical features + price -> MLP -> click and pay heads."""

  def __init__(self, seed: int = 0):
    super().__init__(name="toy_ranker")
    rng = np.random.default_rng(seed)
    init = lambda *shape: tf.Variable(rng.normal(0.0, 0.5, shape).astype(np.float32))
    self.tables = {k: init(BUCKETS, DIM) for k in ("user_id", "item_id", "city", "history")}
    self.w1 = init(4 * DIM + 1, 16)
    self.b1 = init(16)
    self.w_click = init(16, 1)
    self.w_cvr = init(16, 1)

  def _score(self, f: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    ids = {
        "user_id": tf.math.floormod(f["user_id"], BUCKETS),
        "item_id": tf.math.floormod(f["item_id"], BUCKETS),
        "city": tf.strings.to_hash_bucket_fast(f["city"], BUCKETS),
    }
    parts = [tf.gather(self.tables[k], v) for k, v in ids.items()]   # 3 x [batch, DIM]
    hist = f["history"]                                               # [batch, L]
    mask = tf.cast(hist > 0, tf.float32)[..., None]                   # [batch, L, 1]
    pooled = tf.reduce_sum(tf.gather(self.tables["history"],
                                     tf.math.floormod(hist, BUCKETS)) * mask, axis=1)
    parts.append(pooled / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0))   # [batch, DIM]
    parts.append(tf.math.log1p(tf.abs(f["price"]))[:, None])             # [batch, 1]
    h = tf.nn.relu(tf.matmul(tf.concat(parts, axis=1), self.w1) + self.b1)   # [batch, 16]
    click = tf.sigmoid(tf.matmul(h, self.w_click))[:, 0]
    pay = click * tf.sigmoid(tf.matmul(h, self.w_cvr))[:, 0]
    return {"click_prob": click, "pay_prob": pay}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
  def serve_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
    spec = {
        "user_id": tf.io.FixedLenFeature([], tf.int64, default_value=0),
        "item_id": tf.io.FixedLenFeature([], tf.int64, default_value=0),
        "city": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "price": tf.io.FixedLenFeature([], tf.float32, default_value=0.0),
        "history": tf.io.RaggedFeature(tf.int64),
    }
    f = tf.io.parse_example(examples, spec)
    f["history"] = f["history"].to_tensor(default_value=0, shape=[None, HISTORY_LEN])
    return self._score(f)

  def raw_signature(self):
    """``predict_raw`` with one keyword argument per feature."""
    specs = _raw_specs()

    @tf.function(input_signature=list(specs.values()))
    def predict_raw(*args):
      return self._score(dict(zip(specs, args)))
    return predict_raw


def build_toy_model(base_path: str, version: int = 1, seed: int = 0) -> str:
  """Writes ``base_path/<version>/`` (a SavedModel with the contract's signatures)."""
  module = ToyRanker(seed)
  export_dir = os.path.join(base_path, str(version))
  tmp = export_dir + ".tmp"
  tf.saved_model.save(module, tmp, signatures={
      "serving_default": module.serve_examples.get_concrete_function(),
      "predict_raw": module.raw_signature().get_concrete_function(),
  })
  os.replace(tmp, export_dir)   # appears atomically, as a poller expects
  return export_dir


def toy_examples(n: int, seed: int = 0) -> list[bytes]:
  """``n`` serialized tf.Examples for the toy model (some features left missing)."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    feats = {
        "user_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(rng.integers(0, 1000))])),
        "item_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(rng.integers(0, 1000))])),
        "price": tf.train.Feature(float_list=tf.train.FloatList(value=[float(rng.gamma(2.0, 3.0))])),
        "history": tf.train.Feature(int64_list=tf.train.Int64List(
            value=rng.integers(1, 1000, int(rng.integers(0, 7))).tolist())),
    }
    if i % 3:
      feats["city"] = tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[f"city{rng.integers(0, 20)}".encode()]))
    out.append(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
  return out
