"""DCN-v2 backbone (Wang et al., 2021, "DCN V2: Improved Deep & Cross Network and Practical
Lessons for Web-scale Learning to Rank Systems", WWW '21), built on `tfrs.layers.dcn.Cross`.

x_{l+1} = x_0 * (W_l x_l + b_l) + x_l   (full rank; low rank: W_l = U_l V_l);
stacked: y = MLP(x_L);  parallel: y = concat(x_L, MLP(x_0)).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf
import tensorflow_recommenders as tfrs

from ssr_tf.models.checks import Checks
from ssr_tf.models import registry
from ssr_tf.models.dnn import MLP


@dataclasses.dataclass
class DCNv2BackboneConfig:
  """DCN-v2 settings (config key `model.backbone` when `model.name: dcnv2`).

  Attributes:
    num_cross_layers: stacked `tfrs.layers.dcn.Cross` layers.
    structure: "stacked" (cross network, then MLP) or "parallel" (cross and MLP side by
      side on x_0, outputs concatenated).
    projection_dim: low-rank cross (W = U V with rank projection_dim); null = full rank.
    hidden_units: widths of the deep network (may be empty for a cross-only model).
    activation: hidden activation of the deep network.
    dropout: dropout after each deep layer.
  """
  num_cross_layers: int = 3
  structure: str = "stacked"
  projection_dim: Optional[int] = None
  hidden_units: list[int] = dataclasses.field(default_factory=lambda: [400, 400])
  activation: str = "relu"
  dropout: float = 0.0

  def validate(self) -> None:
    c = Checks(self)
    c.choice("structure", ("stacked", "parallel"))
    c.at_least_one("num_cross_layers")
    if self.projection_dim is not None and self.projection_dim < 1:
      c.bad("projection_dim", f"must be >= 1 or null, got {self.projection_dim}")
    c.widths("hidden_units")
    c.rate("dropout")


@tf.keras.utils.register_keras_serializable(package="ssr_tf")
class DCNv2(tf.keras.layers.Layer):
  """[batch, F, dim] -> [batch, H]; H = hidden_units[-1] (stacked) or F dim + hidden_units[-1]
  (parallel), or F dim without a deep network.

  Example:
    >>> DCNv2(num_cross_layers=2, hidden_units=[16])(tf.zeros([4, 5, 8])).shape  # [4, 16]
  """

  def __init__(self, num_cross_layers=3, structure="stacked", projection_dim=None,
               hidden_units=(400, 400), activation="relu", dropout=0.0, **kwargs):
    super().__init__(**kwargs)
    if structure not in ("stacked", "parallel"):
      raise ValueError(f"structure must be 'stacked' or 'parallel', got {structure!r}")
    self.num_cross_layers = int(num_cross_layers)
    self.structure = structure
    self.projection_dim = projection_dim
    self.hidden_units = list(hidden_units)
    self.activation = activation
    self.dropout = float(dropout)
    self.cross = [tfrs.layers.dcn.Cross(projection_dim=projection_dim, name=f"cross_{i}")
                  for i in range(self.num_cross_layers)]
    self.deep = (MLP(self.hidden_units, activation, dropout, name="deep")
                 if self.hidden_units else None)

  def call(self, fields, training=None):
    x0 = tf.reshape(tf.cast(fields, self.compute_dtype),
                    [-1, fields.shape[1] * fields.shape[2]])        # [batch, d]
    x = x0
    for layer in self.cross:
      x = layer(x0, x)                                              # [batch, d]
    if self.deep is None:
      return x
    if self.structure == "stacked":
      return self.deep(x, training=training)                        # [batch, H]
    return tf.concat([x, self.deep(x0, training=training)], axis=-1)

  def flops_per_example(self, num_fields: int, embedding_dim: int) -> int:
    d = num_fields * embedding_dim
    r = self.projection_dim
    per_cross = (2 * d * d if r is None else 4 * d * r) + 4 * d     # W x (or U, V), +b, *x0, +x
    deep = self.deep.flops_per_example(num_fields, embedding_dim) if self.deep else 0
    return self.num_cross_layers * per_cross + deep

  def get_config(self):
    return {**super().get_config(), "num_cross_layers": self.num_cross_layers,
            "structure": self.structure, "projection_dim": self.projection_dim,
            "hidden_units": self.hidden_units, "activation": self.activation,
            "dropout": self.dropout}


@registry.register("dcnv2", DCNv2BackboneConfig, doc="DCN-v2 (Wang et al., 2021), TFRS Cross")
def build(cfg: DCNv2BackboneConfig, num_fields: int, embedding_dim: int) -> tf.keras.layers.Layer:
  del num_fields, embedding_dim
  return DCNv2(**dataclasses.asdict(cfg), name="dcnv2_backbone")
