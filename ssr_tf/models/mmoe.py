"""MMoE backbone (Ma et al., 2018, "Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts", KDD '18): shared experts, one softmax gate per task.

g_t = softmax(W_t x);  h_t = tower_t(sum_k g_{t,k} expert_k(x)),  x = concat(e), t in {click, pay}.

Returns ``{"click": [batch, H], "pay": [batch, H]}``; the ranker puts its click and pay
heads on the matching tower.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from ssr_tf.config import TASKS
from ssr_tf.models.checks import Checks
from ssr_tf.models import registry
from ssr_tf.models.dnn import MLP


@dataclasses.dataclass
class MMoEBackboneConfig:
  """MMoE settings (config key `model.backbone` when `model.name: mmoe`).

  Attributes:
    num_experts: shared expert MLPs.
    expert_units: hidden widths of each expert.
    tower_units: hidden widths of each task tower ([] = the mixed expert output).
    activation: hidden activation of experts and towers.
    dropout: dropout after each expert / tower layer.
  """
  num_experts: int = 4
  expert_units: list[int] = dataclasses.field(default_factory=lambda: [256, 128])
  tower_units: list[int] = dataclasses.field(default_factory=lambda: [64])
  activation: str = "relu"
  dropout: float = 0.0

  def validate(self) -> None:
    c = Checks(self)
    c.at_least_one("num_experts")
    c.widths("expert_units", non_empty=True)
    c.widths("tower_units")
    c.rate("dropout")


@tf.keras.utils.register_keras_serializable(package="ssr_tf")
class MMoE(tf.keras.layers.Layer):
  """[batch, F, dim] -> {"click": [batch, H], "pay": [batch, H]}.

  Example:
    >>> out = MMoE(num_experts=3, expert_units=[8], tower_units=[4])(tf.zeros([2, 5, 8]))
    >>> out["click"].shape   # [2, 4]
  """

  def __init__(self, num_experts=4, expert_units=(256, 128), tower_units=(64,),
               activation="relu", dropout=0.0, **kwargs):
    super().__init__(**kwargs)
    self.num_experts = int(num_experts)
    self.expert_units = list(expert_units)
    self.tower_units = list(tower_units)
    self.activation = activation
    self.dropout = float(dropout)
    self.experts = [MLP(self.expert_units, activation, dropout, name=f"expert_{k}")
                    for k in range(self.num_experts)]
    self.gates = {t: tf.keras.layers.Dense(self.num_experts, name=f"gate_{t}") for t in TASKS}
    self.towers = ({t: MLP(self.tower_units, activation, dropout, name=f"tower_{t}")
                    for t in TASKS} if self.tower_units else {})

  def call(self, fields, training=None):
    x = tf.reshape(tf.cast(fields, self.compute_dtype),
                   [-1, fields.shape[1] * fields.shape[2]])            # [batch, d]
    experts = tf.stack([e(x, training=training) for e in self.experts], axis=1)  # [batch, K, H]
    out = {}
    for t in TASKS:
      g = tf.nn.softmax(self.gates[t](x), axis=-1)                     # [batch, K]
      mixed = tf.einsum("bk,bkh->bh", g, experts)                      # [batch, H]
      out[t] = self.towers[t](mixed, training=training) if self.towers else mixed
    return out

  def flops_per_example(self, num_fields: int, embedding_dim: int) -> int:
    d, k = num_fields * embedding_dim, self.num_experts
    h = self.expert_units[-1]
    experts = k * MLP(self.expert_units).flops_per_example(num_fields, embedding_dim)
    per_task = 2 * d * k + k + 4 * k + 2 * k * h       # gate logits, softmax, mixture
    if self.tower_units:
      per_task += MLP(self.tower_units).flops_per_example(1, h)
    return experts + len(TASKS) * per_task

  def get_config(self):
    return {**super().get_config(), "num_experts": self.num_experts,
            "expert_units": self.expert_units, "tower_units": self.tower_units,
            "activation": self.activation, "dropout": self.dropout}


@registry.register("mmoe", MMoEBackboneConfig, doc="MMoE (Ma et al., 2018), click/pay gates")
def build(cfg: MMoEBackboneConfig, num_fields: int, embedding_dim: int) -> tf.keras.layers.Layer:
  del num_fields, embedding_dim
  return MMoE(**dataclasses.asdict(cfg), name="mmoe_backbone")
