"""Distribution pieces that run in-process: config checks, the resumable training stream,
learning-rate rules, the embedding partitioner and the sparse-gradient guard.

The multi-process suites (mirrored vs single device, two workers, parameter servers,
kill-and-resume) are in test_distributed_slow.py.
"""
import json
import math

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from ssr_tf import data as data_lib
from ssr_tf import distribute, schedules
from ssr_tf.callbacks import atomic_write_text, resume_point
from ssr_tf.config import DistributionConfig, load_config
from ssr_tf.data import validation_batch_size
from ssr_tf.errors import ConfigError
from ssr_tf.features import load_spec

COLUMNS = ("user_id", "item_id", "hour", "position", "price", "noise_0")


def rows(batch) -> np.ndarray:
  """[batch, columns] of values that together identify a record."""
  features, labels = batch
  cols = [np.asarray(features[c], np.float64) for c in COLUMNS]
  cols.append(np.asarray(labels["click"], np.float64))
  return np.stack(cols, axis=1)


def stream(synth_dir, batch, start_step=0, ctx=None, **kw):
  spec = load_spec(str(synth_dir / "spec.yaml"))
  opts = dict(shuffle_buffer=300, seed=5, deterministic=True, cycle_length=2)
  opts.update(kw)
  return data_lib.train_stream(str(synth_dir / "train/*"), spec, batch, start_step=start_step,
                               input_context=ctx, **opts)


def take(ds, n) -> list[np.ndarray]:
  return [rows(b) for b in ds.take(n)]


def sorted_rows(a: np.ndarray) -> np.ndarray:
  return a[np.lexsort(a.T[::-1])]


@pytest.fixture(scope="module")
def all_rows(synth_dir) -> np.ndarray:
  spec = load_spec(str(synth_dir / "spec.yaml"))
  ds = data_lib.make_dataset(str(synth_dir / "train/*"), spec, 512, training=False)
  return sorted_rows(np.concatenate([rows(b) for b in ds]))


# ---------------------------------------------------------------------------------------
# Config.


@pytest.mark.parametrize("override,key", [
    ("distribution.strategy=mirorred", "distribution.strategy"),
    ("distribution.lr_scaling=cubic", "distribution.lr_scaling"),
    ("distribution.partitioner=random", "distribution.partitioner"),
    ("distribution.embedding_pattern='(emb'", "distribution.embedding_pattern"),
    ("distribution.sparse_gradients=maybe", "distribution.sparse_gradients"),
    ("distribution.tf_config='{\"task\": {}}'", "distribution.tf_config"),
    ("distribution.local_workers=2", "distribution.local_workers"),
    ("distribution.steps_per_execution=0", "distribution.steps_per_execution"),
    ("distribution.num_logical_cpu_devices=-1", "distribution.num_logical_cpu_devices"),
])
def test_validate_names_the_key(override, key):
  with pytest.raises(ConfigError, match=f"'{key}'"):
    load_config(None, [override])


@pytest.mark.parametrize("name,strategy", [
    ("distributed_mirrored", "mirrored"), ("distributed_multi_worker", "multi_worker_mirrored"),
    ("distributed_parameter_server", "parameter_server"), ("distributed_cpu_local", "mirrored")])
def test_shipped_configs_validate(name, strategy):
  cfg = load_config(str(REPO / "configs" / f"{name}.yaml"))
  assert cfg.distribution.strategy == strategy


def test_devices_only_with_mirrored():
  with pytest.raises(ConfigError, match="'distribution.devices': only used with strategy"):
    load_config(None, ["distribution.devices=['/gpu:0']"])
  cfg = load_config(None, ["distribution.strategy=mirrored", "distribution.devices=['/gpu:0']"])
  assert cfg.distribution.devices == ["/gpu:0"]


def test_unknown_distribution_key_suggests():
  with pytest.raises(ConfigError, match="did you mean 'distribution.strategy'"):
    load_config(None, ["distribution.stratgy=mirrored"])


def test_global_batch_must_split_evenly():
  dist = DistributionConfig(strategy="mirrored")
  assert distribute.global_batch_size(dist, 256, 2) == 256
  with pytest.raises(ConfigError, match="'data.batch_size'.*3 replicas"):
    distribute.global_batch_size(dist, 256, 3)
  assert distribute.global_batch_size(DistributionConfig(per_replica_batch_size=64), 999, 3) == 192


