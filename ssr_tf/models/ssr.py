"""SSR backbone: flatten field embeddings, then L stacked SSR layers (SSR-S or SSR-D)."""
from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf

from ssr_tf.models.checks import Checks
from ssr_tf.layers.ssr import SSRLayer
from ssr_tf.models import registry


@dataclasses.dataclass
class SSRBackboneConfig:
  """SSR backbone settings (config key `model.backbone` when `model.name: ssr`).

  Attributes:
    mode: "static" (SSR-S, random gather) or "dynamic" (SSR-D, projection + ICS).
    num_layers: L, stacked SSR layers.
    num_views: b, parallel views per layer.
    view_dim: d_v, output width of each view.
    expanded_dim: d_v* for dynamic mode (default 2 * view_dim).
    ics_iters: T, ICS rounds.
    alpha_init: initial ICS extinction rate (paper: 0.1).
    use_gamma: learn ICS's recovery scale gamma (paper: yes).
    activation: fusion activation (paper: gelu).
    residual: add the previous layer's output when widths match (off in the paper).
    filter: "ics" (paper), "none" (dense projection; ablation), "topk" (straight-through
      top-k, k = view_dim), "dropout" (dropout instead of a sparse filter).
    filter_rate: dropout rate for filter: dropout.
    seed: seed of SSR-S index draws (layer l uses seed + l).
    impl: "tf" (pure TF), "fused" (custom op, must load) or "auto".
  """
  mode: str = "dynamic"
  num_layers: int = 2
  num_views: int = 8
  view_dim: int = 32
  expanded_dim: Optional[int] = None
  ics_iters: int = 5
  alpha_init: float = 0.1
  use_gamma: bool = True
  activation: str = "gelu"
  residual: bool = False
  filter: str = "ics"
  filter_rate: float = 0.5
  seed: int = 0
  impl: str = "tf"

  def validate(self) -> None:
    c = Checks(self)
    c.choice("mode", ("static", "dynamic"))
    c.choice("impl", ("tf", "fused", "auto"))
    c.choice("filter", ("ics", "none", "topk", "dropout"))
    c.at_least_one("num_layers", "num_views", "view_dim", "ics_iters")
    if self.expanded_dim is not None and self.expanded_dim <= self.view_dim:
      c.bad("expanded_dim", f"must be > view_dim ({self.view_dim}), got {self.expanded_dim}")
    c.rate("filter_rate")


@tf.keras.utils.register_keras_serializable(package="ssr_tf")
class SSRBackbone(tf.keras.layers.Layer):
  """[batch, F, dim] -> concat -> L x SSRLayer -> [batch, num_views * view_dim]."""

  def __init__(self, mode="dynamic", num_layers=2, num_views=8, view_dim=32, expanded_dim=None,
               ics_iters=5, alpha_init=0.1, use_gamma=True, activation="gelu", residual=False,
               filter="ics", filter_rate=0.5, seed=0, impl="tf", **kwargs):  # pylint: disable=redefined-builtin
    super().__init__(**kwargs)
    self.settings = dict(mode=mode, num_layers=num_layers, num_views=num_views,
                         view_dim=view_dim, expanded_dim=expanded_dim, ics_iters=ics_iters,
                         alpha_init=alpha_init, use_gamma=use_gamma, activation=activation,
                         residual=residual, filter=filter, filter_rate=filter_rate, seed=seed,
                         impl=impl)
    self.residual = residual
    self.ssr_layers = [
        SSRLayer(mode, num_views, view_dim, expanded_dim=expanded_dim, ics_iters=ics_iters,
                 alpha_init=alpha_init, use_gamma=use_gamma, activation=activation,
                 seed=seed + i, impl=impl, filter=filter, filter_rate=filter_rate,
                 name=f"ssr_{i}")
        for i in range(num_layers)]

  def call(self, fields, training=None):
    x = tf.reshape(fields, [-1, fields.shape[1] * fields.shape[2]])   # [batch, F * dim]
    for layer in self.ssr_layers:
      y = layer(x, training=training)
      x = y + x if self.residual and y.shape[-1] == x.shape[-1] else y
    return x

  def flops_per_example(self, num_fields: int, embedding_dim: int) -> int:
    d, total = num_fields * embedding_dim, 0
    for layer in self.ssr_layers:
      total += layer.flops_per_example(d)
      d = layer.num_views * layer.view_dim
    return total

  def get_config(self):
    return {**super().get_config(), **self.settings}


@registry.register("ssr", SSRBackboneConfig, doc="SSR-S / SSR-D (this paper)")
def build(cfg: SSRBackboneConfig, num_fields: int, embedding_dim: int) -> tf.keras.layers.Layer:
  del num_fields, embedding_dim
  return SSRBackbone(**dataclasses.asdict(cfg), name="ssr_backbone")
