"""Optimizers of `ssr_tf train`: one rule for the embedding tables, another for the rest.

``train.embedding_optimizer`` updates the embedding tables (variables whose name matches
``distribution.embedding_pattern``, ``emb_<feature>``); every other weight uses
``train.optimizer``. Both are TF-Keras (OptimizerV2) optimizers composed by TFRS'
:class:`CompositeOptimizer`, so a table's update costs O(rows in the batch), not O(rows in
the table):

* ``lazy_adam``: Adam on the rows a batch touches only (their m, v and values), with the
  bias correction of the global step: for touched rows r,
  m_r = b1 m_r + (1 - b1) g_r, v_r = b2 v_r + (1 - b2) g_r^2,
  w_r -= lr sqrt(1 - b2^t) / (1 - b1^t) m_r / (sqrt(v_r) + eps); other rows keep w, m, v.
* ``adagrad`` / ``ftrl``: TensorFlow's sparse kernels (ResourceSparseApplyAdagradV2 /
  ResourceSparseApplyFtrl), which touch the batch's rows only.
* ``adam``: dense Adam semantics (every row's m and v decay every step; O(table) per step).

Duplicate ids in a batch are summed before the update (``tf.unique`` +
``tf.math.unsorted_segment_sum``, by OptimizerV2's ``_resource_apply_sparse_duplicate_indices``).
"""
from __future__ import annotations

import logging

import tensorflow as tf
from tensorflow_recommenders.experimental.optimizers import CompositeOptimizer

from ssr_tf import distribute
from ssr_tf.config import EMBEDDING_OPTIMIZERS, ExperimentConfig
from ssr_tf.errors import ConfigError


class LazyAdam(tf.keras.optimizers.legacy.Adam):
  """Adam whose sparse update touches only the rows in the gradient (see module doc).

  A dense gradient is refused: it means a table was read by something other than a
  gather, and would silently turn every step into a whole-table update.
  """

  def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
    var_device, var_dtype = var.device, var.dtype.base_dtype
    coef = ((apply_state or {}).get((var_device, var_dtype))
            or self._fallback_apply_state(var_device, var_dtype))
    m = self.get_slot(var, "m")
    v = self.get_slot(var, "v")
    m_rows = (coef["beta_1_t"] * tf.gather(m, indices)
              + coef["one_minus_beta_1_t"] * grad)
    v_rows = (coef["beta_2_t"] * tf.gather(v, indices)
              + coef["one_minus_beta_2_t"] * tf.square(grad))
    step = coef["lr"] * m_rows / (tf.sqrt(v_rows) + coef["epsilon"])
    return tf.group(self._resource_scatter_update(m, indices, m_rows),
                    self._resource_scatter_update(v, indices, v_rows),
                    var.scatter_sub(tf.IndexedSlices(step, indices)))   # one pass over the rows

  def _resource_apply_dense(self, grad, var, apply_state=None):
    raise ConfigError(
        f"config key 'train.embedding_optimizer': lazy_adam received a dense gradient for "
        f"{var.name} {list(var.shape)}: the table is read by something other than a "
        "gather, so every step would update every row. Read tables with "
        "tf.nn.embedding_lookup / tf.gather, or use embedding_optimizer: adam")


_EMBEDDING_CLASSES = {"lazy_adam": LazyAdam, "adagrad": tf.keras.optimizers.legacy.Adagrad,
                      "ftrl": tf.keras.optimizers.legacy.Ftrl,
                      "adam": tf.keras.optimizers.legacy.Adam}
assert tuple(_EMBEDDING_CLASSES) == EMBEDDING_OPTIMIZERS
_DENSE_CLASSES = {"adam": tf.keras.optimizers.legacy.Adam,
                  "adagrad": tf.keras.optimizers.legacy.Adagrad}


def slot_initial_values(optimizer: tf.keras.optimizers.legacy.Optimizer) -> dict[str, float]:
  """{slot name: the value a never-updated row holds} (what an evicted row is reset to)."""
  if isinstance(optimizer, tf.keras.optimizers.legacy.Adagrad):
    return {"accumulator": float(optimizer._initial_accumulator_value)}  # pylint: disable=protected-access
  if isinstance(optimizer, tf.keras.optimizers.legacy.Ftrl):
    return {"accumulator": float(optimizer._initial_accumulator_value),  # pylint: disable=protected-access
            "linear": 0.0}
  return {name: 0.0 for name in optimizer.get_slot_names()}


