"""SSR + MSN backbone: stacked SSR layers with Product-Key Memory reads gated into the stack.

x_0 = concat(fields);  x_{l+1} = SSR_l(x_l);  after layer a of memory j:
x_{a+1} <- Gate_j(x_{a+1}, PKM_j(q_j)),  q_j = x_0 ("input") or x_{a+1} ("layer").
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf

from ssr_tf.models.checks import Checks
from ssr_tf.layers.pkm import GATES, QUERY_NORMS, MemoryGate, ProductKeyMemory
from ssr_tf.models import registry
from ssr_tf.models.ssr import SSRBackbone, SSRBackboneConfig, check_input_width

QUERY_SOURCES = ("input", "layer")


@dataclasses.dataclass
class MemoryConfig:
  """One memory layer of `model.backbone.memories` (model.name: ssr_msn).

  The one home of the memory defaults: ProductKeyMemory's optional arguments default to
  these fields.

  Attributes:
    after_layer: index of the SSR layer whose output the memory gates (-1: the flattened
      field embeddings, before the first SSR layer).
    query_from: "input" (query from the flattened field embeddings) or "layer" (from the
      representation being gated).
    gate: "sigmoid" (h * 2 sigmoid(m W + b)) or "add" (h + m W + b).
    num_sub_keys: n; the memory has n**2 slots.
    key_dim: query / key width per head (even).
    top_k: slots read per example and head.
    sub_top_k: candidates per sub-key table (default top_k).
    value_dim: width of a memory slot.
    heads: query heads (reads summed).
    query_norm: "batch", "layer" or "none" (collapse countermeasure).
    overparam: over-parameterisation factor of query net and keys (1 = off).
    track_usage: log slot utilisation (share of slots hit, KL to uniform) while training.
    usage_window: examples per utilisation window.
  """
  after_layer: int = 0
  query_from: str = "input"
  gate: str = "sigmoid"
  num_sub_keys: int = 128
  key_dim: int = 32
  top_k: int = 16
  sub_top_k: Optional[int] = None
  value_dim: int = 32
  heads: int = 1
  query_norm: str = "batch"
  overparam: int = 1
  track_usage: bool = True
  usage_window: int = 65536


@dataclasses.dataclass
class MSNBackboneConfig(SSRBackboneConfig):
  """SSR backbone settings (all of `model.name: ssr`'s keys) plus `memories`.

  Attributes:
    memories: memory layers, each gating the output of one SSR layer (see MemoryConfig);
      an empty list gives the plain SSR backbone.
  """
  memories: list[MemoryConfig] = dataclasses.field(default_factory=lambda: [MemoryConfig()])

  def validate(self) -> None:
    super().validate()
    for i, mem in enumerate(self.memories):
      c = Checks(mem, prefix=f"model.backbone.memories[{i}]")
      if not -1 <= mem.after_layer < self.num_layers:
        c.bad("after_layer", f"must be in [-1, num_layers - 1 = {self.num_layers - 1}], "
                             f"got {mem.after_layer}")
      c.choice("query_from", QUERY_SOURCES)
      c.choice("gate", GATES)
      c.choice("query_norm", QUERY_NORMS)
      c.at_least_one("num_sub_keys", "key_dim", "top_k", "value_dim", "heads", "overparam",
                     "usage_window")
      if mem.key_dim % 2:
        c.bad("key_dim", f"must be even (two half-queries), got {mem.key_dim}")
      ks = mem.sub_top_k or mem.top_k
      if ks > mem.num_sub_keys:
        c.bad("sub_top_k" if mem.sub_top_k else "top_k",
              f"must be <= num_sub_keys ({mem.num_sub_keys}), got {ks}")
      if mem.top_k > ks * ks:
        c.bad("top_k", f"must be <= sub_top_k**2 = {ks * ks}, got {mem.top_k}")


@tf.keras.utils.register_keras_serializable(package="ssr_tf")
class MSNBackbone(SSRBackbone):
  """[batch, F, dim] -> SSR layers with gated PKM reads -> [batch, num_views * view_dim].

  Takes MSNBackboneConfig's fields by keyword: every SSRBackbone setting plus `memories`,
  a list of MemoryConfig (or their fields as dicts). Memory j uses the backbone's `impl`
  for its sparse gather and seed `seed + 1000 + j`.
  """

  config_cls = MSNBackboneConfig

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    impl, seed = self.cfg.impl, (0 if self.cfg.seed is None else self.cfg.seed)
    self.memories = []
    self.gates = []
    for j, m in enumerate(self.memory_cfgs):
      self.memories.append(ProductKeyMemory(
          m.num_sub_keys, m.key_dim, m.top_k, m.value_dim, heads=m.heads,
          query_norm=m.query_norm, sub_top_k=m.sub_top_k, overparam=m.overparam,
          track_usage=m.track_usage, usage_window=m.usage_window, impl=impl,
          seed=seed + 1000 + j, name=f"memory_{j}"))
      self.gates.append(MemoryGate(m.gate, name=f"memory_gate_{j}"))

  @property
  def splits_first_layer(self) -> bool:
    """False: a memory reads the whole input or a layer's output, so the first layer's
    projection alone is not the backbone's context term."""
    return False

  @property
  def memory_cfgs(self) -> list[MemoryConfig]:
    return self.cfg.memories

  def after_layer(self, where: int, x, x0, training):
    """The memories placed after layer `where`, each gated into `x`."""
    for mem, gate, cfg in zip(self.memories, self.gates, self.memory_cfgs):
      if cfg.after_layer == where:
        q = x0 if cfg.query_from == "input" else x
        x = gate([x, mem(q, training=training)])              # [batch, width]
    return x

  def memory_usage(self) -> dict:
    """{memory name: ProductKeyMemory.usage()} for the memories that track usage."""
    return {m.name: m.usage() for m in self.memories if m.track_usage and m.built}

  def flops_per_example(self, num_fields: int, embedding_dim: int) -> int:
    d0 = num_fields * embedding_dim
    widths = [d0] + [layer.num_views * layer.view_dim for layer in self.ssr_layers]
    total = super().flops_per_example(num_fields, embedding_dim)
    for mem, gate, cfg in zip(self.memories, self.gates, self.memory_cfgs):
      width = widths[cfg.after_layer + 1]
      total += mem.flops_per_example(d0 if cfg.query_from == "input" else width)
      total += gate.flops_per_example(width, cfg.value_dim)
    return total


@registry.register("ssr_msn", MSNBackboneConfig,
                   doc="SSR layers + MSN product-key memories with memory gating")
def build(cfg: MSNBackboneConfig, num_fields: int, embedding_dim: int,
          tasks: tuple[str, ...]) -> tf.keras.layers.Layer:
  del tasks
  check_input_width(cfg, num_fields * embedding_dim)
  return MSNBackbone(**dataclasses.asdict(cfg), name="ssr_msn_backbone")
