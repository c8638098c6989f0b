"""MMoE backbone (Ma et al., 2018, "Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts", KDD '18): shared experts, one softmax gate per task.

g_t = softmax(W_t x);  h_t = tower_t(sum_k g_{t,k} expert_k(x)),  x = concat(e), t in {click, pay}.

Returns ``{"click": [batch, H], "pay": [batch, H]}`` (``{"click": ...}`` alone for a
click-only data set); the ranker puts its click and pay heads on the matching tower.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from ssr_tf.config import TASKS
from ssr_tf.models import registry
from ssr_tf.models.base import BackboneLayer
from ssr_tf.models.checks import Checks
from ssr_tf.models.dnn import MLP, mlp_flops


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
class MMoE(BackboneLayer):
  """[batch, F, dim] -> {task: [batch, H]} for each of `tasks`.

  Takes MMoEBackboneConfig's fields by keyword (see ssr_tf.models.base.BackboneLayer), and
  `tasks`, the heads the model trains: one gate (and tower) each, so a click-only model has
  no pay gate that nothing trains.

  Example:
    >>> out = MMoE(tasks=["click", "pay"], num_experts=3, expert_units=[8],
    ...            tower_units=[4])(tf.zeros([2, 5, 8]))
    >>> out["click"].shape   # [2, 4]
  """

  config_cls = MMoEBackboneConfig

  def __init__(self, tasks, **kwargs):
    super().__init__(**kwargs)
    self.tasks = tuple(tasks)
    bad = [t for t in self.tasks if t not in TASKS]
    if not self.tasks or bad:
      raise ValueError(f"tasks must be some of {TASKS}, got {list(tasks)}")
    c = self.cfg
    self.experts = [MLP(hidden_units=c.expert_units, activation=c.activation,
                        dropout=c.dropout, batch_norm=False, name=f"expert_{k}")
                    for k in range(c.num_experts)]
    self.gates = {t: tf.keras.layers.Dense(c.num_experts, name=f"gate_{t}") for t in self.tasks}
    self.towers = ({t: MLP(hidden_units=c.tower_units, activation=c.activation,
                           dropout=c.dropout, batch_norm=False, name=f"tower_{t}")
                    for t in self.tasks} if c.tower_units else {})

  def call(self, fields, training=None):
    x = tf.reshape(tf.cast(fields, self.compute_dtype),
                   [-1, fields.shape[1] * fields.shape[2]])            # [batch, d]
    experts = tf.stack([e(x, training=training) for e in self.experts], axis=1)  # [batch, K, H]
    out = {}
    for t in self.tasks:
      g = tf.nn.softmax(self.gates[t](x), axis=-1)                     # [batch, K]
      mixed = tf.einsum("bk,bkh->bh", g, experts)                      # [batch, H]
      out[t] = self.towers[t](mixed, training=training) if self.towers else mixed
    return out

  def flops_per_example(self, num_fields: int, embedding_dim: int) -> int:
    c = self.cfg
    d, k = num_fields * embedding_dim, c.num_experts
    h = c.expert_units[-1]
    experts = k * mlp_flops(d, c.expert_units)
    per_task = 2 * d * k + k + 4 * k + 2 * k * h       # gate logits, softmax, mixture
    per_task += mlp_flops(h, c.tower_units)
    return experts + len(self.tasks) * per_task

  def get_config(self):
    return {**super().get_config(), "tasks": list(self.tasks)}


@registry.register("mmoe", MMoEBackboneConfig, doc="MMoE (Ma et al., 2018), click/pay gates")
def build(cfg: MMoEBackboneConfig, num_fields: int, embedding_dim: int,
          tasks: tuple[str, ...]) -> tf.keras.layers.Layer:
  del num_fields, embedding_dim
  return MMoE(tasks, **dataclasses.asdict(cfg), name="mmoe_backbone")
