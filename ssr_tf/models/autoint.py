"""AutoInt backbone (Song et al., 2019, "AutoInt: Automatic Feature Interaction Learning via
Self-Attentive Neural Networks", CIKM '19), on `tf.keras.layers.MultiHeadAttention`.

e^{l+1} = ReLU(MHA(e^l, e^l) + e^l W_res);  MHA = concat_h softmax(Q_h K_h^T / sqrt(k)) V_h W_o;
y = concat(flatten(e^L), [MLP(flatten(e^0))]).

Keras' MultiHeadAttention adds an output projection W_o (h k x h k) after the head concat,
which the AutoInt paper omits; it is kept (it is the standard Keras block). `hidden_units`
non-empty gives AutoInt+ (a parallel MLP on the raw embeddings).
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from ssr_tf.models import registry
from ssr_tf.models.base import BackboneLayer
from ssr_tf.models.checks import Checks
from ssr_tf.models.dnn import MLP


@dataclasses.dataclass
class AutoIntBackboneConfig:
  """AutoInt settings (config key `model.backbone` when `model.name: autoint`).

  Attributes:
    num_layers: stacked interacting (self-attention) layers.
    num_heads: attention heads per layer.
    head_dim: key / value width per head; each layer outputs num_heads * head_dim per field.
    use_residual: add the projected input e W_res (paper: yes).
    hidden_units: parallel MLP on the embeddings (AutoInt+); [] = plain AutoInt.
    dropout: attention-probability dropout.
  """
  num_layers: int = 3
  num_heads: int = 2
  head_dim: int = 16
  use_residual: bool = True
  hidden_units: list[int] = dataclasses.field(default_factory=list)
  dropout: float = 0.0

  def validate(self) -> None:
    c = Checks(self)
    c.at_least_one("num_layers", "num_heads", "head_dim")
    c.widths("hidden_units")
    c.rate("dropout")


@tf.keras.utils.register_keras_serializable(package="ssr_tf")
class AutoInt(BackboneLayer):
  """[batch, F, dim] -> [batch, F * num_heads * head_dim (+ hidden_units[-1])].

  Takes AutoIntBackboneConfig's fields by keyword (see ssr_tf.models.base.BackboneLayer).
  The AutoInt+ MLP is ReLU without dropout (the attention dropout does not apply to it).

  Example:
    >>> AutoInt(num_layers=1, num_heads=2, head_dim=4)(tf.zeros([3, 5, 8])).shape  # [3, 40]
  """

  config_cls = AutoIntBackboneConfig

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    c = self.cfg
    width = c.num_heads * c.head_dim
    self.attention = [
        tf.keras.layers.MultiHeadAttention(c.num_heads, c.head_dim, use_bias=False,
                                           output_shape=width, dropout=c.dropout,
                                           name=f"attention_{i}")
        for i in range(c.num_layers)]
    self.residual = ([tf.keras.layers.Dense(width, use_bias=False, name=f"residual_{i}")
                      for i in range(c.num_layers)] if c.use_residual else [])
    self.deep = (MLP(hidden_units=c.hidden_units, activation="relu", dropout=0.0,
                     batch_norm=False, name="deep") if c.hidden_units else None)

  def call(self, fields, training=None):
    e0 = tf.cast(fields, self.compute_dtype)                         # [batch, F, dim]
    e = e0
    for i, mha in enumerate(self.attention):
      a = mha(e, e, training=training)                                # [batch, F, h k]
      if self.cfg.use_residual:
        a = a + self.residual[i](e)
      e = tf.nn.relu(a)
    out = tf.reshape(e, [-1, e.shape[1] * e.shape[2]])               # [batch, F h k]
    if self.deep is None:
      return out
    flat = tf.reshape(e0, [-1, e0.shape[1] * e0.shape[2]])
    return tf.concat([out, self.deep(flat, training=training)], axis=-1)

  def flops_per_example(self, num_fields: int, embedding_dim: int) -> int:
    c = self.cfg
    f, w, h = num_fields, c.num_heads * c.head_dim, c.num_heads
    total, d = 0, embedding_dim
    for _ in range(c.num_layers):
      total += 3 * 2 * f * d * w            # Q, K, V projections
      total += 2 * 2 * f * f * w            # scores and weighted sum
      total += 5 * h * f * f                # softmax (approximate)
      total += 2 * f * w * w                # output projection
      if c.use_residual:
        total += 2 * f * d * w + f * w      # W_res and the add
      total += f * w                        # ReLU
      d = w
    if self.deep is not None:
      total += self.deep.flops_per_example(num_fields, embedding_dim)
    return total


@registry.register("autoint", AutoIntBackboneConfig, doc="AutoInt (Song et al., 2019)")
def build(cfg: AutoIntBackboneConfig, num_fields: int, embedding_dim: int,
          tasks: tuple[str, ...]) -> tf.keras.layers.Layer:
  del num_fields, embedding_dim, tasks
  return AutoInt(**dataclasses.asdict(cfg), name="autoint_backbone")
