"""RankMixer backbone (Zhu et al., 2025, "RankMixer: Scaling Up Ranking Models in Industrial
Recommenders", CIKM '25): parameter-free multi-head token mixing + per-token FFNs.

x_t = concat(e_{G_t}) W_t^tok;  S = LN(TokenMix(X) + X);  X' = LN(PFFN(S) + S);
TokenMix: s_h = concat_t(x_t^{(h)}) with H = T heads;  PFFN_t(s) = W_t^2 GELU(W_t^1 s + b_t^1) + b_t^2;
y = mean_t x_t^{(L)}  (or flatten).

Tokens: the F fields are split into T contiguous groups (the paper's semantic grouping,
here in feature-spec order); each group's concatenated embeddings get their own projection
to the token width D. Each token has its own FFN (no parameters shared across tokens).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from ssr_tf.errors import ConfigError
from ssr_tf.models import registry
from ssr_tf.models.base import BackboneLayer
from ssr_tf.models.checks import Checks


@dataclasses.dataclass
class RankMixerBackboneConfig:
  """RankMixer settings (config key `model.backbone` when `model.name: rankmixer`).

  Attributes:
    num_tokens: T, tokens (= heads of the token mixing); T <= number of fields.
    token_dim: D, width of each token; a multiple of num_tokens.
    num_layers: L, RankMixer blocks.
    ffn_mult: k, per-token FFN hidden width is k * D.
    pooling: "mean" over tokens (paper) or "flatten" (T * D outputs).
  """
  num_tokens: int = 8
  token_dim: int = 64
  num_layers: int = 2
  ffn_mult: int = 2
  pooling: str = "mean"

  def validate(self) -> None:
    c = Checks(self)
    c.at_least_one("num_tokens", "token_dim", "num_layers", "ffn_mult")
    if self.token_dim % self.num_tokens:
      c.bad("token_dim", f"must be a multiple of num_tokens ({self.num_tokens}), got "
            f"{self.token_dim}")
    c.choice("pooling", ("mean", "flatten"))


def token_groups(num_fields: int, num_tokens: int) -> list[np.ndarray]:
  """Field indices of each token: T contiguous, near-equal groups."""
  if not 1 <= num_tokens <= num_fields:
    raise ValueError(f"num_tokens must be in [1, {num_fields}] (the number of fields), "
                     f"got {num_tokens}")
  return np.array_split(np.arange(num_fields), num_tokens)


def token_mix(x: tf.Tensor, heads: int) -> tf.Tensor:
  """[batch, T, D] -> [batch, heads, T * D / heads]: head h gathers slice h of every token."""
  t, d = x.shape[1], x.shape[2]
  x = tf.reshape(x, [-1, t, heads, d // heads])          # [batch, T, H, D/H]
  x = tf.transpose(x, [0, 2, 1, 3])                      # [batch, H, T, D/H]
  return tf.reshape(x, [-1, heads, t * (d // heads)])    # [batch, H, T D / H]


@tf.keras.utils.register_keras_serializable(package="ssr_tf")
class RankMixer(BackboneLayer):
  """[batch, F, dim] -> [batch, D] (mean pooling) or [batch, T * D] (flatten).

  Takes RankMixerBackboneConfig's fields by keyword (see ssr_tf.models.base.BackboneLayer).

  Example:
    >>> RankMixer(num_tokens=4, token_dim=16)(tf.zeros([2, 6, 8])).shape   # [2, 16]
  """

  config_cls = RankMixerBackboneConfig

  def build(self, input_shape):
    num_fields, dim = int(input_shape[1]), int(input_shape[2])
    c = self.cfg
    if c.num_tokens > num_fields:
      raise ConfigError(num_tokens_error(c.num_tokens, num_fields))
    self.groups = token_groups(num_fields, c.num_tokens)
    t, d, h = c.num_tokens, c.token_dim, c.ffn_mult * c.token_dim
    self.tokenizers = [tf.keras.layers.Dense(d, name=f"tokenizer_{i}")
                       for i in range(t)]
    for i, g in enumerate(self.groups):
      self.tokenizers[i].build([None, len(g) * dim])
    self.blocks = []
    for l in range(c.num_layers):
      block = {
          "w1": self.add_weight(f"ffn_{l}_w1", shape=[t, d, h], initializer="glorot_uniform"),
          "b1": self.add_weight(f"ffn_{l}_b1", shape=[t, h], initializer="zeros"),
          "w2": self.add_weight(f"ffn_{l}_w2", shape=[t, h, d], initializer="glorot_uniform"),
          "b2": self.add_weight(f"ffn_{l}_b2", shape=[t, d], initializer="zeros"),
          "ln_mix": tf.keras.layers.LayerNormalization(name=f"ln_mix_{l}"),
          "ln_ffn": tf.keras.layers.LayerNormalization(name=f"ln_ffn_{l}"),
      }
      block["ln_mix"].build([None, t, d])
      block["ln_ffn"].build([None, t, d])
      self.blocks.append(block)
    super().build(input_shape)

  def call(self, fields, training=None):
    c = self.cfg
    fields = tf.cast(fields, self.compute_dtype)                       # [batch, F, dim]
    tokens = []
    for g, proj in zip(self.groups, self.tokenizers):
      group = tf.gather(fields, g, axis=1)                             # [batch, |G|, dim]
      tokens.append(proj(tf.reshape(group, [-1, len(g) * fields.shape[2]])))
    x = tf.stack(tokens, axis=1)                                       # [batch, T, D]
    for b in self.blocks:
      s = b["ln_mix"](token_mix(x, c.num_tokens) + x)                  # [batch, T, D]
      hidden = tf.nn.gelu(tf.einsum("btd,tdh->bth", s, b["w1"]) + b["b1"])  # [batch, T, kD]
      x = b["ln_ffn"](tf.einsum("bth,thd->btd", hidden, b["w2"]) + b["b2"] + s)
    if c.pooling == "mean":
      return tf.reduce_mean(x, axis=1)                                 # [batch, D]
    return tf.reshape(x, [-1, c.num_tokens * c.token_dim])

  def flops_per_example(self, num_fields: int, embedding_dim: int) -> int:
    c = self.cfg
    t, d, h = c.num_tokens, c.token_dim, c.ffn_mult * c.token_dim
    total = 2 * num_fields * embedding_dim * d + t * d          # tokenizers
    per_block = t * (2 * d * h + h + 8 * h + 2 * h * d + d)     # FFN (GELU ~8 per unit)
    per_block += 2 * t * d + 2 * 8 * t * d                      # residual adds + 2 LayerNorms
    total += c.num_layers * per_block
    if c.pooling == "mean":
      total += t * d
    return total


def num_tokens_error(num_tokens: int, num_fields: int) -> str:
  return (f"config key 'model.backbone.num_tokens': must be <= the number of fields "
          f"({num_fields}), got {num_tokens}")


@registry.register("rankmixer", RankMixerBackboneConfig, doc="RankMixer (Zhu et al., 2025)")
def build(cfg: RankMixerBackboneConfig, num_fields: int, embedding_dim: int,
          tasks: tuple[str, ...]) -> tf.keras.layers.Layer:
  del embedding_dim, tasks
  if cfg.num_tokens > num_fields:
    raise ConfigError(num_tokens_error(cfg.num_tokens, num_fields))
  return RankMixer(**dataclasses.asdict(cfg), name="rankmixer_backbone")
