"""tf.data input pipeline over TFRecord shards of tf.Example.

list shards -> (shard per input pipeline) -> interleave reads -> shuffle -> batch -> parse
the whole batch with tf.io.parse_example -> prefetch. Yields ``(features, labels)`` for
Keras, or ``(features, labels, extras)`` with group ids and oracle probabilities for
evaluation.

Training reads :func:`train_stream`: one endless stream of epochs, each shuffled with a
seed derived from (seed, epoch), cut into equal batches. Its position is a pure function
of the global step, so a restarted run skips exactly the records the restored state has
already trained on (see docs/distributed.md). :func:`inputs` builds what `ssr_tf train`
passes to ``fit`` under a tf.distribute strategy.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Callable, Optional

import tensorflow as tf

from ssr_tf import distribute
from ssr_tf.config import ExperimentConfig
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
    if f.type in ("multi_categorical", "sequence"):
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


def _dense_multi(f: Feature, sparse: tf.sparse.SparseTensor, shape: list[int]) -> tf.Tensor:
  """VarLen values -> [batch, *shape]: the first prod(shape) values, padded with the missing
  value, row-major (a sequence of a multi-valued target: [batch, max_len, K])."""
  width = 1
  for d in shape:
    width *= d
  dense = tf.sparse.to_dense(sparse, default_value=_DEFAULTS[f.dtype])
  dense = dense[:, :width]
  pad = width - tf.shape(dense)[1]
  dense = tf.pad(dense, [[0, 0], [0, pad]], constant_values=_DEFAULTS[f.dtype])
  return dense if len(shape) == 1 else tf.reshape(dense, [-1, *shape])


def _features(parsed: dict, spec: FeatureSpec) -> dict:
  out = {}
  for f in spec.features:
    shape = spec.value_shape(f)
    out[f.name] = _dense_multi(f, parsed[f.name], shape) if shape else parsed[f.name]
  return out


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


# tf.train.Feature's list kinds and the spec dtypes they hold.
_LIST_DTYPES = {"int64_list": "int64", "bytes_list": "string", "float_list": "float32"}


def check_records(files: list[str], spec: FeatureSpec, key: str, compression: str = "") -> None:
  """Fails early, naming the file and column, when the first record lacks a spec column
  or holds it with another dtype than the spec's, or when no shard holds any record."""
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
    wanted = {f.name: f.dtype for f in spec.features}
    wanted.update({col: "float32" for col in spec.labels.values()})
    for name, dtype in wanted.items():
      held = _LIST_DTYPES.get(present[name].WhichOneof("kind"))   # None: an empty value
      if held is not None and held != dtype:
        what = "labels are read as" if name in spec.labels.values() else "the feature spec says"
        raise DataError(f"{path}: record 0 holds column {name!r} as {held}, but {what} "
                        f"dtype {dtype}: fix the spec's dtype for {name!r} (or convert the "
                        "data again)")
    for f in spec.features:
      shape = spec.value_shape(f)
      if f.is_sequence and len(shape) == 2:
        kind = present[f.name].WhichOneof("kind")
        n = len(getattr(present[f.name], kind).value) if kind else 0
        if n % shape[1]:
          raise DataError(f"{path}: record 0 holds {n} values in sequence column {f.name!r}, "
                          f"not a multiple of {shape[1]} (max_len of {f.share_with!r}): "
                          "each history item is written as that many values, padded with "
                          "the missing value")
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


def count_records(files: list[str], compression: str = "",
                  cache: Optional[str] = None) -> list[int]:
  """Records in each file (one read pass; cached in JSON `cache` by path, size and mtime).

  Raises DataError naming the file when one cannot be read to the end.
  """
  known: dict = {}
  if cache and os.path.exists(cache):
    try:
      known = json.loads(pathlib.Path(cache).read_text())
    except ValueError:
      known = {}
  counts, changed = [], False
  for path in files:
    st = tf.io.gfile.stat(path)
    stamp = f"{st.length}:{st.mtime_nsec}"
    entry = known.get(path)
    if entry and entry[0] == stamp:
      counts.append(int(entry[1]))
      continue
    try:
      n = int(tf.data.TFRecordDataset(path, compression_type=compression).reduce(
          tf.constant(0, tf.int64), lambda acc, _: acc + 1))
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
      raise DataError(f"{path}: corrupt TFRecord data ({e.message.splitlines()[0]})") from None
    known[path] = [stamp, n]
    counts.append(n)
    changed = True
  if cache and changed:
    tmp = f"{cache}.tmp{os.getpid()}"
    pathlib.Path(tmp).write_text(json.dumps(known))
    os.replace(tmp, cache)
  return counts


