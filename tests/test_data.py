"""Feature spec + tf.data pipeline: parsing, encoding rules, and early data checks."""
import numpy as np
import pytest
import tensorflow as tf

from ssr_tf import data as data_lib
from ssr_tf.errors import ConfigError, DataError
from ssr_tf.features import Feature, FeatureSpec, load_spec
from ssr_tf.layers.embedding import FeatureEmbedding, FeatureEncoder


def test_spec_loads_and_batches_parse(synth_dir):
  spec = load_spec(str(synth_dir / "spec.yaml"))
  ds = data_lib.make_dataset(str(synth_dir / "train/*"), spec, 64, training=True,
                             shuffle_buffer=100, deterministic=True, with_extras=True)
  features, labels, extras = next(iter(ds))
  assert features["user_id"].shape == (64,)
  assert features["history_categories"].shape == (64, 5)
  assert features["query"].dtype == tf.string
  assert set(labels) == {"click", "pay"}
  assert set(extras) == {"group", "oracle_click", "oracle_pay"}
  assert np.all(labels["pay"].numpy() <= labels["click"].numpy())   # pay only after click
  emb = FeatureEmbedding(spec, dim=4)
  assert emb(features).shape == (64, len(spec.features), 4)


def test_deterministic_order(synth_dir):
  spec = load_spec(str(synth_dir / "spec.yaml"))
  def first_ids():
    ds = data_lib.make_dataset(str(synth_dir / "train/*"), spec, 32, training=True,
                               shuffle_buffer=50, seed=5, deterministic=True)
    return next(iter(ds))[0]["item_id"].numpy()
  np.testing.assert_array_equal(first_ids(), first_ids())


def test_encoder_rules(tmp_path):
  vocab = tmp_path / "v.txt"
  vocab.write_text("a\t10\nb\t5\nc\t6\n")       # b seen 5 times <= min_count 5 -> OOV
  spec = FeatureSpec(features=[
      Feature(name="ids", num_buckets=3),
      Feature(name="word", dtype="string", vocab_file=str(vocab), min_count=5),
      Feature(name="h", dtype="string", hash_buckets=7),
      Feature(name="x", type="numeric", transform="log_bucketize", boundaries=[0.0, 1.0, 2.0]),
      Feature(name="d", type="numeric", transform="dense", mean=1.0, std=2.0),
      Feature(name="m", type="multi_categorical", num_buckets=4, max_len=3),
  ])
  spec.validate()
  enc = FeatureEncoder(spec)
  out = enc({"ids": tf.constant([0, 2, 3, -1], tf.int64),
             "word": tf.constant(["a", "b", "c", "zz"]),
             "h": tf.constant(["x", "", "x", "y"]),
             "x": tf.constant([np.nan, 0.5, np.e - 1, -3.0], tf.float32),
             "d": tf.constant([3.0, np.nan, 1.0, -1.0]),
             "m": tf.constant([[0, 3, -1]] * 4, tf.int64)})
  np.testing.assert_array_equal(out["ids"].numpy(), [1, 3, 0, 0])
  np.testing.assert_array_equal(out["word"].numpy(), [1, 0, 2, 0])
  h = out["h"].numpy()
  assert h[1] == 0 and h[0] == h[2] and 1 <= h[0] <= 7
  # log1p(0.5)=0.405 -> bucket 1 (+1); log1p(e-1)=1.0 -> bucket 2 (+1); -log1p(3) -> 0 (+1)
  np.testing.assert_array_equal(out["x"].numpy(), [0, 2, 3, 1])
  np.testing.assert_allclose(out["d"].numpy(), [1.0, 0.0, 0.0, -1.0])
  np.testing.assert_array_equal(out["m"].numpy()[0], [1, 4, 0])
  assert spec.features[1].table_size() == 3 and spec.features[3].table_size() == 5


