"""Typed experiment configs loaded from YAML.

Resolution order (as in TF Model Garden): dataclass defaults -> YAML file (unknown keys
rejected with the closest valid key suggested) -> ``--set key.path=value`` overrides ->
``validate()``. Every error names the dotted key path.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import pathlib
import re
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
    deterministic: fixed read order and shuffle seed: with the same ``train.seed`` two
      runs train bit-identical weights (off: parallel reads in whatever order they finish).
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
    steps_per_epoch: steps per epoch (0: enough global batches to cover the training split
      once, counted from the shards; training reads one endless, resumable stream).
    learning_rate: learning rate of train.optimizer.
    optimizer: "adam" or "adagrad": the optimizer of every weight except the embedding
      tables.
    embedding_optimizer: the embedding tables' optimizer (ssr_tf/optimizers.py):
      lazy_adam (Adam on the rows a batch touches), adagrad, ftrl (sparse kernels) or adam
      (dense Adam: every row's moments decay every step, so a step costs O(table rows)).
    embedding_learning_rate: the tables' learning rate (0: train.learning_rate); the same
      decay, warm-up and scaling apply.
    early_stopping_patience: epochs without validation-AUC gain before stopping (0: off).
    checkpoint_every_steps: steps between backups used to resume mid-epoch (a backup is
      also written at every epoch end).
    seed: global seed of initialisers and shuffling.
    verbose: Keras progress bar level (0, 1 or 2).
    lr_decay: "none" (constant rate), "cosine" or "linear": decay the rate over the whole
      run (epochs x steps_per_epoch steps) down to lr_decay_final x the rate.
    lr_decay_final: the rate at the last step, as a fraction of learning_rate (0 to 1).
    ics_log_every_steps: steps between TensorBoard points of each SSR layer's ICS output
      sparsity and magnitude (``logs/ics``, the paper's Figure 5), measured on a fixed
      probe batch of up to 1024 validation (else training) rows; 0 turns it off. Only for
      models with SSR layers under the default strategy.
    warm_start_from: a checkpoint prefix, or the model_dir of an earlier run (its newest
      best checkpoint): a new run starts from those model weights instead of random ones
      (incremental training on the next day's data). Every weight of this model must be
      in the checkpoint with the same shape and the checkpoint must hold no other model
      weights, so model and feature spec must be those of the earlier run; a feature
      whose vocabulary, buckets or boundaries changed is refused by name (checked against
      the earlier run's model_dir/feature_rows.json). The optimizer and the
      learning-rate schedule start fresh. A run resuming from its own backup ignores it.
  """
  model_dir: str = "model_dir"
  epochs: int = 3
  steps_per_epoch: int = 0
  learning_rate: float = 1e-3
  optimizer: str = "adam"
  embedding_optimizer: str = "lazy_adam"
  embedding_learning_rate: float = 0.0
  lr_decay: str = "none"
  lr_decay_final: float = 0.0
  early_stopping_patience: int = 2
  checkpoint_every_steps: int = 500
  seed: int = 42
  verbose: int = 2
  ics_log_every_steps: int = 100
  warm_start_from: str = ""


TASKS = ("click", "pay")   # the ranking tasks; labels and heads use these names
STRATEGIES = ("default", "mirrored", "multi_worker_mirrored", "parameter_server")
LR_SCALING = ("none", "linear", "sqrt")
LR_DECAYS = ("none", "cosine", "linear")
EMBEDDING_OPTIMIZERS = ("lazy_adam", "adagrad", "ftrl", "adam")
PARTITIONERS = ("min_size", "fixed", "none")