def pipeline_share(files: list[str], input_context: Optional[tf.distribute.InputContext],
                   key: str = "data.train") -> tuple[list[str], Optional[tuple[int, int]]]:
  """This input pipeline's files, and ``(num_pipelines, index)`` when it must instead take
  every num_pipelines-th record of all files (fewer files than pipelines; warns)."""
  if not input_context or input_context.num_input_pipelines <= 1:
    return files, None
  n, i = input_context.num_input_pipelines, input_context.input_pipeline_id
  if len(files) >= n:
    return files[i::n], None
  logging.warning("%s: %d files for %d input pipelines; sharding by record (every pipeline "
                  "reads every file; write at least %d shards to shard by file)", key,
                  len(files), n, n)
  return files, (n, i)


def pipeline_sizes(files: list[str], counts: list[int], num_pipelines: int) -> list[int]:
  """Records each of `num_pipelines` input pipelines reads (see :func:`pipeline_share`)."""
  if num_pipelines <= 1:
    return [sum(counts)]
  if len(files) >= num_pipelines:
    return [sum(counts[i::num_pipelines]) for i in range(num_pipelines)]
  total = sum(counts)
  return [len(range(i, total, num_pipelines)) for i in range(num_pipelines)]


def _reader(files: list[str], compression: str, cycle_length: int, deterministic: bool,
            record_shard: Optional[tuple[int, int]]
            ) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
  """A function: dataset of (possibly shuffled) file names -> their interleaved records."""
  def read(files_ds: tf.data.Dataset) -> tf.data.Dataset:
    ds = files_ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
        cycle_length=max(1, min(cycle_length, len(files))), num_parallel_calls=AUTOTUNE,
        # Record sharding needs the same order in every pipeline.
        deterministic=deterministic or record_shard is not None)
    if record_shard:
      ds = ds.shard(*record_shard)
    return ds
  return read


def train_stream(pattern: str, spec: FeatureSpec, batch_size: int, *, key: str = "data.train",
                 shuffle_buffer: int = 0, seed: int = 0, deterministic: bool = False,
                 compression: str = "", cycle_length: int = 4,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 start_step: int = 0, counts: Optional[list[int]] = None,
                 count_cache: Optional[str] = None, per_worker_seed: bool = False,
                 check: bool = True) -> tf.data.Dataset:
  """The endless, resumable training stream of this input pipeline.

  Epoch e reads the pipeline's share of the shards (by file, else by record), shuffles
  the file order (unless `deterministic`) and the records (buffer `shuffle_buffer`) with
  seeds derived from (seed, e); epochs are concatenated and cut into batches of
  `batch_size` (the per-replica batch with `input_context`) with drop_remainder, so every
  replica of every step gets a full batch. Each step consumes
  ``batch_size * replicas_per_pipeline`` records of the stream, so `start_step` (the
  global step a restored run continues from) maps to an exact record position: the
  stream starts at epoch ``pos // n`` and skips ``pos % n`` records. With
  ``deterministic: false`` the count skipped is exact but parallel reads may put other
  records before the cut, so within the resumed epoch some records may be read twice
  and as many not at all. `per_worker_seed` (parameter servers, whose
  workers cannot be told apart) seeds each worker's shuffles from its clock instead.
  `counts` (records per file of the whole split) saves the counting pass; pass them when
  the function is traced (parameter-server workers), where eager reads are impossible.
  """
  files = list_files(pattern, key)
  if check:
    check_records(files, spec, key, compression)
  mine, record_shard = pipeline_share(files, input_context, key)
  if counts is None:
    counts = count_records(files, compression, count_cache)
  num, index = ((input_context.num_input_pipelines, input_context.input_pipeline_id)
                if input_context else (1, 0))
  size = pipeline_sizes(files, counts, num)[index]
  if size == 0:
    raise DataError(f"config key '{key}': input pipeline "
                    f"{input_context.input_pipeline_id if input_context else 0} has no records")
  replicas_here = 1
  if input_context:
    replicas_here = max(1, input_context.num_replicas_in_sync // input_context.num_input_pipelines)
  position = int(start_step) * batch_size * replicas_here
  first_epoch, skip = divmod(position, size)
  read = _reader(mine, compression, cycle_length, deterministic, record_shard)
  base_seed = tf.constant(int(seed) * 1_000_003, tf.int64)
  if per_worker_seed:
    base_seed = tf.cast(tf.timestamp() * 1e6, tf.int64) % (2 ** 40)

  def epoch(e: tf.Tensor) -> tf.data.Dataset:
    # The graph-level seed of this traced function, so the per-epoch op seeds (tensors)
    # never meet TF's (0, 0) check on a global seed of 0 (train.seed: 0).
    tf.random.set_seed(int(seed) % (2 ** 31 - 2) + 1)
    seed_e = base_seed + e
    files_ds = tf.data.Dataset.from_tensor_slices(mine)
    if not deterministic:
      files_ds = files_ds.shuffle(len(mine), seed=seed_e)
    ds = read(files_ds)
    if shuffle_buffer > 0:
      ds = ds.shuffle(shuffle_buffer, seed=seed_e, reshuffle_each_iteration=False)
    return ds

  ds = tf.data.Dataset.range(first_epoch, 2 ** 62).flat_map(epoch)
  if skip:
    ds = ds.skip(skip)
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.map(lambda s: parse_batch(s, spec), num_parallel_calls=AUTOTUNE, deterministic=True)
  ds = ds.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))
  options = tf.data.Options()
  # Sharding is done above, per input pipeline; never let tf.distribute shard again.
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
  options.deterministic = deterministic
  return ds.with_options(options).prefetch(AUTOTUNE)


