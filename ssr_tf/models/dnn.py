"""DNN baseline backbone: concat field embeddings -> MLP (the paper's "Dense MLP")."""
from __future__ import annotations

import dataclasses

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


@registry.register("dnn", DNNBackboneConfig, doc="Dense MLP baseline")
def build(cfg: DNNBackboneConfig, num_fields: int, embedding_dim: int,
          tasks: tuple[str, ...]) -> tf.keras.layers.Layer:
  del num_fields, embedding_dim, tasks
  return MLP(**dataclasses.asdict(cfg), name="dnn_backbone")
