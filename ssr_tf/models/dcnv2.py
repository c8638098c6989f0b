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

from ssr_tf.models import registry
from ssr_tf.models.base import BackboneLayer
from ssr_tf.models.checks import Checks
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
class DCNv2(BackboneLayer):
  """[batch, F, dim] -> [batch, H]; H = hidden_units[-1] (stacked) or F dim + hidden_units[-1]
  (parallel), or F dim without a deep network.

  Takes DCNv2BackboneConfig's fields by keyword (see ssr_tf.models.base.BackboneLayer).

  Example:
    >>> DCNv2(num_cross_layers=2, hidden_units=[16])(tf.zeros([4, 5, 8])).shape  # [4, 16]
  """

  config_cls = DCNv2BackboneConfig

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    c = self.cfg
    self.cross = [tfrs.layers.dcn.Cross(projection_dim=c.projection_dim, name=f"cross_{i}")
                  for i in range(c.num_cross_layers)]
    self.deep = (MLP(hidden_units=c.hidden_units, activation=c.activation, dropout=c.dropout,
                     batch_norm=False, name="deep")
                 if c.hidden_units else None)

  def call(self, fields, training=None):
    x0 = tf.reshape(tf.cast(fields, self.compute_dtype),
                    [-1, fields.shape[1] * fields.shape[2]])        # [batch, d]
    x = x0
    for layer in self.cross:
      x = layer(x0, x)                                              # [batch, d]
    if self.deep is None:
      return x
    if self.cfg.structure == "stacked":
      return self.deep(x, training=training)                        # [batch, H]
    return tf.concat([x, self.deep(x0, training=training)], axis=-1)

  def flops_per_example(self, num_fields: int, embedding_dim: int) -> int:
    d = num_fields * embedding_dim
    r = self.cfg.projection_dim
    per_cross = (2 * d * d if r is None else 4 * d * r) + 4 * d     # W x (or U, V), +b, *x0, +x
    deep = self.deep.flops_per_example(num_fields, embedding_dim) if self.deep else 0
    return self.cfg.num_cross_layers * per_cross + deep


@registry.register("dcnv2", DCNv2BackboneConfig, doc="DCN-v2 (Wang et al., 2021), TFRS Cross")
def build(cfg: DCNv2BackboneConfig, num_fields: int, embedding_dim: int,
          tasks: tuple[str, ...]) -> tf.keras.layers.Layer:
  del num_fields, embedding_dim, tasks
  return DCNv2(**dataclasses.asdict(cfg), name="dcnv2_backbone")
