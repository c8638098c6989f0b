"""The SSR layer: b parallel views, each filters then fuses (Eqs. 1-6 of the SSR paper).

h_i = x[:, idx_i] (static) or ICS(x W_i^proj) (dynamic);  z_i = act(h_i V_i + b_i);
y = concat_i LayerNorm_i(z_i)  (per view; see SSRLayer's layer_norm for the variants).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from ssr_tf.layers import _impl
from ssr_tf.layers.ics import ics_tf

MODES = ("static", "dynamic")
FILTERS = ("ics", "none", "topk", "dropout")
LAYER_NORMS = ("view", "view_plain", "view_block")


class ConfigDefault:
  """Marks an argument left out: it takes the value of the same-named field of the
  backbone config dataclass, the one place that default is written."""

  def __repr__(self) -> str:
    return "<backbone config default>"


CONFIG_DEFAULT = ConfigDefault()


def backbone_defaults() -> dict:
  """{field: default} of SSRBackboneConfig (model.backbone of `model.name: ssr`)."""
  from ssr_tf.models.ssr import SSRBackboneConfig  # pylint: disable=import-outside-toplevel
  return {f.name: f.default for f in dataclasses.fields(SSRBackboneConfig)}


def resolve_defaults(given: dict, defaults) -> dict:
  """`given` with each CONFIG_DEFAULT replaced by its entry of `defaults()` (a callable,
  so the config module is imported only when a default is needed)."""
  if not any(v is CONFIG_DEFAULT for v in given.values()):
    return given
  table = defaults()
  return {k: table[k] if v is CONFIG_DEFAULT else v for k, v in given.items()}


def static_indices(input_dim: int, num_views: int, view_dim: int, seed: int | None) -> np.ndarray:
  """[views, view_dim] int32: per view, view_dim distinct dims drawn uniformly without
  replacement; views drawn independently (overlap across views allowed)."""
  if view_dim > input_dim:
    raise ValueError(f"static SSR needs view_dim <= input dim, got {view_dim} > {input_dim}")
  rng = np.random.default_rng(seed)
  return np.stack([np.sort(rng.choice(input_dim, size=view_dim, replace=False))
                   for _ in range(num_views)]).astype(np.int32)


def block_fusion_tf(h: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
  """Per-view projection, i.e. the block-diagonal matrix diag(V_1..V_b) without its zeros.

  h: [batch, views, e], kernel: [views, e, o], bias: [views, o] -> [batch, views, o].
  """
  return tf.einsum("bve,veo->bvo", h, kernel) + bias[None]


@tf.keras.utils.register_keras_serializable(package="ssr_tf")
class SSRLayer(tf.keras.layers.Layer):
  """One SSR layer, ``[batch, d_in] -> [batch, num_views * view_dim]``.

  Static (SSR-S): view i gathers a fixed random subset of ``view_dim`` input dims (a
  zero-FLOP gather; the indices are a non-trainable weight, so checkpoints and SavedModels
  reproduce them). Dynamic (SSR-D): view i projects x to ``expanded_dim`` dims with its own
  W_i^proj (all views in one GEMM) and sparsifies with ICS. Both then fuse each view with
  its own V_i, bias, activation and LayerNorm.

  Example:
    >>> y = SSRLayer("dynamic", num_views=8, view_dim=32)(tf.zeros([4, 320]))  # [4, 256]

  Args:
    mode: "static" or "dynamic".
    num_views: b, parallel views.
    view_dim: d_v, output width per view (and gather width for static).
    expanded_dim: d_v* > d_v, projected width before ICS (dynamic; None: 2 * view_dim).
    ics_iters: T of ICS.
    alpha_init: initial ICS extinction rates.
    use_gamma: learn the ICS recovery scale.
    activation: fusion activation sigma.
    seed: seed of the static index draw and of the per-view initialisers (None: unseeded).
    impl: "auto" (the custom op when its library loaded, else pure TF with one warning),
      "tf" or "fused" (custom op; fails if it cannot load).
    filter: "ics" (paper), "none" (dense projection, no sparse filter; Table 4 ablation),
      "topk" (keep the top k = view_dim dims with a straight-through gradient) or
      "dropout" (dropout with rate `filter_rate` instead of ICS).
    filter_rate: dropout rate for filter="dropout".
    layer_norm: "view" (LayerNorm of each example's view over its view_dim dims, with
      scale and offset; Eq. 6), "view_plain" (no scale and offset) or "view_block" (one
      mean and variance per view over its [batch, view_dim] block, with scale and offset).
    kernel_initializer: initializer of W^proj and V.
  expanded_dim, ics_iters, alpha_init, use_gamma, activation, impl, filter, filter_rate and
  layer_norm default to the same keys of ssr_tf.models.ssr.SSRBackboneConfig, where the SSR defaults
  are written.
  """

  def __init__(self, mode: str, num_views: int, view_dim: int,
               expanded_dim: int | None | ConfigDefault = CONFIG_DEFAULT,
               ics_iters: int | ConfigDefault = CONFIG_DEFAULT,
               alpha_init: float | ConfigDefault = CONFIG_DEFAULT,
               use_gamma: bool | ConfigDefault = CONFIG_DEFAULT,
               activation=CONFIG_DEFAULT, seed: int | None = None,
               impl: str | ConfigDefault = CONFIG_DEFAULT,
               filter: str | ConfigDefault = CONFIG_DEFAULT,  # pylint: disable=redefined-builtin
               filter_rate: float | ConfigDefault = CONFIG_DEFAULT,
               layer_norm: str | ConfigDefault = CONFIG_DEFAULT,
               kernel_initializer="glorot_uniform", **kwargs):
    super().__init__(**kwargs)
    s = resolve_defaults(dict(expanded_dim=expanded_dim, ics_iters=ics_iters,
                              alpha_init=alpha_init, use_gamma=use_gamma,
                              activation=activation, impl=impl, filter=filter,
                              filter_rate=filter_rate, layer_norm=layer_norm),
                         backbone_defaults)
    if mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if num_views < 1 or view_dim < 1:
      raise ValueError(f"num_views and view_dim must be >= 1, got {num_views}, {view_dim}")
    expanded = 2 * view_dim if s["expanded_dim"] is None else s["expanded_dim"]
    if mode == "dynamic" and expanded <= view_dim and s["filter"] == "ics":
      raise ValueError(f"expanded_dim must be > view_dim, got {expanded} <= {view_dim}")
    if s["filter"] not in FILTERS:
      raise ValueError(f"filter must be one of {FILTERS}, got {s['filter']!r}")
    if s["layer_norm"] not in LAYER_NORMS:
      raise ValueError(f"layer_norm must be one of {LAYER_NORMS}, got {s['layer_norm']!r}")
    self.mode = mode
    self.num_views = int(num_views)
    self.view_dim = int(view_dim)
    self.expanded_dim = int(expanded)
    self.ics_iters = int(s["ics_iters"])
    self.alpha_init = float(s["alpha_init"])
    self.use_gamma = bool(s["use_gamma"])
    self.activation = tf.keras.activations.get(s["activation"])
    self.seed = seed
    self.impl = _impl.check(s["impl"])
    self.filter = s["filter"]
    self.filter_rate = float(s["filter_rate"])
    self.layer_norm = s["layer_norm"]
    self.kernel_initializer = tf.keras.initializers.get(kernel_initializer)

  @property
  def filtered_dim(self) -> int:
    """Width of each view after filtering: d_v (static) or d_v* (dynamic)."""
    return self.view_dim if self.mode == "static" else self.expanded_dim

  def build(self, input_shape):
    d_in = int(input_shape[-1])
    self.input_dim = d_in
    v, e, o = self.num_views, self.filtered_dim, self.view_dim
    if self.mode == "static":
      idx = static_indices(d_in, v, o, self.seed)
      self.indices = self.add_weight(
          "indices", shape=[v, o], dtype=tf.int32, trainable=False,
          initializer=tf.keras.initializers.Constant(idx))
    else:
      self.proj_kernel = self.add_weight("proj_kernel", shape=[d_in, v, e],
                                         initializer=self._stacked_init(d_in, e, 1, salt=1))
      if self.filter == "ics":
        self.alpha = self.add_weight("alpha", shape=[v, self.ics_iters],
                                     initializer=tf.keras.initializers.Constant(self.alpha_init))
        self.gamma = self.add_weight("gamma", shape=[v, e], initializer="ones",
                                     trainable=self.use_gamma)
    self.fusion_kernel = self.add_weight("fusion_kernel", shape=[v, e, o],
                                         initializer=self._stacked_init(e, o, 0, salt=2))
    self.fusion_bias = self.add_weight("fusion_bias", shape=[v, o], initializer="zeros")
    if self.layer_norm != "view_plain":
      self.ln_scale = self.add_weight("ln_scale", shape=[v, o], initializer="ones")
      self.ln_offset = self.add_weight("ln_offset", shape=[v, o], initializer="zeros")
    super().build(input_shape)

  def _stacked_init(self, fan_in: int, fan_out: int, views_axis: int, salt: int):
    """The kernel initializer applied to each view's [fan_in, fan_out] matrix, with a
    distinct seed per view (an unseeded Keras initializer repeats its values)."""
    def init(shape, dtype=None):
      del shape
      base = tf.keras.initializers.serialize(self.kernel_initializer)
      first = (np.random.randint(2**30) if self.seed is None else self.seed * 7919 + salt)
      mats = []
      for i in range(self.num_views):
        cfg = {**base, "config": {**base.get("config", {})}}
        if "seed" in cfg["config"]:
          cfg["config"]["seed"] = int(first) * 131 + i
        mats.append(tf.keras.initializers.deserialize(cfg)([fan_in, fan_out], dtype=dtype))
      return tf.stack(mats, axis=views_axis)
    return init

  def filter_views(self, x: tf.Tensor, training=None) -> tf.Tensor:
    """The "filter" stage: [batch, d_in] -> h [batch, views, filtered_dim]."""
    if self.mode == "static":
      return tf.gather(x, self.indices, axis=1)           # [batch, views, view_dim]
    v, e = self.num_views, self.expanded_dim
    if self.filter == "ics" and _impl.use_fused(self.impl):
      from ssr_tf import ops  # pylint: disable=import-outside-toplevel
      return ops.dynamic_view(x, self.proj_kernel, self.alpha, self.gamma)
    z = tf.matmul(x, tf.reshape(self.proj_kernel, [self.input_dim, v * e]))
    z = tf.reshape(z, [-1, v, e])                         # [batch, views, expanded_dim]
    if self.filter == "ics":
      return ics_tf(z, self.alpha, self.gamma)
    if self.filter == "topk":
      return topk_ste(z, self.view_dim)
    if self.filter == "dropout":
      return tf.keras.backend.in_train_phase(
          lambda: tf.nn.dropout(z, rate=self.filter_rate), z, training=training)
    return z

  def call(self, x, training=None):
    x = tf.cast(x, self.compute_dtype)
    h = self.filter_views(x, training=training)           # [batch, views, e]
    if _impl.use_fused(self.impl):
      from ssr_tf import ops  # pylint: disable=import-outside-toplevel
      z = ops.block_fusion(h, self.fusion_kernel, self.fusion_bias)
    else:
      z = block_fusion_tf(h, self.fusion_kernel, self.fusion_bias)
    z = self.activation(z)                                # [batch, views, view_dim]
    return tf.reshape(self.normalize(z), [-1, self.num_views * self.view_dim])

  def call_projected(self, z: tf.Tensor) -> tf.Tensor:
    """SSR-D inference (pure TF) from its projection z = x W_proj ``[batch, views *
    expanded_dim]``: the steps of ``call`` after the projection (filter, fuse, normalise).

    For a caller that computes z itself (context serving: ssr_tf/models/ssr.py).
    """
    if self.mode != "dynamic":
      raise ValueError("call_projected: only mode 'dynamic' has a projection")
    z = tf.reshape(tf.cast(z, self.compute_dtype), [-1, self.num_views, self.expanded_dim])
    if self.filter == "ics":
      h = ics_tf(z, self.alpha, self.gamma)
    elif self.filter == "topk":
      h = topk_ste(z, self.view_dim)
    else:                                                 # "none"; "dropout" at inference
      h = z
    z = self.activation(block_fusion_tf(h, self.fusion_kernel, self.fusion_bias))
    return tf.reshape(self.normalize(z), [-1, self.num_views * self.view_dim])

  def normalize(self, z: tf.Tensor) -> tf.Tensor:
    """LayerNorm_i of Eq. 6 on z [batch, views, view_dim], per view (see layer_norm)."""
    axes = [0, 2] if self.layer_norm == "view_block" else [2]
    mean, var = tf.nn.moments(z, axes=axes, keepdims=True)
    z = (z - mean) * tf.math.rsqrt(var + 1e-3)
    if self.layer_norm == "view_plain":
      return z
    return z * self.ln_scale + self.ln_offset

  def compute_output_shape(self, input_shape):
    return tf.TensorShape([input_shape[0], self.num_views * self.view_dim])

  def flops_per_example(self, input_dim: int | None = None) -> int:
    """Multiply-adds count 2 FLOPs; ICS ~4 per element per round; gather is free."""
    d_in = input_dim or self.input_dim
    v, e, o = self.num_views, self.filtered_dim, self.view_dim
    flops = 0
    if self.mode == "dynamic":
      flops += 2 * d_in * v * e
      if self.filter == "ics":
        flops += v * e * (1 + 4 * self.ics_iters + 1)
    flops += 2 * v * e * o + v * o          # fusion matmul + bias
    flops += 8 * v * o                      # activation + LayerNorm (approximate)
    return flops

  def get_config(self):
    return {**super().get_config(), "mode": self.mode, "num_views": self.num_views,
            "view_dim": self.view_dim, "expanded_dim": self.expanded_dim,
            "ics_iters": self.ics_iters, "alpha_init": self.alpha_init,
            "use_gamma": self.use_gamma,
            "activation": tf.keras.activations.serialize(self.activation),
            "seed": self.seed, "impl": self.impl, "filter": self.filter,
            "filter_rate": self.filter_rate, "layer_norm": self.layer_norm,
            "kernel_initializer": tf.keras.initializers.serialize(self.kernel_initializer)}


@tf.custom_gradient
def _ste_mask(z, mask):
  def grad(dy):
    return dy, tf.zeros_like(mask)
  return z * mask, grad


def topk_ste(z: tf.Tensor, k: int) -> tf.Tensor:
  """Keeps the k largest entries of each view (forward), identity gradient (backward)."""
  kth = tf.math.top_k(z, k=k).values[..., -1:]            # [batch, views, 1]
  mask = tf.cast(z >= kth, z.dtype)
  return _ste_mask(z, tf.stop_gradient(mask))