@dataclasses.dataclass
class DistributionConfig:
  """How training is spread over devices and machines (see docs/distributed.md).

  Attributes:
    strategy: default (one device), mirrored (all GPUs of one host, or `devices`),
      multi_worker_mirrored (synchronous data parallelism over the workers of TF_CONFIG)
      or parameter_server (asynchronous workers, variables and sharded embedding tables
      on parameter servers, driven by a ClusterCoordinator on the chief).
    devices: mirrored only: the devices to replicate over, e.g. ["/gpu:0", "/gpu:1"];
      empty: every visible GPU, or the (logical) CPUs when there is no GPU.
    num_logical_cpu_devices: split the host CPU into this many logical devices before
      TensorFlow starts (0 or 1: off), so mirrored can run over several devices on a
      CPU-only host (tests, benchmarks; shows overhead, not speed-up).
    cross_device_ops: mirrored all-reduce: auto, nccl, hierarchical_copy or reduce_to_one.
    communication: multi_worker_mirrored collectives: auto, ring or nccl.
    per_replica_batch_size: > 0: the global batch is this times the number of replicas
      (data.batch_size is ignored); 0: data.batch_size is the global batch, split evenly
      across replicas (it must divide by their number).
    lr_scaling: none, linear or sqrt: the learning rate is train.learning_rate x
      rule(global batch / lr_reference_batch_size) (Goyal et al. 2017 for linear).
    lr_reference_batch_size: the global batch train.learning_rate was tuned at
      (0: data.batch_size, so the factor is 1 unless per_replica_batch_size grows it).
    lr_warmup_steps: steps of linear warm-up from train.learning_rate to the scaled rate
      (0: the scaled rate from the first step).
    steps_per_execution: train steps per tf.function call (> 1 amortises dispatch, most
      useful with parameter_server).
    partitioner: parameter_server: how embedding tables are split across the parameter
      servers: min_size (MinSizePartitioner), fixed (FixedShardsPartitioner) or none.
    min_shard_bytes: min_size: the smallest shard; a table smaller than this stays whole.
    max_shards: min_size: at most this many shards (0: the number of parameter servers).
    num_shards: fixed: shards per table (0: the number of parameter servers).
    embedding_pattern: regular expression on variable names that marks the embedding
      tables: only these are partitioned, and their gradients must stay sparse.
    sparse_gradients: require, warn or off: what happens when an embedding table's
      gradient reaches the all-reduce as a dense tensor (a whole-table all-reduce each step).
    tf_config: the cluster as a TF_CONFIG JSON string; empty: the TF_CONFIG environment
      variable (the usual way: each machine's launcher sets it).
    local_workers: parameter_server, tests and benchmarks: start this many worker servers
      in this process on 127.0.0.1 instead of reading TF_CONFIG (0: off).
    local_ps: parameter servers started in this process with local_workers.
  """
  strategy: str = "default"
  devices: list[str] = dataclasses.field(default_factory=list)
  num_logical_cpu_devices: int = 0
  cross_device_ops: str = "auto"
  communication: str = "auto"
  per_replica_batch_size: int = 0
  lr_scaling: str = "none"
  lr_reference_batch_size: int = 0
  lr_warmup_steps: int = 0
  steps_per_execution: int = 1
  partitioner: str = "min_size"
  min_shard_bytes: int = 256 << 10
  max_shards: int = 0
  num_shards: int = 0
  embedding_pattern: str = "^emb_"
  sparse_gradients: str = "require"
  tf_config: str = ""
  local_workers: int = 0
  local_ps: int = 2

  def validate(self) -> None:
    """Rejects unusable values; errors name ``distribution.<key>``."""
    _check(self.strategy in STRATEGIES, "distribution.strategy",
           f"must be one of {list(STRATEGIES)}, got {self.strategy!r}")
    _check(not self.devices or self.strategy == "mirrored", "distribution.devices",
           f"only used with strategy 'mirrored', not {self.strategy!r}")
    _check(self.num_logical_cpu_devices >= 0, "distribution.num_logical_cpu_devices",
           "must be >= 0")
    _check(self.cross_device_ops in ("auto", "nccl", "hierarchical_copy", "reduce_to_one"),
           "distribution.cross_device_ops",
           f"must be auto, nccl, hierarchical_copy or reduce_to_one, got {self.cross_device_ops!r}")
    _check(self.communication in ("auto", "ring", "nccl"), "distribution.communication",
           f"must be auto, ring or nccl, got {self.communication!r}")
    _check(self.per_replica_batch_size >= 0, "distribution.per_replica_batch_size",
           "must be >= 0")
    _check(self.lr_scaling in LR_SCALING, "distribution.lr_scaling",
           f"must be one of {list(LR_SCALING)}, got {self.lr_scaling!r}")
    _check(self.lr_reference_batch_size >= 0, "distribution.lr_reference_batch_size",
           "must be >= 0")
    _check(self.lr_warmup_steps >= 0, "distribution.lr_warmup_steps", "must be >= 0")
    _check(self.steps_per_execution >= 1, "distribution.steps_per_execution", "must be >= 1")
    _check(self.partitioner in PARTITIONERS, "distribution.partitioner",
           f"must be one of {list(PARTITIONERS)}, got {self.partitioner!r}")
    _check(self.min_shard_bytes > 0, "distribution.min_shard_bytes", "must be > 0")
    _check(self.max_shards >= 0, "distribution.max_shards", "must be >= 0")
    _check(self.num_shards >= 0, "distribution.num_shards", "must be >= 0")
    try:
      re.compile(self.embedding_pattern)
    except re.error as e:
      raise ConfigError(f"config key 'distribution.embedding_pattern': not a regular "
                        f"expression ({e})") from None
    _check(self.sparse_gradients in ("require", "warn", "off"), "distribution.sparse_gradients",
           f"must be require, warn or off, got {self.sparse_gradients!r}")
    if self.tf_config:
      try:
        parsed = json.loads(self.tf_config)
      except ValueError as e:
        raise ConfigError(f"config key 'distribution.tf_config': not valid JSON ({e})") from None
      _check(isinstance(parsed, dict) and isinstance(parsed.get("cluster"), dict),
             "distribution.tf_config", "needs a 'cluster' mapping, as TF_CONFIG does")
    _check(self.local_workers >= 0, "distribution.local_workers", "must be >= 0")
    _check(self.local_workers == 0 or self.strategy == "parameter_server",
           "distribution.local_workers", "in-process clusters are for strategy "
           f"'parameter_server' (multi_worker_mirrored needs one process per worker), not "
           f"{self.strategy!r}")
    _check(self.local_workers == 0 or self.local_ps >= 1, "distribution.local_ps",
           "must be >= 1 when distribution.local_workers > 0")
    _check(not (self.local_workers and self.tf_config), "distribution.local_workers",
           "give either an in-process cluster or distribution.tf_config, not both")


