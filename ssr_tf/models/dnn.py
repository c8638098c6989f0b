"""DNN baseline backbone: concat field embeddings -> MLP (the paper's "Dense MLP")."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import tensorflow as tf

from ssr_tf.models import registry
from ssr_tf.models.base import BackboneLayer
from ssr_tf.models.checks import Checks


@dataclasses.dataclass
class DNNBackboneConfig:
  """MLP settings (config key `model.backbone` when `model.name: dnn`).

  Attributes:
    hidden_units: widths of the hidden layers.
    activation: hidden activation.
    dropout: dropout after each hidden layer.
    batch_norm: BatchNormalization after each hidden layer.
  """
  hidden_units: list[int] = dataclasses.field(default_factory=lambda: [400, 400, 400])
  activation: str = "relu"
  dropout: float = 0.0
  batch_norm: bool = False

  def validate(self) -> None:
    c = Checks(self)
    c.widths("hidden_units", non_empty=True)
    c.rate("dropout")


def mlp_flops(input_dim: int, hidden_units) -> int:
  """FLOPs per example of Dense layers input_dim -> hidden_units (multiply-add = 2, + bias)."""
  d, total = input_dim, 0
  for u in hidden_units:
    total += 2 * d * u + u
    d = u
  return total


def field_rows(kernel: tf.Tensor, fields: Sequence[int], dim: int) -> tf.Tensor:
  """The rows of `kernel` ``[F * dim, ...]`` that multiply `fields` of a field-major
  flattened input (field f: rows f * dim .. f * dim + dim - 1), in the order given."""
  rows = (np.asarray(fields, np.int64)[:, None] * dim + np.arange(dim)).reshape(-1)
  if np.array_equal(rows, np.arange(rows[0], rows[0] + rows.size)):
    return kernel[int(rows[0]):int(rows[0]) + rows.size]      # one block: a slice
  return tf.gather(kernel, rows)


def split_product(context: tf.Tensor, candidates: tf.Tensor, context_index: Sequence[int],
                  kernel: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """(x_ctx W_ctx ``[R, H]``, x_cand W_cand ``[N, H]``), whose sum is x W for
  x = the fields of both in spec order; R is 1 (one context) or N.

  context: ``[R, Fc, dim]``, the fields at positions `context_index` (ascending);
  candidates: ``[N, F - Fc, dim]``, the other fields in spec order; kernel: ``[F * dim, H]``.
  """
  fc, fk, dim = int(context.shape[1]), int(candidates.shape[1]), int(context.shape[2])
  shared = set(context_index)
  rest = [i for i in range(fc + fk) if i not in shared]
  kernel = tf.cast(kernel, context.dtype)
  ctx = tf.matmul(tf.reshape(context, [-1, fc * dim]), field_rows(kernel, context_index, dim))
  cand = tf.matmul(tf.reshape(candidates, [-1, fk * dim]), field_rows(kernel, rest, dim))
  return ctx, cand


@tf.keras.utils.register_keras_serializable(package="ssr_tf")
class MLP(BackboneLayer):
  """[batch, ...] -> flatten -> (Dense -> [BN] -> act -> [Dropout]) x len(hidden_units).

  Takes DNNBackboneConfig's fields by keyword (see ssr_tf.models.base.BackboneLayer); the
  other backbones use it for their deep parts, naming every field they set.

  Example:
    >>> MLP(hidden_units=[32, 16])(tf.zeros([4, 5, 8])).shape   # [4, 16]
  """

  config_cls = DNNBackboneConfig

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    c = self.cfg
    self.hidden_units = list(c.hidden_units)
    self.blocks = []
    for i, units in enumerate(self.hidden_units):
      block = [tf.keras.layers.Dense(units, name=f"dense_{i}")]
      if c.batch_norm:
        block.append(tf.keras.layers.BatchNormalization(name=f"bn_{i}"))
      block.append(tf.keras.layers.Activation(c.activation))
      if c.dropout:
        block.append(tf.keras.layers.Dropout(c.dropout))
      self.blocks.append(block)

  def call(self, x, training=None):
    if x.shape.rank > 2:
      x = tf.reshape(x, [-1, x.shape[1:].num_elements()])
    for block in self.blocks:
      for layer in block:
        x = layer(x, training=training)
    return x

  def flops_per_example(self, num_fields: int, embedding_dim: int) -> int:
    return mlp_flops(num_fields * embedding_dim, self.hidden_units)

  splits_first_layer = True

  def split_first_layer(self, context: tf.Tensor, candidates: tf.Tensor,
                        context_index: Sequence[int]) -> tf.Tensor:
    """``call`` (inference) on fields given as a context part and a candidate part:
    x W + b = (x_ctx W_ctx + b) + x_cand W_cand, the context's term once per context.

    context: ``[1 or N, Fc, dim]``, the fields at positions `context_index` (ascending);
    candidates: ``[N, F - Fc, dim]``, the other fields in spec order. Returns ``[N, H]``.
    Used by context serving (ssr_tf/context.py) only.
    """
    dense = self.blocks[0][0]
    context = tf.cast(context, dense.compute_dtype)
    candidates = tf.cast(candidates, dense.compute_dtype)
    ctx, cand = split_product(context, candidates, context_index, dense.kernel)
    if dense.use_bias:
      ctx = tf.nn.bias_add(ctx, tf.cast(dense.bias, ctx.dtype))
    x = dense.activation(cand + ctx)                    # [N, H] + [1 or N, H]
    for layer in self.blocks[0][1:]:
      x = layer(x, training=False)
    for block in self.blocks[1:]:
      for layer in block:
        x = layer(x, training=False)
    return x


@registry.register("dnn", DNNBackboneConfig, doc="Dense MLP baseline")
def build(cfg: DNNBackboneConfig, num_fields: int, embedding_dim: int,
          tasks: tuple[str, ...]) -> tf.keras.layers.Layer:
  del num_fields, embedding_dim, tasks
  return MLP(**dataclasses.asdict(cfg), name="dnn_backbone")
