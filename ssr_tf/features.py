"""Feature spec: which columns a record has, how each becomes an embedding, the labels.

A spec is YAML::

  features:
    - {name: user_id, type: categorical, num_buckets: 5000}          # int ids in [0, N)
    - {name: city, type: categorical, dtype: string, vocab_file: vocab/city.txt, min_count: 5}
    - {name: query, type: categorical, dtype: string, hash_buckets: 100000}
    - {name: price, type: numeric, transform: log_bucketize, boundaries: [0.5, 1.0, 2.0]}
    - {name: score, type: numeric, transform: dense, mean: 0.3, std: 0.1}
    - {name: history, type: multi_categorical, num_buckets: 5000, max_len: 20, combiner: mean}
    - {name: ad_id, type: categorical, dtype: string, dynamic: {capacity: 1000000, admit_after: 2}}
    - {name: hist_query, type: sequence, dtype: string, share_with: query, max_len: 20}
  labels: {click: click, pay: pay}
  group_id: user_id            # GAUC groups; optional
  oracle: {click: oracle_click, pay: oracle_pay}   # optional true probabilities (synthetic data)

Embedding row 0 is shared by OOV, missing and padding values of a feature. A
``vocab_file`` has one value per line, optionally ``value<TAB>count``; with counts,
values seen ``<= min_count`` times map to OOV. A ``dynamic`` feature needs no vocabulary:
raw ids get rows of a fixed-capacity table as training sees them (ssr_tf/layers/dynamic_ids.py).
A ``sequence`` (a behaviour history, most recent first) looks its values up in the table of
the feature it ``share_with``s and is pooled against that feature's embedding by target
attention (docs/sequences.md).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from typing import Optional

import yaml

from ssr_tf.config import TASKS, from_dict, yaml_problem
from ssr_tf.errors import ConfigError

FEATURE_TYPES = ("categorical", "numeric", "multi_categorical", "sequence")
ATTENTION_POOLINGS = ("attention", "attention_softmax")
POOLINGS = (*ATTENTION_POOLINGS, "mean", "sum")
DEFAULT_ATTENTION_UNITS = (80, 40)


@dataclasses.dataclass
class DynamicIds:
  """Rows for raw ids assigned during training (admission by count, LRU eviction).

  Attributes:
    capacity: rows for admitted ids; when all are taken, the least recently seen ids give
      theirs up (the row and its optimizer slots are reset).
    admit_after: an id gets its own row once training batches have shown it this many
      times (counted in the graph by a count-min sketch); until then, and at evaluation
      and serving for ids never admitted, it uses one of the fallback rows.
    fallback_rows: rows shared by ids without their own row, chosen by hash(id).
  """
  capacity: int = 0
  admit_after: int = 1
  fallback_rows: int = 1


@dataclasses.dataclass
class Feature:
  """One input feature.

  Attributes:
    name: key in the tf.Example.
    type: categorical | numeric | multi_categorical | sequence.
    dtype: int64 or string (categorical kinds); numeric features are float32.
    num_buckets: identity ids in [0, num_buckets); anything else is OOV.
    vocab_file: vocabulary, one value (optionally value<TAB>count) per line.
    min_count: with counted vocabularies, values seen <= min_count times map to OOV.
    hash_buckets: hash the value's string form into this many buckets.
    transform: numeric only: log_bucketize (sign(v)*log1p|v|, then bucketize) or dense.
    boundaries: bucket boundaries on the log1p scale (log_bucketize).
    mean: dense numerics are standardised as (v - mean) / std.
    std: see mean.
    max_len: multi_categorical: values kept per record; sequence: history items kept, most
      recent first (padding/truncation).
    combiner: multi_categorical pooling: mean or sum over present values.
    embedding_dim: overrides model.embedding_dim for this feature.
    dynamic: raw ids (int64 or string) get rows as training sees them; see DynamicIds.
    share_with: sequence: the categorical or multi_categorical feature whose vocabulary and
      embedding table the history items use (required; dtype must match; no table of its own).
    pooling: sequence: attention (DIN target attention, unnormalised weights),
      attention_softmax (the same weights softmax-normalised over the present items), mean
      or sum over present items; null: attention. Not on side_of members, which use their
      group's weights.
    attention_units: sequence: hidden sizes of the attention MLP (sigmoid activations, as
      DIN); null: [80, 40]. Used by the attention poolings only.
    side_of: sequence: the main sequence whose items these values describe (e.g. each
      history item's genres); same max_len; pooled with the main sequence's weights.
    context: a request-level feature (user, request) that the context serving signature
      takes once per request, not per candidate (docs/serving.md)
  """
  name: str = ""
  type: str = "categorical"
  dtype: str = "int64"
  num_buckets: Optional[int] = None
  vocab_file: Optional[str] = None
  min_count: int = 0
  hash_buckets: Optional[int] = None
  transform: str = "log_bucketize"
  boundaries: list[float] = dataclasses.field(default_factory=list)
  mean: float = 0.0
  std: float = 1.0
  max_len: int = 1
  combiner: str = "mean"
  embedding_dim: Optional[int] = None
  dynamic: Optional[DynamicIds] = None
  context: bool = False
  share_with: Optional[str] = None
  pooling: Optional[str] = None
  attention_units: Optional[list[int]] = None
  side_of: Optional[str] = None

  @property
  def is_categorical(self) -> bool:
    return self.type in ("categorical", "multi_categorical")

  @property
  def is_sequence(self) -> bool:
    return self.type == "sequence"

  def vocabulary(self) -> list:
    """Vocabulary values kept after the min_count rule (vocab_file features)."""
    values = []
    for line in pathlib.Path(self.vocab_file).read_text().splitlines():
      if not line:
        continue
      value, _, count = line.partition("\t")
      if count and int(count) <= self.min_count:
        continue
      values.append(int(value) if self.dtype == "int64" else value)
    return values

  def rows_digest(self) -> str:
    """A hash of what the embedding rows stand for (ids, hash buckets, the vocabulary's
    values in order, numeric boundaries or scaling): equal digests index the same values
    to the same rows. Warm starts compare them."""
    if self.type == "numeric":
      rows = (["dense", self.mean, self.std] if self.transform == "dense"
              else ["buckets", *self.boundaries])
    elif self.is_sequence:
      rows = ["share_with", self.share_with]
    elif self.dynamic is not None:
      rows = ["dynamic", self.dynamic.capacity, self.dynamic.fallback_rows]
    elif self.num_buckets is not None:
      rows = ["ids", self.num_buckets]
    elif self.hash_buckets is not None:
      rows = ["hash", self.hash_buckets]
    else:
      rows = ["vocab", *self.vocabulary()]
    text = json.dumps([self.type, self.dtype, *rows])
    return hashlib.sha256(text.encode()).hexdigest()[:16]

  def table_size(self) -> int:
    """Rows of the embedding table (row 0 = OOV/missing); 0 for dense numerics and
    sequences (they use their share_with feature's table)."""
    if self.is_sequence:
      return 0
    if self.type == "numeric":
      return 0 if self.transform == "dense" else len(self.boundaries) + 2
    if self.dynamic is not None:
      return 1 + self.dynamic.fallback_rows + self.dynamic.capacity
    if self.num_buckets is not None:
      return self.num_buckets + 1
    if self.hash_buckets is not None:
      return self.hash_buckets + 1
    return len(self.vocabulary()) + 1


def _check_dynamic(f: Feature, path: str) -> None:
  d = f.dynamic
  if f.type != "categorical":
    raise ConfigError(f"{path}.dynamic: only single-valued categorical features take dynamic "
                      f"ids, not {f.type} (use hash_buckets for multi-valued fields)")
  if d.capacity <= 0:
    raise ConfigError(f"{path}.dynamic.capacity: must be > 0, got {d.capacity}")
  if d.admit_after < 1:
    raise ConfigError(f"{path}.dynamic.admit_after: must be >= 1, got {d.admit_after}")
  if d.fallback_rows < 1:
    raise ConfigError(f"{path}.dynamic.fallback_rows: must be >= 1, got {d.fallback_rows}")


_SEQUENCE_KEYS = ("share_with", "pooling", "attention_units", "side_of")


def _check_sequence(f: Feature, path: str, by_name: dict[str, Feature]) -> None:
  """A sequence's keys, once every feature is known (targets may come later in the list)."""
  if f.dtype not in ("int64", "string"):
    raise ConfigError(f"{path}.dtype: must be int64 or string, got {f.dtype!r}")
  for k in ("num_buckets", "vocab_file", "hash_buckets", "dynamic"):
    if getattr(f, k) is not None:
      raise ConfigError(f"{path}.{k}: a sequence has no table of its own; it uses the table "
                        "of the feature named by share_with (remove it)")
  if f.max_len <= 0:
    raise ConfigError(f"{path}.max_len: must be > 0")
  if not f.share_with:
    raise ConfigError(f"{path}.share_with: required: the categorical or multi_categorical "
                      "feature whose embedding table the history items use")
  target = by_name.get(f.share_with)
  if target is None:
    raise ConfigError(f"{path}.share_with: no feature named {f.share_with!r}")
  if target.type not in ("categorical", "multi_categorical"):
    raise ConfigError(f"{path}.share_with: {f.share_with!r} is a {target.type} feature; "
                      "a sequence shares the table of a categorical or multi_categorical one")
  if target.dynamic is not None:
    raise ConfigError(f"{path}.share_with: {f.share_with!r} has dynamic ids, whose rows are "
                      "assigned by admission as training sees the ids; history ids would have "
                      "to go through admission too. Give it hash_buckets or a vocabulary")
  if f.dtype != target.dtype:
    raise ConfigError(f"{path}.dtype: {f.dtype} differs from the dtype of {f.share_with!r} "
                      f"({target.dtype}), whose table it shares")
  if f.side_of is not None:
    main = by_name.get(f.side_of)
    if main is None or main.type != "sequence":
      raise ConfigError(f"{path}.side_of: {f.side_of!r} is not a sequence feature")
    if main is f or main.side_of is not None:
      raise ConfigError(f"{path}.side_of: {f.side_of!r} is itself a side_of member; name "
                        "the main sequence")
    if main.max_len != f.max_len:
      raise ConfigError(f"{path}.max_len: {f.max_len} differs from the max_len of "
                        f"{f.side_of!r} ({main.max_len}); side features have one entry per "
                        "history item")
    for k in ("pooling", "attention_units"):
      if getattr(f, k) is not None:
        raise ConfigError(f"{path}.{k}: a side_of member is pooled with the weights of "
                          f"{f.side_of!r}; set {k} there (remove it here)")
    return
  if f.pooling is None:
    f.pooling = "attention"
  if f.pooling not in POOLINGS:
    raise ConfigError(f"{path}.pooling: must be one of {POOLINGS}, got {f.pooling!r}")
  if f.attention_units is None:
    f.attention_units = list(DEFAULT_ATTENTION_UNITS)
  if not f.attention_units or any(u <= 0 for u in f.attention_units):
    raise ConfigError(f"{path}.attention_units: give one or more layer sizes > 0, got "
                      f"{f.attention_units}")


def check_labels(where: str, labels: dict) -> None:
  """labels maps task -> column: click is required, pay optional, nothing else."""
  if "click" not in labels:
    raise ConfigError(f"{where}: labels.click is required (the click label column)")
  for task in labels:
    if task not in TASKS:
      raise ConfigError(f"{where}: labels.{task}: tasks are click and pay")


@dataclasses.dataclass
class FeatureSpec:
  """Features, labels and optional group id / oracle columns of a data set."""
  features: list[Feature] = dataclasses.field(default_factory=list)
  labels: dict[str, str] = dataclasses.field(
      default_factory=lambda: {"click": "click", "pay": "pay"})
  group_id: Optional[str] = None
  oracle: dict[str, str] = dataclasses.field(default_factory=dict)

  def validate(self, base_dir: Optional[pathlib.Path] = None, where: str = "spec") -> None:
    if not self.features:
      raise ConfigError(f"{where}: 'features' is empty")
    names = set()
    for i, f in enumerate(self.features):
      path = f"{where}: features[{i}] ({f.name or '?'})"
      if not f.name:
        raise ConfigError(f"{path}: 'name' is required")
      if f.name in names:
        raise ConfigError(f"{path}: duplicate feature name")
      names.add(f.name)
      if f.type not in FEATURE_TYPES:
        raise ConfigError(f"{path}.type: {f.type!r} is not one of {FEATURE_TYPES}")
      if f.is_sequence:
        continue                                   # checked below, all features known
      for k in _SEQUENCE_KEYS:
        if getattr(f, k) is not None:
          raise ConfigError(f"{path}.{k}: only sequence features take it, not {f.type}")
      if f.is_categorical:
        if f.dtype not in ("int64", "string"):
          raise ConfigError(f"{path}.dtype: must be int64 or string, got {f.dtype!r}")
        sources = [k for k in ("num_buckets", "vocab_file", "hash_buckets", "dynamic")
                   if getattr(f, k) is not None]
        if len(sources) != 1:
          raise ConfigError(f"{path}: give exactly one of num_buckets, vocab_file, "
                            "hash_buckets, dynamic")
        if f.dynamic is not None:
          _check_dynamic(f, path)
        if f.num_buckets is not None and f.dtype != "int64":
          raise ConfigError(f"{path}.num_buckets: needs dtype int64 (use vocab_file or "
                            "hash_buckets for strings)")
        if f.vocab_file is not None:
          vf = pathlib.Path(f.vocab_file)
          if not vf.is_absolute() and base_dir is not None:
            f.vocab_file = str(base_dir / vf)
          if not pathlib.Path(f.vocab_file).is_file():
            raise ConfigError(f"{path}.vocab_file: file not found: {f.vocab_file}")
        for k in ("num_buckets", "hash_buckets"):
          if getattr(f, k) is not None and getattr(f, k) <= 0:
            raise ConfigError(f"{path}.{k}: must be > 0")
        if f.type == "multi_categorical":
          if f.max_len <= 0:
            raise ConfigError(f"{path}.max_len: must be > 0")
          if f.combiner not in ("mean", "sum"):
            raise ConfigError(f"{path}.combiner: must be mean or sum")
      else:
        if f.dynamic is not None:
          raise ConfigError(f"{path}.dynamic: only categorical features take dynamic ids, "
                            "not numeric ones")
        f.dtype = "float32"
        if f.transform not in ("log_bucketize", "dense"):
          raise ConfigError(f"{path}.transform: must be log_bucketize or dense")
        if f.transform == "log_bucketize":
          if not f.boundaries:
            raise ConfigError(f"{path}.boundaries: log_bucketize needs boundaries")
          if any(b2 <= b1 for b1, b2 in zip(f.boundaries, f.boundaries[1:])):
            raise ConfigError(f"{path}.boundaries: must be increasing")
        if f.std <= 0:
          raise ConfigError(f"{path}.std: must be > 0")
    by_name = {f.name: f for f in self.features}
    for i, f in enumerate(self.features):
      if f.is_sequence:
        _check_sequence(f, f"{where}: features[{i}] ({f.name})", by_name)
    check_labels(where, self.labels)

  @property
  def feature_names(self) -> list[str]:
    return [f.name for f in self.features]

  def feature(self, name: str) -> Feature:
    for f in self.features:
      if f.name == name:
        return f
    raise KeyError(name)

  def rows_of(self, f: Feature) -> Feature:
    """The feature whose encoding and table `f` uses: its share_with target for a
    sequence, else itself."""
    return self.feature(f.share_with) if f.is_sequence else f

  def value_shape(self, f: Feature) -> list[int]:
    """Per-record shape of `f` as the model takes it: [] single-valued, [max_len]
    multi_categorical, [max_len] sequence of a single-valued target, [max_len, K] sequence
    of a multi_categorical target with max_len K."""
    if f.type == "multi_categorical":
      return [f.max_len]
    if f.is_sequence:
      target = self.rows_of(f)
      return [f.max_len, target.max_len] if target.type == "multi_categorical" else [f.max_len]
    return []

  def sequence_groups(self) -> list[list[Feature]]:
    """Each main sequence followed by its side_of members, in spec order."""
    return [[m, *(s for s in self.features if s.is_sequence and s.side_of == m.name)]
            for m in self.features if m.is_sequence and m.side_of is None]

  def has_pay(self) -> bool:
    return "pay" in self.labels

  def to_yaml(self) -> str:
    d = dataclasses.asdict(self)
    d["features"] = [{k: v for k, v in f.items() if v not in (None, [], "")
                      and not (k in _DEFAULTS and _DEFAULTS[k] == v)} | {"name": f["name"],
                                                                        "type": f["type"]}
                     for f in d["features"]]
    return yaml.safe_dump(d, sort_keys=False)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Feature)
             if f.default is not dataclasses.MISSING}


def load_spec(path: str) -> FeatureSpec:
  """Reads and validates a feature spec; vocab_file paths resolve against its folder."""
  p = pathlib.Path(path)
  if not p.is_file():
    raise ConfigError(f"feature spec not found: {path}")
  try:
    raw = yaml.safe_load(p.read_text()) or {}
  except yaml.YAMLError as e:
    raise ConfigError(f"feature spec {path}: not valid YAML ({yaml_problem(e)})") from None
  spec = from_dict(FeatureSpec, raw, path="")
  spec.validate(base_dir=p.resolve().parent, where=f"feature spec {path}")
  return spec