def test_multi_valued_mean_pooling_ignores_padding():
  spec = FeatureSpec(features=[Feature(name="m", type="multi_categorical", num_buckets=4,
                                       max_len=3)])
  emb = FeatureEmbedding(spec, dim=2)
  out = emb({"m": tf.constant([[0, 2, -1], [-1, -1, -1]], tf.int64)}).numpy()
  table = emb.tables["m"].numpy()
  np.testing.assert_allclose(out[0, 0], (table[1] + table[3]) / 2, rtol=1e-6)
  np.testing.assert_allclose(out[1, 0], 0.0)


def test_spec_errors_name_the_feature(tmp_path):
  p = tmp_path / "spec.yaml"
  p.write_text("features:\n  - {name: a, type: categorical}\n")
  with pytest.raises(ConfigError, match=r"features\[0\] \(a\).*exactly one of"):
    load_spec(str(p))
  p.write_text("features:\n  - {name: a, num_bucket: 3}\n")
  with pytest.raises(ConfigError, match=r"features\[0\].num_bucket.*did you mean"):
    load_spec(str(p))
  p.write_text("features:\n  - {name: a, vocab_file: missing.txt, dtype: string}\n")
  with pytest.raises(ConfigError, match="vocab_file: file not found"):
    load_spec(str(p))


def test_missing_column_is_named(tmp_path, synth_dir):
  spec = load_spec(str(synth_dir / "spec.yaml"))
  spec.features.append(Feature(name="not_there", num_buckets=3))
  with pytest.raises(DataError, match="no column 'not_there'"):
    data_lib.make_dataset(str(synth_dir / "train/*"), spec, 8, training=False)


def test_empty_and_unmatched_data(tmp_path, synth_dir):
  spec = load_spec(str(synth_dir / "spec.yaml"))
  with pytest.raises(DataError, match="no files match"):
    data_lib.make_dataset(str(tmp_path / "nothing/*"), spec, 8, training=False)
  empty = tmp_path / "empty.tfrecord"
  tf.io.TFRecordWriter(str(empty)).close()
  with pytest.raises(DataError, match="hold no records"):
    data_lib.make_dataset(str(empty), spec, 8, training=False, key="data.valid")


def test_corrupt_shard_is_found(tmp_path, synth_dir):
  good = (synth_dir / "test" / "part-00000.tfrecord").read_bytes()
  bad = tmp_path / "bad.tfrecord"
  bad.write_bytes(good[:len(good) // 2] + b"\x00garbage" + good[len(good) // 2:])
  files = [str(synth_dir / "test" / "part-00001.tfrecord"), str(bad)]
  assert data_lib.find_corrupt_shard(files) == str(bad)


def test_train_inputs_under_the_default_strategy(synth_dir, tmp_path):
  """ssr_tf.data.inputs: the endless training stream starts at `start_step` (the records
  of earlier steps skipped), validation covers the split once in global batches."""
  from conftest import experiment_yaml
  from ssr_tf.config import load_config
  cfg = load_config(str(experiment_yaml(tmp_path, synth_dir)))
  spec = load_spec(cfg.data.spec)
  files = data_lib.list_files(cfg.data.train, "data.train")
  counts = data_lib.count_records(files)
  strategy = tf.distribute.get_strategy()
  train_in, valid_in = data_lib.inputs(cfg, spec, strategy, 64, 0, counts, None)
  later, _ = data_lib.inputs(cfg, spec, strategy, 64, 3, counts, None)
  batches = [b[0]["user_id"].numpy() for b in train_in.take(5)]
  assert all(len(b) == 64 for b in batches)
  np.testing.assert_array_equal(next(iter(later))[0]["user_id"].numpy(), batches[3])
  sizes = [int(b[1]["click"].shape[0]) for b in valid_in]
  valid_rows = sum(data_lib.count_records(data_lib.list_files(cfg.data.valid, "v")))
  assert sum(sizes) == valid_rows and set(sizes[:-1]) == {64}