def test_lr_scaling_rules():
  # train.learning_rate was tuned at data.batch_size 256; 4 replicas x 256 = 1024.
  for rule, factor in (("none", 1.0), ("linear", 4.0), ("sqrt", 2.0)):
    dist = DistributionConfig(per_replica_batch_size=256, lr_scaling=rule)
    assert schedules.lr_factor(dist, 1024, 256) == factor
  dist = DistributionConfig(lr_scaling="linear", lr_reference_batch_size=128)
  assert schedules.lr_factor(dist, 512, 512) == 4.0
  dist = DistributionConfig(per_replica_batch_size=256, lr_scaling="linear", lr_warmup_steps=10)
  lr, factor = schedules.learning_rate(dist, 1e-3, 1024, 256)
  assert factor == 4.0
  np.testing.assert_allclose([float(lr(s)) for s in (0, 5, 10, 99)],
                             [1e-3, 2.5e-3, 4e-3, 4e-3], rtol=1e-6)
  assert schedules.learning_rate(DistributionConfig(), 1e-3, 256, 256) == (1e-3, 1.0)


def test_validation_batch_never_leaves_a_replica_empty():
  assert validation_batch_size(300, 256, 1) == 256
  assert validation_batch_size(300, 256, 2) == 256          # last batch 44 -> 22 + 22
  b = validation_batch_size(257, 256, 2)                     # last batch would be 1 record
  assert b % 2 == 0 and 257 % b >= 2


# ---------------------------------------------------------------------------------------
# The resumable training stream: record-level checks.


def test_each_epoch_reads_every_record_once(synth_dir, all_rows):
  n = len(all_rows)
  batches = take(stream(synth_dir, 100), math.ceil(2 * n / 100))
  flat = np.concatenate(batches)
  np.testing.assert_array_equal(sorted_rows(flat[:n]), all_rows)        # epoch 0
  np.testing.assert_array_equal(sorted_rows(flat[n:2 * n]), all_rows)   # epoch 1
  assert not np.array_equal(flat[:n], flat[n:2 * n])                   # reshuffled


@pytest.mark.parametrize("start", [7, 30])      # inside epoch 0, inside epoch 1
def test_resumed_stream_continues_at_the_exact_record(synth_dir, start):
  """A run restored at global step `start` reads exactly the batches an uninterrupted
  run reads from step `start` on: no record range is trained twice or skipped."""
  full = take(stream(synth_dir, 64), start + 12)
  resumed = take(stream(synth_dir, 64, start_step=start), 12)
  for want, got in zip(full[start:], resumed):
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("pipelines", [2, 3])   # 2 files: by file; 3 pipelines: by record
def test_input_pipelines_split_the_records(synth_dir, all_rows, pipelines):
  n = len(all_rows)
  sizes = data_lib.pipeline_sizes(data_lib.list_files(str(synth_dir / "train/*"), "t"),
                                  data_lib.count_records(
                                      data_lib.list_files(str(synth_dir / "train/*"), "t")),
                                  pipelines)
  assert sum(sizes) == n
  parts = []
  for i in range(pipelines):
    ctx = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=i,
                                     num_replicas_in_sync=pipelines)
    flat = np.concatenate(take(stream(synth_dir, 50, ctx=ctx), math.ceil(sizes[i] / 50)))
    parts.append(flat[:sizes[i]])
    # Resuming a pipeline at step 5 skips exactly 5 of its own batches.
    again = take(stream(synth_dir, 50, start_step=5, ctx=ctx), 1)[0]
    np.testing.assert_array_equal(again, flat[250:300])
  np.testing.assert_array_equal(sorted_rows(np.concatenate(parts)), all_rows)


def test_record_counts_are_cached(synth_dir, tmp_path):
  files = data_lib.list_files(str(synth_dir / "train/*"), "t")
  cache = tmp_path / "counts.json"
  counts = data_lib.count_records(files, cache=str(cache))
  saved = json.loads(cache.read_text())
  assert [saved[f][1] for f in files] == counts and sum(counts) > 2000
  assert data_lib.count_records(files, cache=str(cache)) == counts


def test_resume_point_without_backup(tmp_path):
  assert resume_point(str(tmp_path / "backup"), 10) == (0, 0)