class RankingOptimizer(CompositeOptimizer):
  """``train.optimizer`` for dense weights, ``train.embedding_optimizer`` for the tables.

  Args:
    dense: the optimizer of every weight that is not an embedding table.
    embedding: the optimizer of the embedding tables.
    model: the model whose trainable variables are split.
    pattern: regular expression on variable names that marks the tables.
  """

  def __init__(self, dense, embedding, model: tf.keras.Model, pattern: str,
               name: str = "RankingOptimizer"):
    self.pattern = pattern
    super().__init__([(dense, lambda: self.split(model.trainable_variables)[0]),
                      (embedding, lambda: self.split(model.trainable_variables)[1])], name=name)

  def split(self, variables) -> tuple[list, list]:
    """(dense weights, embedding tables) of `variables`."""
    dense, tables = [], []
    for v in variables:
      (tables if distribute.matches(self.pattern, v.name) else dense).append(v)
    return dense, tables

  @property
  def dense_optimizer(self):
    return self.optimizers[0]

  @property
  def embedding_optimizer(self):
    return self.optimizers[1]

  @property
  def learning_rate(self) -> tf.Tensor:
    """The dense weights' learning rate at the latest step (its schedule's value there)."""
    rate = self.dense_optimizer._get_hyper("learning_rate")  # pylint: disable=protected-access
    if callable(rate):
      rate = rate(tf.maximum(self.iterations - 1, 0))
    return tf.convert_to_tensor(rate)

  @property
  def sparse_report(self) -> dict:
    out = {}
    for opt in self.optimizers:
      out.update(getattr(opt, "sparse_report", {}))
    return out



def reset_rows(optimizer, table: tf.Variable, rows: tf.Tensor) -> None:
  """Resets `optimizer`'s slots of `rows` of `table` to their initial values, creating
  the slots if needed (a dynamic-id row given to a new id); a RankingOptimizer resets its
  embedding optimizer's."""
  if isinstance(optimizer, RankingOptimizer):
    optimizer = optimizer.embedding_optimizer
  if not isinstance(optimizer, tf.keras.optimizers.legacy.Optimizer):
    raise ConfigError("dynamic ids need the optimizers of ssr_tf.optimizers (their slots "
                      f"are reset when a row changes owner); got {type(optimizer).__name__}")
  with tf.init_scope():
    optimizer._create_all_weights([table])  # pylint: disable=protected-access
  rows = tf.cast(rows, tf.int64)
  for name, value in slot_initial_values(optimizer).items():
    slot = optimizer.get_slot(table, name)
    fill = tf.fill(tf.stack([tf.size(rows), tf.shape(slot)[1]]), tf.constant(value, slot.dtype))
    slot.scatter_update(tf.IndexedSlices(fill, rows))


def make_optimizer(cfg: ExperimentConfig, model: tf.keras.Model, learning_rate=None,
                   embedding_learning_rate=None, distributed: bool = False) -> RankingOptimizer:
  """The optimizer `ssr_tf train` compiles `model` with (see the module docstring).

  `learning_rate` / `embedding_learning_rate`: floats or schedules (default: the config's
  rates). `distributed` mixes in replica-mean, sparse-checked gradient aggregation.
  """
  t = cfg.train
  lr = t.learning_rate if learning_rate is None else learning_rate
  if embedding_learning_rate is None:
    embedding_learning_rate = t.embedding_learning_rate or t.learning_rate

  def build(cls, rate, name):
    if distributed:
      return distribute.distributed_optimizer(cls, cfg.distribution, learning_rate=rate,
                                              name=name)
    return cls(learning_rate=rate, name=name)

  dense = build(_DENSE_CLASSES[t.optimizer], lr, "dense")
  embedding = build(_EMBEDDING_CLASSES[t.embedding_optimizer], embedding_learning_rate,
                    "embedding")
  if t.embedding_optimizer == "adam":
    logging.warning("train.embedding_optimizer: adam decays every row's moments every step "
                    "(step cost grows with the table size); lazy_adam updates the batch's "
                    "rows only")
  return RankingOptimizer(dense, embedding, model, cfg.distribution.embedding_pattern)
