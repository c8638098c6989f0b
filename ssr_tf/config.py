"""Typed experiment configs loaded from YAML.

Resolution order (as in TF Model Garden): dataclass defaults -> YAML file (unknown keys
rejected with the closest valid key suggested) -> ``--set key.path=value`` overrides ->
``validate()``. Every error names the dotted key path.
"""
from __future__ import annotations

import dataclasses
import difflib
import pathlib
import types
import typing
from typing import Any, Optional

import yaml

from ssr_tf.errors import ConfigError


@dataclasses.dataclass
class DataConfig:
  """Where the data lives and how it is read.

  Attributes:
    spec: path of the feature spec YAML (relative paths, here and below, are relative to
      the working directory).
    train: glob of training TFRecord shards.
    valid: glob of validation shards (early stopping, per-epoch metrics).
    test: glob of test shards (``ssr_tf evaluate``).
    batch_size: global batch size.
    shuffle_buffer: records in the shuffle buffer (0 disables shuffling).
    compression: "" or "GZIP" for the shards.
    deterministic: fixed read order and shuffle seed (tests, reproducibility).
    cycle_length: shards read in parallel by interleave.
  """
  spec: str = ""
  train: str = ""
  valid: str = ""
  test: str = ""
  batch_size: int = 1024
  shuffle_buffer: int = 20000
  compression: str = ""
  deterministic: bool = False
  cycle_length: int = 4


@dataclasses.dataclass
class ModelConfig:
  """Ranking model: embeddings -> backbone -> click and pay heads.

  Attributes:
    name: backbone, one of ssr_tf.models.registry.BACKBONES (ssr, dnn, ...).
    embedding_dim: embedding width of every feature (field embeddings are [batch, F, dim]).
    embedding_l2: L2 penalty on the embedding rows used in a batch.
    pay_mode: "independent" (own pay head) or "esmm" (p_pay = p_click * p_cvr).
    loss_weights: per-task loss weights, keys "click" and "pay".
    backbone: settings of the chosen backbone; their typed dataclass is registered with
      the backbone (e.g. ssr_tf.models.ssr.SSRBackboneConfig) and checked key by key.
  """
  name: str = "ssr"
  embedding_dim: int = 16
  embedding_l2: float = 0.0
  pay_mode: str = "independent"
  loss_weights: dict[str, float] = dataclasses.field(
      default_factory=lambda: {"click": 1.0, "pay": 1.0})
  backbone: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TrainConfig:
  """Optimisation, checkpoints and logging.

  Attributes:
    model_dir: checkpoints, TensorBoard logs, the resolved config and metrics.
    epochs: maximum number of passes over the training data.
    steps_per_epoch: cap on steps per epoch (0: the whole training split).
    learning_rate: Adam learning rate.
    optimizer: "adam" or "adagrad".
    early_stopping_patience: epochs without validation-AUC gain before stopping (0: off).
    checkpoint_every_steps: steps between backups used to resume mid-epoch.
    seed: global seed of initialisers and shuffling.
    verbose: Keras progress bar level (0, 1 or 2).
  """
  model_dir: str = "model_dir"
  epochs: int = 3
  steps_per_epoch: int = 0
  learning_rate: float = 1e-3
  optimizer: str = "adam"
  early_stopping_patience: int = 2
  checkpoint_every_steps: int = 500
  seed: int = 42
  verbose: int = 2


@dataclasses.dataclass
class ExperimentConfig:
  """A whole experiment: data, model and training."""
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

  def validate(self) -> None:
    """Rejects values no component could use; errors name the key path."""
    _check(self.data.batch_size > 0, "data.batch_size", "must be > 0")
    _check(self.data.compression in ("", "GZIP"), "data.compression", "must be '' or 'GZIP'")
    _check(self.model.embedding_dim > 0, "model.embedding_dim", "must be > 0")
    _check(self.model.pay_mode in ("independent", "esmm"), "model.pay_mode",
           "must be 'independent' or 'esmm'")
    for task in self.model.loss_weights:
      _check(task in ("click", "pay"), f"model.loss_weights.{task}", "tasks are 'click' and 'pay'")
    _check(self.train.epochs > 0, "train.epochs", "must be > 0")
    _check(self.train.learning_rate > 0, "train.learning_rate", "must be > 0")
    _check(self.train.optimizer in ("adam", "adagrad"), "train.optimizer",
           "must be 'adam' or 'adagrad'")
    from ssr_tf.models import registry  # pylint: disable=import-outside-toplevel
    registry.backbone_config(self.model)  # raises ConfigError naming model.name / model.backbone.*


