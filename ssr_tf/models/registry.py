"""Backbone registry: every model behind the `model.name` config key.

A backbone is a Keras layer mapping field embeddings ``[batch, F, dim]`` to either one
shared representation ``[batch, H]`` or a dict ``{"click": [batch, H], "pay": [batch, H]}``
(per-task towers, e.g. MMoE). Each registers a typed config dataclass, the one home of
its defaults; the dict under ``model.backbone`` in the experiment config is parsed into it
with key-path errors, and the backbone layer is built from its fields
(ssr_tf.models.base.BackboneLayer).
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import Any, Callable

from ssr_tf.config import TASKS, ModelConfig, from_dict
from ssr_tf.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Backbone:
  name: str
  config_cls: type
  # (typed config, num_fields, embedding_dim, tasks) -> layer; tasks: the heads the model
  # trains, ("click",) or ("click", "pay")
  build: Callable[[Any, int, int, tuple[str, ...]], Any]
  doc: str = ""


BACKBONES: dict[str, Backbone] = {}

# Modules that register backbones when imported; one per model.
_MODULES = ("ssr_tf.models.ssr", "ssr_tf.models.dnn", "ssr_tf.models.deepfm",
            "ssr_tf.models.dcnv2", "ssr_tf.models.autoint", "ssr_tf.models.mmoe",
            "ssr_tf.models.rankmixer", "ssr_tf.models.wukong", "ssr_tf.models.ssr_msn")


def register(name: str, config_cls: type, doc: str = ""):
  """Decorator: registers `build(cfg, num_fields, embedding_dim, tasks) -> keras layer`."""
  def wrap(fn):
    BACKBONES[name] = Backbone(name, config_cls, fn, doc)
    return fn
  return wrap


def load_all() -> dict[str, Backbone]:
  for module in _MODULES:
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as e:
      if e.name != module:   # a real import error inside an existing module
        raise
  return BACKBONES


def get(name: str) -> Backbone:
  load_all()
  if name not in BACKBONES:
    close = difflib.get_close_matches(name, list(BACKBONES), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"config key 'model.name': unknown model {name!r}{hint}; "
                      f"choose one of {sorted(BACKBONES)}")
  return BACKBONES[name]


def backbone_config(model: ModelConfig) -> Any:
  """The typed config of `model.name`, parsed from `model.backbone` and validated."""
  entry = get(model.name)
  cfg = from_dict(entry.config_cls, model.backbone, path="model.backbone")
  if hasattr(cfg, "validate"):
    cfg.validate()
  return cfg


def build_backbone(model: ModelConfig, num_fields: int,
                   tasks: tuple[str, ...] = TASKS, seed: int = 0) -> Any:
  """The backbone layer of `model.name` for `num_fields` fields; a per-task backbone (MMoE)
  builds towers for `tasks` only. `seed` is the run's `train.seed`: a backbone whose config
  has a `seed` key left null (SSR's view initialisers and index draws, the memories' values)
  takes it, so the run seed reaches every initial weight."""
  entry = get(model.name)
  cfg = backbone_config(model)
  if getattr(cfg, "seed", 0) is None:
    cfg = dataclasses.replace(cfg, seed=int(seed))
  return entry.build(cfg, num_fields, model.embedding_dim, tuple(tasks))