@dataclasses.dataclass
class ExperimentConfig:
  """A whole experiment: data, model, training and its distribution."""
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  distribution: DistributionConfig = dataclasses.field(default_factory=DistributionConfig)

  def validate(self) -> None:
    """Rejects values no component could use; errors name the key path."""
    _check(self.data.batch_size > 0, "data.batch_size", "must be > 0")
    _check(self.data.compression in ("", "GZIP"), "data.compression", "must be '' or 'GZIP'")
    _check(self.model.embedding_dim > 0, "model.embedding_dim", "must be > 0")
    _check(self.model.pay_mode in ("independent", "esmm"), "model.pay_mode",
           "must be 'independent' or 'esmm'")
    for task in self.model.loss_weights:
      _check(task in TASKS, f"model.loss_weights.{task}", "tasks are 'click' and 'pay'")
    _check(self.train.epochs > 0, "train.epochs", "must be > 0")
    _check(self.train.learning_rate > 0, "train.learning_rate", "must be > 0")
    _check(self.train.optimizer in ("adam", "adagrad"), "train.optimizer",
           "must be 'adam' or 'adagrad'")
    _check(self.train.embedding_optimizer in EMBEDDING_OPTIMIZERS,
           "train.embedding_optimizer", f"must be one of {list(EMBEDDING_OPTIMIZERS)}, got "
           f"{self.train.embedding_optimizer!r}")
    _check(self.train.embedding_learning_rate >= 0, "train.embedding_learning_rate",
           "must be >= 0 (0: train.learning_rate)")
    _check(self.train.lr_decay in LR_DECAYS, "train.lr_decay",
           f"must be one of {list(LR_DECAYS)}, got {self.train.lr_decay!r}")
    _check(0.0 <= self.train.lr_decay_final <= 1.0, "train.lr_decay_final",
           "must be between 0 and 1")
    _check(self.train.steps_per_epoch >= 0, "train.steps_per_epoch", "must be >= 0")
    _check(self.train.checkpoint_every_steps > 0, "train.checkpoint_every_steps", "must be > 0")
    _check(self.train.ics_log_every_steps >= 0, "train.ics_log_every_steps",
           "must be >= 0 (0: off)")
    self.distribution.validate()
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


_EXPONENT_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


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
  if tp is float and isinstance(value, str) and _EXPONENT_FLOAT.match(value.strip()):
    # YAML 1.1 (PyYAML) reads 1e-4 (no dot) as a string; users mean the number.
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


def yaml_problem(e: yaml.YAMLError) -> str:
  """YAML's complaint in one line, with the line and column where it has them."""
  why = str(getattr(e, "problem", None) or e).splitlines()[0]
  mark = getattr(e, "problem_mark", None)
  return f"{why} at line {mark.line + 1}, column {mark.column + 1}" if mark else why


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
    try:
      node[parts[-1]] = yaml.safe_load(text)
    except yaml.YAMLError as e:
      raise ConfigError(f"override {key.strip()}: value {text!r} is not valid YAML "
                        f"({yaml_problem(e)})") from None
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
      raise ConfigError(f"config file {path}: not valid YAML ({yaml_problem(e)})") from None
  raw = apply_overrides(raw, overrides or [])
  cfg = from_dict(cls, raw)
  if hasattr(cfg, "validate"):
    cfg.validate()
  return cfg


def save_config(cfg: Any, path: str) -> None:
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
