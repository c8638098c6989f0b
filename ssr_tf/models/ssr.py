"""SSR backbone: flatten field embeddings, then L stacked SSR layers (SSR-S or SSR-D)."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import tensorflow as tf

from ssr_tf.errors import ConfigError
from ssr_tf.models import registry
from ssr_tf.models.base import BackboneLayer
from ssr_tf.models.checks import Checks
from ssr_tf.layers import _impl
from ssr_tf.layers.ssr import LAYER_NORMS, SSRLayer
from ssr_tf.models.dnn import MLP, mlp_flops, split_product


@dataclasses.dataclass
class SSRBackboneConfig:
  """SSR backbone settings (config key `model.backbone` when `model.name: ssr`).

  The one home of the SSR defaults: SSRBackbone takes these fields, and SSRLayer's optional
  arguments default to them.

  Attributes:
    mode: "static" (SSR-S, random gather) or "dynamic" (SSR-D, projection + ICS).
    num_layers: L, stacked SSR layers.
    num_views: b, parallel views per layer.
    view_dim: d_v, output width of each view (static: at most the input width F * dim).
    expanded_dim: d_v* for dynamic mode (null: 2 * view_dim).
    ics_iters: T, ICS rounds (dynamic, filter: ics).
    alpha_init: initial ICS extinction rate (paper: 0.1; dynamic, filter: ics).
    use_gamma: learn ICS's recovery scale gamma (paper: yes; dynamic, filter: ics).
    activation: fusion activation (paper: gelu).
    residual: add the previous layer's output when widths match (off in the paper).
    filter: dynamic mode's filter: "ics" (paper), "none" (dense projection; ablation),
      "topk" (straight-through top-k, k = view_dim), "dropout" (dropout instead of a sparse
      filter).
    filter_rate: dropout rate for filter: dropout.
    layer_norm: the per-view normalisation of Eq. 6: "view" (each example's view output
      normalised over its view_dim dims, learned scale and offset per dim), "view_plain"
      (the same without scale and offset) or "view_block" (each view's [batch, view_dim]
      block normalised with one mean and variance, then scale and offset; the statistics
      come from the batch at serving too, so a score depends on its batch mates).
    dropout: dropout rate on each SSR layer's output (training only). configs/ssr_d.yaml
      sets 0.2 with a cosine-decayed rate; given the decay it helped on MovieLens but not on
      synthetic data (benchmarks/RESULTS_real.md), so the default stays 0 (a resumed run
      with dropout is also not bit-identical to an uninterrupted one, docs/design.md).
    tower_units: widths of an MLP (ReLU, like the DNN's hidden layers) between the last SSR
      layer and the task heads; empty: the heads read the SSR output directly.
    seed: seed of SSR-S index draws and of the per-view initialisers (layer l uses seed + l);
      null (default): `train.seed`, so runs with different train seeds start from different
      SSR weights.
    impl: "auto" (the fused custom op when its library loaded, else pure TF with one
      warning), "tf" (pure TF) or "fused" (custom op, must load).
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
  layer_norm: str = "view"
  dropout: float = 0.0
  tower_units: list[int] = dataclasses.field(default_factory=list)
  seed: Optional[int] = None
  impl: str = "auto"

  def validate(self) -> None:
    c = Checks(self)
    c.choice("mode", ("static", "dynamic"))
    c.choice("impl", ("tf", "fused", "auto"))
    c.choice("filter", ("ics", "none", "topk", "dropout"))
    c.choice("layer_norm", LAYER_NORMS)
    c.rate("dropout")
    c.widths("tower_units")
    c.at_least_one("num_layers", "num_views", "view_dim", "ics_iters")
    if self.expanded_dim is not None and self.expanded_dim <= self.view_dim:
      c.bad("expanded_dim", f"must be > view_dim ({self.view_dim}), got {self.expanded_dim}")
    c.rate("filter_rate")
    if self.mode == "static":
      for key in ("filter", "filter_rate", "expanded_dim", "ics_iters", "alpha_init",
                  "use_gamma"):
        c.unused(key, "mode 'static' does not use it (a fixed gather: no projection, no "
                      "filter)")
      return
    if self.filter != "dropout":
      c.unused("filter_rate", f"only filter 'dropout' uses it, not filter {self.filter!r}")
    if self.filter != "ics":
      for key in ("ics_iters", "alpha_init", "use_gamma"):
        c.unused(key, f"only filter 'ics' uses it, not filter {self.filter!r}")


def check_input_width(cfg: SSRBackboneConfig, input_dim: int) -> None:
  """SSR-S draws view_dim distinct dims of the first layer's input (F * dim wide)."""
  if cfg.mode == "static" and cfg.view_dim > input_dim:
    raise ConfigError(f"config key 'model.backbone.view_dim': mode 'static' gathers view_dim "
                      f"distinct input dims, so it must be <= the input width (fields x "
                      f"embedding_dim = {input_dim}), got {cfg.view_dim}")


@tf.keras.utils.register_keras_serializable(package="ssr_tf")
class SSRBackbone(BackboneLayer):
  """[batch, F, dim] -> concat -> L x SSRLayer -> [batch, num_views * view_dim].

  Takes SSRBackboneConfig's fields by keyword (see ssr_tf.models.base.BackboneLayer).
  """

  config_cls = SSRBackboneConfig

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    c = self.cfg
    seed = 0 if c.seed is None else c.seed
    self.ssr_layers = [
        SSRLayer(c.mode, c.num_views, c.view_dim, expanded_dim=c.expanded_dim,
                 ics_iters=c.ics_iters, alpha_init=c.alpha_init, use_gamma=c.use_gamma,
                 activation=c.activation, seed=seed + i, impl=c.impl, filter=c.filter,
                 filter_rate=c.filter_rate, layer_norm=c.layer_norm, name=f"ssr_{i}")
        for i in range(c.num_layers)]
    self.dropout = tf.keras.layers.Dropout(c.dropout) if c.dropout else None
    self.tower = MLP(hidden_units=c.tower_units, name="tower") if c.tower_units else None

  @property
  def residual(self) -> bool:
    return self.cfg.residual

  def build(self, input_shape):
    check_input_width(self.cfg, int(input_shape[1]) * int(input_shape[2]))
    super().build(input_shape)

  def call(self, fields, training=None):
    x0 = tf.reshape(fields, [-1, fields.shape[1] * fields.shape[2]])  # [batch, F * dim]
    x = self.after_layer(-1, x0, x0, training)
    for l, layer in enumerate(self.ssr_layers):
      y = layer(x, training=training)                                 # [batch, views * view_dim]
      x = y + x if self.residual and y.shape[-1] == x.shape[-1] else y
      x = self.after_layer(l, x, x0, training)
      if self.dropout is not None:
        x = self.dropout(x, training=training)
    return x if self.tower is None else self.tower(x, training=training)

  def after_layer(self, where: int, x, x0, training):
    """What runs after SSR layer `where` (-1: before the first) on its output `x`, given
    the backbone input `x0`: nothing here; subclasses add blocks (ssr_msn's memories)."""
    del where, x0, training
    return x

  @property
  def splits_first_layer(self) -> bool:
    """SSR-D with the pure-TF projection and no residual around the first layer: its
    projection is linear in the input, so ``split_first_layer`` applies. SSR-S's first
    step is a gather (no FLOPs to save), the fused op projects and filters in one kernel,
    and a residual needs the whole input."""
    first = self.ssr_layers[0]
    return (first.mode == "dynamic" and not _impl.use_fused(first.impl)
            and not (self.residual and first.num_views * first.view_dim == first.input_dim))

  def split_first_layer(self, context: tf.Tensor, candidates: tf.Tensor,
                        context_index: Sequence[int]) -> tf.Tensor:
    """``call`` (inference) on fields given as a context part and a candidate part; the
    first layer's projection z = x W_proj = x_ctx W_proj[ctx rows] + x_cand W_proj[cand rows],
    the context's term once per context.

    context: ``[1 or N, Fc, dim]``, the fields at positions `context_index` (ascending);
    candidates: ``[N, F - Fc, dim]``, the other fields in spec order. Only when
    ``splits_first_layer``; used by context serving (ssr_tf/context.py) only.
    """
    first = self.ssr_layers[0]
    kernel = tf.reshape(first.proj_kernel,
                        [first.input_dim, first.num_views * first.expanded_dim])
    context = tf.cast(context, first.compute_dtype)
    candidates = tf.cast(candidates, first.compute_dtype)
    ctx, cand = split_product(context, candidates, context_index, kernel)
    x = first.call_projected(cand + ctx)                  # [N, views * view_dim]
    for layer in self.ssr_layers[1:]:
      y = layer(x, training=False)
      x = y + x if self.residual and y.shape[-1] == x.shape[-1] else y
    return x if self.tower is None else self.tower(x, training=False)

  def flops_per_example(self, num_fields: int, embedding_dim: int) -> int:
    d, total = num_fields * embedding_dim, 0
    for layer in self.ssr_layers:
      total += layer.flops_per_example(d)
      d = layer.num_views * layer.view_dim
    return total + mlp_flops(d, self.cfg.tower_units)


@registry.register("ssr", SSRBackboneConfig, doc="SSR-S / SSR-D (this paper)")
def build(cfg: SSRBackboneConfig, num_fields: int, embedding_dim: int,
          tasks: tuple[str, ...]) -> tf.keras.layers.Layer:
  del tasks
  check_input_width(cfg, num_fields * embedding_dim)
  return SSRBackbone(**dataclasses.asdict(cfg), name="ssr_backbone")