def _check(ok: bool, path: str, why: str) -> None:
  if not ok:
    raise ConfigError(f"config key '{path}': {why}")


# ---------------------------------------------------------------------------------------
# Generic typed loading.


def from_dict(cls: type, data: Any, path: str = "") -> Any:
  """Builds dataclass `cls` from a nested dict, checking keys and types."""
  if data is None:
    data = {}
  if not isinstance(data, dict):
    raise ConfigError(f"config key '{path or '<root>'}': expected a mapping, got "
                      f"{type(data).__name__}")
  fields = {f.name: f for f in dataclasses.fields(cls)}
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for key, value in data.items():
    full = f"{path}.{key}" if path else str(key)
    if key not in fields:
      close = difflib.get_close_matches(str(key), list(fields), n=1)
      hint = f" (did you mean '{(path + '.') if path else ''}{close[0]}'?)" if close else ""
      raise ConfigError(f"unknown config key '{full}'{hint}; valid keys here: {sorted(fields)}")
    kwargs[key] = _coerce(hints[key], value, full)
  return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
  origin = typing.get_origin(tp)
  args = typing.get_args(tp)
  if origin in (typing.Union, types.UnionType):
    if value is None and type(None) in args:
      return None
    inner = [a for a in args if a is not type(None)]
    return _coerce(inner[0], value, path)
  if dataclasses.is_dataclass(tp):
    return from_dict(tp, value, path)
  if origin is list:
    if not isinstance(value, list):
      raise ConfigError(f"config key '{path}': expected a list, got {value!r}")
    return [_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
  if origin is dict:
    if not isinstance(value, dict):
      raise ConfigError(f"config key '{path}': expected a mapping, got {value!r}")
    return {k: _coerce(args[1], v, f"{path}.{k}") for k, v in value.items()}
  if tp is Any:
    return value
  if tp is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if tp is bool and not isinstance(value, bool):
    raise ConfigError(f"config key '{path}': expected true/false, got {value!r}")
  if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
    raise ConfigError(f"config key '{path}': expected an integer, got {value!r}")
  if tp in (float, str) and not isinstance(value, tp):
    raise ConfigError(f"config key '{path}': expected {tp.__name__}, got {value!r}")
  return value


def to_dict(cfg: Any) -> dict:
  return dataclasses.asdict(cfg)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
  """Applies ``key.path=value`` strings (value parsed as YAML) to a raw config dict."""
  for item in overrides or []:
    if "=" not in item:
      raise ConfigError(f"override {item!r}: expected key.path=value")
    key, text = item.split("=", 1)
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
      child = node.setdefault(part, {})
      if not isinstance(child, dict):
        raise ConfigError(f"override {item!r}: '{part}' is not a section")
      node = child
    node[parts[-1]] = yaml.safe_load(text)
  return raw


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None,
                cls: type = ExperimentConfig) -> ExperimentConfig:
  """Reads YAML `path`, applies ``key.path=value`` overrides and validates."""
  raw: dict = {}
  if path:
    p = pathlib.Path(path)
    if not p.is_file():
      raise ConfigError(f"config file not found: {path}")
    try:
      raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
      raise ConfigError(f"config file {path}: not valid YAML ({e})") from None
  raw = apply_overrides(raw, overrides or [])
  cfg = from_dict(cls, raw)
  if hasattr(cfg, "validate"):
    cfg.validate()
  return cfg


def save_config(cfg: Any, path: str) -> None:
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
