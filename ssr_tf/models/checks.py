"""Validation of backbone configs: each failure is a ConfigError naming the full key path."""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from ssr_tf.errors import ConfigError


class Checks:
  """Checks on the fields of one config object; errors read "config key '<prefix>.<key>': ...".

  Example:
    >>> c = Checks(cfg)                     # prefix "model.backbone"
    >>> c.at_least_one("num_layers", "num_heads")
    >>> c.widths("hidden_units"); c.rate("dropout"); c.choice("structure", ("stacked", "parallel"))
    >>> c.unused("filter", "mode 'static' does not use it")
  """

  def __init__(self, cfg: Any, prefix: str = "model.backbone"):
    self.cfg = cfg
    self.prefix = prefix

  def bad(self, key: str, why: str) -> None:
    raise ConfigError(f"config key '{self.prefix}.{key}': {why}")

  def at_least_one(self, *keys: str) -> None:
    """Every key is an integer >= 1."""
    for key in keys:
      value = getattr(self.cfg, key)
      if value < 1:
        self.bad(key, f"must be >= 1, got {value}")

  def widths(self, *keys: str, non_empty: bool = False) -> None:
    """Every key is a list of layer widths >= 1 (and not empty when non_empty)."""
    for key in keys:
      units: Sequence[int] = getattr(self.cfg, key)
      if non_empty and not units:
        self.bad(key, f"give one or more widths >= 1, got {list(units)}")
      if any(u < 1 for u in units):
        self.bad(key, f"widths must be >= 1, got {list(units)}")

  def rate(self, *keys: str) -> None:
    """Every key is a probability in [0, 1) (dropout-like rates)."""
    for key in keys:
      value = getattr(self.cfg, key)
      if not 0.0 <= value < 1.0:
        self.bad(key, f"must be in [0, 1), got {value}")

  def choice(self, key: str, options: Sequence[str]) -> None:
    """The key is one of `options`."""
    value = getattr(self.cfg, key)
    if value not in options:
      self.bad(key, f"must be one of {', '.join(map(repr, options))}, got {value!r}")

  def unused(self, key: str, why: str) -> None:
    """The key keeps its dataclass default: in this combination nothing reads it, and a
    value given anyway would be silently ignored."""
    field = next(f for f in dataclasses.fields(self.cfg) if f.name == key)
    default = (field.default if field.default is not dataclasses.MISSING
               else field.default_factory())
    value = getattr(self.cfg, key)
    if value != default:
      self.bad(key, f"{why}: leave it out (default {default!r}), got {value!r}")