def make_dataset(pattern: str, spec: FeatureSpec, batch_size: int, *, training: bool,
                 key: str = "data.train", shuffle_buffer: int = 0, seed: int = 0,
                 deterministic: bool = False, compression: str = "", cycle_length: int = 4,
                 with_extras: bool = False, repeat: bool = False,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 check: bool = True) -> tf.data.Dataset:
  """Builds the batched, parsed dataset for one split.

  With `input_context` (tf.distribute), shards go to input pipelines by file when there
  are at least as many files as pipelines, else by record (with a warning), and
  `batch_size` is the per-replica batch. Auto-sharding is turned off explicitly: the
  sharding above is the only one.
  """
  files = list_files(pattern, key)
  if check:
    check_records(files, spec, key, compression)
  mine, record_shard = pipeline_share(files, input_context, key)
  ds = tf.data.Dataset.from_tensor_slices(mine)
  if training and not deterministic:
    ds = ds.shuffle(len(mine), seed=seed, reshuffle_each_iteration=True)
  ds = _reader(mine, compression, cycle_length, deterministic or not training,
                     record_shard)(ds)
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


# ---------------------------------------------------------------------------------------
# The inputs of `ssr_tf train`.


def validation_batch_size(records: int, global_batch: int, replicas: int) -> int:
  """The validation batch: `global_batch`, or the nearest smaller multiple of `replicas`
  whose last batch still gives every replica at least one record (the ranker's
  per-replica mean losses are NaN on an empty batch)."""
  batch = global_batch
  while replicas > 1 and batch > replicas and 0 < records % batch < replicas:
    batch -= replicas
  return batch


def inputs(cfg: ExperimentConfig, spec: FeatureSpec, strategy: tf.distribute.Strategy,
           global_batch: int, start_step: int, counts: list[int],
           count_cache: Optional[str]):
  """(train input, validation input) for `fit` under `strategy`.

  Training: synchronous strategies get a ``distribute_datasets_from_function`` input, so
  each input pipeline (one per worker) reads its own shards and parses its own batches;
  parameter servers get a DatasetCreator (one stream per worker). Validation: the whole
  split in global batches, which Keras splits across the replicas (auto-sharding off:
  with multi_worker_mirrored every worker evaluates every batch, so no worker runs out
  of data early and sees an empty batch; metric values are unaffected).
  """
  d = cfg.data
  common = dict(shuffle_buffer=d.shuffle_buffer, seed=cfg.train.seed,
                deterministic=d.deterministic, compression=d.compression,
                cycle_length=d.cycle_length)
  is_ps = distribute.is_parameter_server(strategy)

  def train_fn(ctx: Optional[tf.distribute.InputContext] = None) -> tf.data.Dataset:
    batch = ctx.get_per_replica_batch_size(global_batch) if ctx else global_batch
    return train_stream(d.train, spec, batch, key="data.train", input_context=ctx,
                        start_step=0 if is_ps else start_step, counts=counts,
                        count_cache=count_cache, per_worker_seed=is_ps, check=False, **common)

  valid = None
  if d.valid:
    valid_files = list_files(d.valid, "data.valid")
    check_records(valid_files, spec, "data.valid", d.compression)
    records = sum(count_records(valid_files, d.compression, count_cache))
    batch = validation_batch_size(records, global_batch, strategy.num_replicas_in_sync)
    valid = make_dataset(d.valid, spec, batch, training=False, key="data.valid", check=False,
                         **common)
  if cfg.distribution.strategy == "default":
    return train_fn(), valid
  if is_ps:
    return tf.keras.utils.experimental.DatasetCreator(train_fn, distribute.input_options()), valid
  return strategy.distribute_datasets_from_function(train_fn, distribute.input_options()), valid
