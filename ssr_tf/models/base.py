"""BackboneLayer: a backbone whose settings are the fields of its config dataclass.

Each backbone's config dataclass (``SSRBackboneConfig``, ``DNNBackboneConfig``, ...) is the
one place its defaults are written. The layer takes the same fields by keyword and keeps
them as ``self.cfg``, an instance of that dataclass: a field not given takes the dataclass
default, the values are type-checked and validated like ``model.backbone`` in a YAML config
(errors name ``model.backbone.<key>``), and a misspelt keyword is refused by Keras
("Keyword argument not understood"). ``get_config`` returns every field, so
``from_config(get_config())`` rebuilds the same layer.

Example:
  >>> MLP(hidden_units=[32, 16])                       # activation etc.: DNNBackboneConfig's
  >>> SSRBackbone(**dataclasses.asdict(cfg), name="ssr_backbone")
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import tensorflow as tf

from ssr_tf.config import from_dict

PREFIX = "model.backbone"


def _plain(value: Any) -> Any:
  """Tuples as lists and dataclass instances as dicts, the shapes a YAML config has."""
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return dataclasses.asdict(value)
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def parse_settings(config_cls: type, settings: dict) -> Any:
  """`config_cls` from keyword settings (absent fields: its defaults), typed and validated."""
  cfg = from_dict(config_cls, {k: _plain(v) for k, v in settings.items()}, path=PREFIX)
  if hasattr(cfg, "validate"):
    cfg.validate()
  return cfg


class BackboneLayer(tf.keras.layers.Layer):
  """Base of the registered backbones: ``config_cls``'s fields as keyword settings.

  Subclasses set ``config_cls`` and read their settings from ``self.cfg``.
  """

  config_cls: ClassVar[type]

  def __init__(self, **kwargs):
    names = {f.name for f in dataclasses.fields(self.config_cls)}
    settings = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
    super().__init__(**kwargs)            # Keras refuses any other keyword
    self.cfg = parse_settings(self.config_cls, settings)

  def get_config(self):
    return {**super().get_config(), **dataclasses.asdict(self.cfg)}
