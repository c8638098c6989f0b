"""tf.data input pipeline over TFRecord shards of tf.Example.

list shards -> (shard per worker) -> interleave reads -> shuffle -> batch -> parse the
whole batch with tf.io.parse_example -> prefetch. Yields ``(features, labels)`` for Keras,
or ``(features, labels, extras)`` with group ids and oracle probabilities for evaluation.
"""
from __future__ import annotations

import logging
from typing import Optional

import tensorflow as tf

from ssr_tf.errors import DataError
from ssr_tf.features import Feature, FeatureSpec

AUTOTUNE = tf.data.AUTOTUNE
_DTYPES = {"int64": tf.int64, "string": tf.string, "float32": tf.float32}
_DEFAULTS = {"int64": -1, "string": "", "float32": float("nan")}


def list_files(pattern: str, key: str) -> list[str]:
  """Sorted shards matching `pattern` (comma-separated globs allowed)."""
  if not pattern:
    raise DataError(f"config key '{key}' is empty: give a glob of TFRecord shards")
  files = sorted(f for p in pattern.split(",") for f in tf.io.gfile.glob(p.strip()))
  if not files:
    raise DataError(f"config key '{key}': no files match {pattern!r}")
  return files


def group_dtype(spec: FeatureSpec) -> str:
  for f in spec.features:
    if f.name == spec.group_id:
      return f.dtype
  return "int64"


def parse_schema(spec: FeatureSpec, with_extras: bool = False, with_labels: bool = True) -> dict:
  """The tf.io.parse_example schema: features (missing values get defaults), labels."""
  schema = {}
  for f in spec.features:
    if f.type == "multi_categorical":
      schema[f.name] = tf.io.VarLenFeature(_DTYPES[f.dtype])
    else:
      schema[f.name] = tf.io.FixedLenFeature([], _DTYPES[f.dtype], _DEFAULTS[f.dtype])
  for col in spec.labels.values() if with_labels else ():
    schema[col] = tf.io.FixedLenFeature([], tf.float32)
  if with_extras:
    if spec.group_id and spec.group_id not in schema:
      schema[spec.group_id] = tf.io.FixedLenFeature([], _DTYPES[group_dtype(spec)],
                                                    _DEFAULTS[group_dtype(spec)])
    for col in spec.oracle.values():
      schema[col] = tf.io.FixedLenFeature([], tf.float32, -1.0)
  return schema


def _dense_multi(f: Feature, sparse: tf.sparse.SparseTensor) -> tf.Tensor:
  """VarLen values -> [batch, max_len], truncated and padded with the missing value."""
  dense = tf.sparse.to_dense(sparse, default_value=_DEFAULTS[f.dtype])
  dense = dense[:, :f.max_len]
  pad = f.max_len - tf.shape(dense)[1]
  return tf.pad(dense, [[0, 0], [0, pad]], constant_values=_DEFAULTS[f.dtype])


def _features(parsed: dict, spec: FeatureSpec) -> dict:
  return {f.name: _dense_multi(f, parsed[f.name]) if f.type == "multi_categorical"
          else parsed[f.name] for f in spec.features}


def parse_features(serialized: tf.Tensor, spec: FeatureSpec) -> dict:
  """Serialized tf.Example batch -> model inputs (labels not needed: serving)."""
  return _features(tf.io.parse_example(serialized, parse_schema(spec, with_labels=False)), spec)


def parse_batch(serialized: tf.Tensor, spec: FeatureSpec, with_extras: bool = False):
  """Serialized tf.Example batch -> (features, labels[, extras])."""
  parsed = tf.io.parse_example(serialized, parse_schema(spec, with_extras))
  features = _features(parsed, spec)
  labels = {task: parsed[col] for task, col in spec.labels.items()}
  if not with_extras:
    return features, labels
  extras = {}
  if spec.group_id:
    extras["group"] = features[spec.group_id] if spec.group_id in features else \
        parsed[spec.group_id]
  for task, col in spec.oracle.items():
    extras[f"oracle_{task}"] = parsed[col]
  return features, labels, extras


def check_records(files: list[str], spec: FeatureSpec, key: str, compression: str = "") -> None:
  """Fails early, naming the file and column, when the first record lacks a spec column
  or when no shard holds any record."""
  needed = [f.name for f in spec.features] + list(spec.labels.values())
  for path in files:
    try:
      first = next(iter(tf.data.TFRecordDataset(path, compression_type=compression).take(1)),
                   None)
    except tf.errors.OpError as e:
      raise DataError(f"{path}: cannot read TFRecord ({e.message.splitlines()[0]})") from None
    if first is None:
      continue
    try:
      example = tf.train.Example.FromString(first.numpy())
    except Exception:  # pylint: disable=broad-except
      raise DataError(f"{path}: record 0 is not a serialized tf.Example") from None
    present = example.features.feature
    for name in needed:
      if name not in present:
        raise DataError(f"{path}: record 0 has no column {name!r} that the feature spec "
                        f"needs (columns present: {sorted(present)[:20]})")
    return
  raise DataError(f"config key '{key}': the {len(files)} file(s) matched hold no records")


def find_corrupt_shard(files: list[str], compression: str = "") -> Optional[str]:
  """The first shard that fails to read to the end (used to name it after a DataLossError)."""
  for path in files:
    try:
      for _ in tf.data.TFRecordDataset(path, compression_type=compression):
        pass
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
      return path
  return None


def make_dataset(pattern: str, spec: FeatureSpec, batch_size: int, *, training: bool,
                 key: str = "data.train", shuffle_buffer: int = 0, seed: int = 0,
                 deterministic: bool = False, compression: str = "", cycle_length: int = 4,
                 with_extras: bool = False, repeat: bool = False,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 check: bool = True) -> tf.data.Dataset:
  """Builds the batched, parsed dataset for one split.

  With `input_context` (tf.distribute), shards go to input pipelines by file when there
  are at least as many files as pipelines, else by record (with a warning), and
  `batch_size` is the per-replica batch.
  """
  files = list_files(pattern, key)
  if check:
    check_records(files, spec, key, compression)
  ds = tf.data.Dataset.from_tensor_slices(files)
  if input_context and input_context.num_input_pipelines > 1:
    n, i = input_context.num_input_pipelines, input_context.input_pipeline_id
    if len(files) >= n:
      ds = ds.shard(n, i)
    else:
      logging.warning("%s: %d files for %d input pipelines; sharding by record", key,
                      len(files), n)
  if training and not deterministic:
    ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  ds = ds.interleave(
      lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
      cycle_length=min(cycle_length, len(files)), num_parallel_calls=AUTOTUNE,
      deterministic=deterministic or not training)
  if input_context and input_context.num_input_pipelines > len(files) > 0:
    ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
  if training and shuffle_buffer > 0:
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  ds = ds.batch(batch_size, drop_remainder=False)
  ds = ds.map(lambda s: parse_batch(s, spec, with_extras), num_parallel_calls=AUTOTUNE,
              deterministic=True)
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
  options.deterministic = deterministic or not training
  return ds.with_options(options).prefetch(AUTOTUNE)