def test_atomic_write_leaves_no_partial_file(tmp_path):
  path = tmp_path / "state.json"
  atomic_write_text(path, "old")
  atomic_write_text(path, "new")
  assert path.read_text() == "new"
  assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


# ---------------------------------------------------------------------------------------
# Partitioning and sparse gradients.


def partitions(partitioner, variables: dict) -> dict:
  """What `partitioner` decides for each named variable, seen as a strategy sees it: the
  strategy's creator runs outside ssr_tf's naming scope."""
  seen = {}

  def strategy_like(next_creator, **kwargs):
    seen[kwargs["name"]] = partitioner(tf.TensorShape(kwargs["shape"]), tf.float32)
    return next_creator(**kwargs)

  with tf.variable_creator_scope(strategy_like), distribute.variable_names():
    for name, shape in variables.items():
      tf.Variable(tf.zeros(shape), name=name, shape=shape)
  return seen


def test_partitioner_splits_only_embedding_tables():
  tables = {"emb_user_id": [1000, 8], "emb_hour": [20, 8], "dense_kernel": [1000, 8],
            "emb_tiny": [1, 8]}
  min_size = distribute.EmbeddingPartitioner.from_config(
      DistributionConfig(strategy="parameter_server", min_shard_bytes=1024), num_ps=2)
  # 1000 x 8 float32 = 32 KB -> 2 shards (at most one per ps); 640 B stays whole;
  # a non-embedding variable is never split.
  assert partitions(min_size, tables) == {"emb_user_id": [2, 1], "emb_hour": [1, 1],
                                          "dense_kernel": [1, 1], "emb_tiny": [1, 1]}
  fixed = distribute.EmbeddingPartitioner.from_config(
      DistributionConfig(strategy="parameter_server", partitioner="fixed", num_shards=3), 2)
  assert partitions(fixed, tables) == {"emb_user_id": [3, 1], "emb_hour": [3, 1],
                                       "dense_kernel": [1, 1], "emb_tiny": [1, 1]}
  none = distribute.EmbeddingPartitioner.from_config(
      DistributionConfig(strategy="parameter_server", partitioner="none"), 2)
  assert set(map(tuple, partitions(none, tables).values())) == {(1, 1)}


def test_dense_embedding_gradient_is_refused():
  """A table used densely (here: reduce_sum over it) would be all-reduced whole."""
  dist = DistributionConfig(strategy="mirrored")
  table = tf.Variable(tf.ones([50, 4]), name="emb_item")
  opt = distribute.distributed_optimizer(tf.keras.optimizers.Adam, dist, learning_rate=0.1)

  def step(dense: bool):
    with tf.GradientTape() as tape:
      rows_ = tf.reduce_sum(table) if dense else tf.nn.embedding_lookup(table, [1, 3, 3])
      loss = tf.reduce_sum(rows_)
    opt.apply_gradients([(tape.gradient(loss, table), table)])

  tf.function(lambda: step(False))()
  assert set(opt.sparse_report.values()) == {"IndexedSlices"}
  assert float(table[0, 0]) == 1.0 and float(table[1, 0]) < 1.0        # only used rows move
  with pytest.raises(ValueError, match="emb_item.*is dense"):
    tf.function(lambda: step(True))()


def test_stream_order_depends_on_data_seed_only(synth_dir):
  """train.seed 0 (a global seed of 0) works, and the global seed does not move records."""
  orders = []
  for global_seed, data_seed in ((0, 0), (42, 0), (0, 1)):
    tf.keras.utils.set_random_seed(global_seed)
    orders.append(np.concatenate(take(stream(synth_dir, 64, seed=data_seed), 3)))
  np.testing.assert_array_equal(orders[0], orders[1])
  assert not np.array_equal(orders[0], orders[2])


def test_bench_checkpoint_timing(synth_dir, capsys):
  from ssr_tf.bench import distributed as bench
  assert bench.main(["--data", str(synth_dir), "--skip", "single,mirrored,multi_worker",
                     "--checkpoint_rows", "1000,4000", "--checkpoint_dim", "8"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["throughput"] == {} and "overhead" in out["note"]
  sizes = [c["megabytes_on_disk"] for c in out["checkpoint"]]
  assert [c["params_incl_adam_slots"] for c in out["checkpoint"]] == [24000, 96000]
  assert sizes[1] > 3 * sizes[0] and all(c["save_s"] > 0 for c in out["checkpoint"])
