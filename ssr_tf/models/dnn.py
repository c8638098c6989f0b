"""DNN baseline backbone: concat field embeddings -> MLP (the paper's "Dense MLP")."""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from ssr_tf.models.checks import Checks
from ssr_tf.models import registry


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


@tf.keras.utils.register_keras_serializable(package="ssr_tf")
class MLP(tf.keras.layers.Layer):
  """[batch, ...] -> flatten -> (Dense -> [BN] -> act -> [Dropout]) x len(hidden_units)."""

  def __init__(self, hidden_units=(400, 400, 400), activation="relu", dropout=0.0,
               batch_norm=False, **kwargs):
    super().__init__(**kwargs)
    self.hidden_units = list(hidden_units)
    self.activation = activation
    self.dropout = float(dropout)
    self.batch_norm = bool(batch_norm)
    self.blocks = []
    for i, units in enumerate(self.hidden_units):
      block = [tf.keras.layers.Dense(units, name=f"dense_{i}")]
      if batch_norm:
        block.append(tf.keras.layers.BatchNormalization(name=f"bn_{i}"))
      block.append(tf.keras.layers.Activation(activation))
      if dropout:
        block.append(tf.keras.layers.Dropout(dropout))
      self.blocks.append(block)

  def call(self, x, training=None):
    if x.shape.rank > 2:
      x = tf.reshape(x, [-1, x.shape[1:].num_elements()])
    for block in self.blocks:
      for layer in block:
        x = layer(x, training=training)
    return x

  def flops_per_example(self, num_fields: int, embedding_dim: int) -> int:
    d, total = num_fields * embedding_dim, 0
    for u in self.hidden_units:
      total += 2 * d * u + u
      d = u
    return total

  def get_config(self):
    return {**super().get_config(), "hidden_units": self.hidden_units,
            "activation": self.activation, "dropout": self.dropout, "batch_norm": self.batch_norm}


@registry.register("dnn", DNNBackboneConfig, doc="Dense MLP baseline")
def build(cfg: DNNBackboneConfig, num_fields: int, embedding_dim: int) -> tf.keras.layers.Layer:
  del num_fields, embedding_dim
  return MLP(**dataclasses.asdict(cfg), name="dnn_backbone")
