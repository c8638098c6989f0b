"""Wukong backbone (Zhang et al., 2024, "Wukong: Towards a Scaling Law for Large-Scale
Recommendation", ICML '24): stacked factorization-machine blocks + linear compression.

X_{l+1} = LN(concat(FMB(X_l), LCB(X_l)) + R(X_l));  LCB(X) = W_L X;
FMB(X) = reshape(MLP(LN(flatten(X X^T Y))), [n_F, d]);  y = MLP_top(flatten(X_L)),
where X_l is [n_l, d] embeddings, Y [n_l, k] makes the FM low rank ("optimized FM"), and
R is the identity when n_l = n_F + n_L, else a linear compression of X_l to n_F + n_L rows.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from ssr_tf.models import registry
from ssr_tf.models.base import BackboneLayer
from ssr_tf.models.checks import Checks
from ssr_tf.models.dnn import MLP


@dataclasses.dataclass
class WukongBackboneConfig:
  """Wukong settings (config key `model.backbone` when `model.name: wukong`).

  Attributes:
    num_layers: stacked Wukong layers.
    num_fm_embeddings: n_F, embeddings produced by each FM block.
    num_lc_embeddings: n_L, embeddings produced by each linear compression block.
    fm_rank: k, columns of Y in the optimized FM X (X^T Y).
    fmb_units: hidden widths of the MLP inside each FM block (its last layer is linear to
      n_F * d).
    hidden_units: top MLP on the flattened last layer.
    activation: hidden activation of the MLPs.
  """
  num_layers: int = 2
  num_fm_embeddings: int = 16
  num_lc_embeddings: int = 16
  fm_rank: int = 16
  fmb_units: list[int] = dataclasses.field(default_factory=lambda: [256])
  hidden_units: list[int] = dataclasses.field(default_factory=lambda: [256, 128])
  activation: str = "relu"

  def validate(self) -> None:
    c = Checks(self)
    c.at_least_one("num_layers", "num_fm_embeddings", "num_lc_embeddings", "fm_rank")
    c.widths("fmb_units", "hidden_units")


@tf.keras.utils.register_keras_serializable(package="ssr_tf")
class WukongLayer(tf.keras.layers.Layer):
  """One Wukong layer, [batch, n_in, d] -> [batch, n_F + n_L, d].

  Args (all required; Wukong passes its config's values): num_fm_embeddings (n_F),
  num_lc_embeddings (n_L), fm_rank (k), fmb_units, activation, as in WukongBackboneConfig.
  """

  def __init__(self, num_fm_embeddings: int, num_lc_embeddings: int, fm_rank: int,
               fmb_units, activation: str, **kwargs):
    super().__init__(**kwargs)
    self.num_fm_embeddings = int(num_fm_embeddings)
    self.num_lc_embeddings = int(num_lc_embeddings)
    self.fm_rank = int(fm_rank)
    self.fmb_units = list(fmb_units)
    self.activation = activation

  def build(self, input_shape):
    n, d = int(input_shape[1]), int(input_shape[2])
    n_out = self.num_fm_embeddings + self.num_lc_embeddings
    self.n_in, self.dim = n, d
    self.fm_proj = self.add_weight("fm_proj", shape=[n, self.fm_rank],
                                   initializer="glorot_uniform")
    self.fm_norm = tf.keras.layers.LayerNormalization(name="fm_norm")
    self.fm_norm.build([None, n * self.fm_rank])
    self.fm_mlp = (MLP(hidden_units=self.fmb_units, activation=self.activation, dropout=0.0,
                       batch_norm=False, name="fm_mlp") if self.fmb_units else None)
    width = self.fmb_units[-1] if self.fmb_units else n * self.fm_rank
    self.fm_out = tf.keras.layers.Dense(self.num_fm_embeddings * d, name="fm_out")
    self.fm_out.build([None, width])
    self.lc = self.add_weight("lc", shape=[self.num_lc_embeddings, n],
                              initializer="glorot_uniform")
    self.res = (self.add_weight("res", shape=[n_out, n], initializer="glorot_uniform")
                if n != n_out else None)
    self.norm = tf.keras.layers.LayerNormalization(name="norm")
    self.norm.build([None, n_out, d])
    super().build(input_shape)

  def call(self, x, training=None):
    x = tf.cast(x, self.compute_dtype)                                 # [batch, n, d]
    xty = tf.einsum("bnd,nk->bdk", x, self.fm_proj)                   # [batch, d, k]
    fm = tf.einsum("bnd,bdk->bnk", x, xty)                            # [batch, n, k]
    h = self.fm_norm(tf.reshape(fm, [-1, self.n_in * self.fm_rank]))
    if self.fm_mlp is not None:
      h = self.fm_mlp(h, training=training)
    fmb = tf.reshape(self.fm_out(h), [-1, self.num_fm_embeddings, self.dim])  # [batch, n_F, d]
    lcb = tf.einsum("ln,bnd->bld", self.lc, x)                         # [batch, n_L, d]
    res = x if self.res is None else tf.einsum("on,bnd->bod", self.res, x)
    return self.norm(tf.concat([fmb, lcb], axis=1) + res)            # [batch, n_F + n_L, d]

  def flops_per_example(self, n: int, d: int) -> int:
    k, n_f, n_l = self.fm_rank, self.num_fm_embeddings, self.num_lc_embeddings
    n_out = n_f + n_l
    total = 2 * n * d * k + 2 * n * d * k + 8 * n * k            # X^T Y, X (X^T Y), LN
    width = n * k
    for u in self.fmb_units:
      total += 2 * width * u + 2 * u
      width = u
    total += 2 * width * n_f * d + n_f * d                      # to n_F embeddings
    total += 2 * n_l * n * d                                    # linear compression
    if n != n_out:
      total += 2 * n_out * n * d
    total += n_out * d + 8 * n_out * d                          # residual add + LN
    return total

  def get_config(self):
    return {**super().get_config(), "num_fm_embeddings": self.num_fm_embeddings,
            "num_lc_embeddings": self.num_lc_embeddings, "fm_rank": self.fm_rank,
            "fmb_units": self.fmb_units, "activation": self.activation}


@tf.keras.utils.register_keras_serializable(package="ssr_tf")
class Wukong(BackboneLayer):
  """[batch, F, dim] -> [batch, hidden_units[-1]] (or the flattened last layer).

  Takes WukongBackboneConfig's fields by keyword (see ssr_tf.models.base.BackboneLayer).

  Example:
    >>> Wukong(num_layers=1, num_fm_embeddings=2, num_lc_embeddings=2, fm_rank=2,
    ...        fmb_units=[8], hidden_units=[4])(tf.zeros([3, 5, 8])).shape   # [3, 4]
  """

  config_cls = WukongBackboneConfig

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    c = self.cfg
    self.wukong_layers = [WukongLayer(c.num_fm_embeddings, c.num_lc_embeddings, c.fm_rank,
                                      c.fmb_units, c.activation, name=f"wukong_{i}")
                          for i in range(c.num_layers)]
    self.top = (MLP(hidden_units=c.hidden_units, activation=c.activation, dropout=0.0,
                    batch_norm=False, name="top") if c.hidden_units else None)

  def call(self, fields, training=None):
    x = tf.cast(fields, self.compute_dtype)                          # [batch, F, dim]
    for layer in self.wukong_layers:
      x = layer(x, training=training)                                # [batch, n_F + n_L, dim]
    flat = tf.reshape(x, [-1, x.shape[1] * x.shape[2]])
    return self.top(flat, training=training) if self.top is not None else flat

  def flops_per_example(self, num_fields: int, embedding_dim: int) -> int:
    n, total = num_fields, 0
    for layer in self.wukong_layers:
      total += layer.flops_per_example(n, embedding_dim)
      n = layer.num_fm_embeddings + layer.num_lc_embeddings
    if self.top is not None:
      total += self.top.flops_per_example(n, embedding_dim)
    return total


@registry.register("wukong", WukongBackboneConfig, doc="Wukong (Zhang et al., 2024)")
def build(cfg: WukongBackboneConfig, num_fields: int, embedding_dim: int,
          tasks: tuple[str, ...]) -> tf.keras.layers.Layer:
  del num_fields, embedding_dim, tasks
  return Wukong(**dataclasses.asdict(cfg), name="wukong_backbone")
