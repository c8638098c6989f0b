"""DeepFM backbone (Guo et al., 2017, "DeepFM: a factorization-machine based neural network
for CTR prediction", arXiv:1703.04247).

y = w . [MLP(concat(e)), fm_1, fm_2] + b;  fm_1 = w_lin . concat(e);
fm_2 = 1/2 sum_k ((sum_i e_ik)^2 - sum_i e_ik^2).

The FM and the deep part share the field embeddings e_i (as in the paper). The backbone
returns ``[batch, H + 2]``: the MLP output with the first-order and second-order FM terms
appended, so the ranker's linear head computes w.deep + a fm_1 + c fm_2 + b; the paper's
unit weights on fm_1 and fm_2 are one point of that family. The first-order term is
linear in the embeddings (each field's one-hot weight w_f[v] = w_lin . e_f[v]).
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from ssr_tf.models import registry
from ssr_tf.models.base import BackboneLayer
from ssr_tf.models.checks import Checks
from ssr_tf.models.dnn import MLP


@dataclasses.dataclass
class DeepFMBackboneConfig:
  """DeepFM settings (config key `model.backbone` when `model.name: deepfm`).

  Attributes:
    hidden_units: widths of the deep part's hidden layers.
    activation: hidden activation of the deep part.
    dropout: dropout after each hidden layer.
    use_first_order: append the first-order (linear) FM term.
  """
  hidden_units: list[int] = dataclasses.field(default_factory=lambda: [400, 400, 400])
  activation: str = "relu"
  dropout: float = 0.0
  use_first_order: bool = True

  def validate(self) -> None:
    c = Checks(self)
    c.widths("hidden_units", non_empty=True)
    c.rate("dropout")


def fm_second_order(fields: tf.Tensor) -> tf.Tensor:
  """[batch, F, dim] -> [batch, 1]: sum_{i<j} <e_i, e_j> in O(F dim)."""
  square_of_sum = tf.square(tf.reduce_sum(fields, axis=1))      # [batch, dim]
  sum_of_square = tf.reduce_sum(tf.square(fields), axis=1)      # [batch, dim]
  return 0.5 * tf.reduce_sum(square_of_sum - sum_of_square, axis=-1, keepdims=True)


@tf.keras.utils.register_keras_serializable(package="ssr_tf")
class DeepFM(BackboneLayer):
  """[batch, F, dim] -> [batch, hidden_units[-1] + 1 + use_first_order].

  Takes DeepFMBackboneConfig's fields by keyword (see ssr_tf.models.base.BackboneLayer).

  Example:
    >>> DeepFM(hidden_units=[32, 16])(tf.zeros([4, 5, 8])).shape   # [4, 18]
  """

  config_cls = DeepFMBackboneConfig

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    c = self.cfg
    self.deep = MLP(hidden_units=c.hidden_units, activation=c.activation, dropout=c.dropout,
                    batch_norm=False, name="deep")
    self.linear = (tf.keras.layers.Dense(1, use_bias=False, name="first_order")
                   if c.use_first_order else None)

  def call(self, fields, training=None):
    fields = tf.cast(fields, self.compute_dtype)
    flat = tf.reshape(fields, [-1, fields.shape[1] * fields.shape[2]])   # [batch, F * dim]
    parts = [self.deep(flat, training=training)]                         # [batch, H]
    if self.linear is not None:
      parts.append(self.linear(flat))                                    # [batch, 1]
    parts.append(fm_second_order(fields))                                # [batch, 1]
    return tf.concat(parts, axis=-1)

  def flops_per_example(self, num_fields: int, embedding_dim: int) -> int:
    d = num_fields * embedding_dim
    fm = 3 * d + 2 * embedding_dim            # sums, squares, difference
    linear = 2 * d if self.cfg.use_first_order else 0
    return self.deep.flops_per_example(num_fields, embedding_dim) + fm + linear


@registry.register("deepfm", DeepFMBackboneConfig, doc="DeepFM (Guo et al., 2017)")
def build(cfg: DeepFMBackboneConfig, num_fields: int, embedding_dim: int,
          tasks: tuple[str, ...]) -> tf.keras.layers.Layer:
  del num_fields, embedding_dim, tasks
  return DeepFM(**dataclasses.asdict(cfg), name="deepfm_backbone")
