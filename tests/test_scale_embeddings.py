"""Industrial-scale embeddings: sparse optimizer updates and dynamic ids.

lazy_adam against dense Adam and on untouched rows; duplicate ids; adagrad/ftrl touch
only the batch's rows; the id map against a hand-worked admission/eviction example; a
dynamic model's export scored without ssr_tf (TF2 loader and the session loader TF
Serving's C++ path mirrors); bit-identical resume and warm start with a dynamic table;
bad inputs.
"""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import yaml

from conftest import REPO, assert_export_matches, experiment_yaml
from ssr_tf import optimizers
from ssr_tf.config import ExperimentConfig, load_config
from ssr_tf.errors import ConfigError
from ssr_tf.features import load_spec
from ssr_tf.layers.dynamic_ids import DynamicIdTable, fingerprint


def _table(rows=6, dim=3, seed=0):
  return tf.Variable(np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32),
                     name="emb_t")


def _apply(opt, var, grads):
  for g in grads:
    opt.apply_gradients([(g, var)])


def test_lazy_adam_equals_dense_adam_when_every_row_is_touched():
  rng = np.random.default_rng(1)
  steps = [rng.normal(size=(6, 3)).astype(np.float32) for _ in range(5)]
  lazy_var, dense_var = _table(), _table()
  lazy = optimizers.LazyAdam(learning_rate=0.01)
  dense = tf.keras.optimizers.Adam(learning_rate=0.01)       # Keras' own dense Adam
  for g in steps:
    order = rng.permutation(6)
    lazy.apply_gradients([(tf.IndexedSlices(tf.constant(g[order]), tf.constant(order)), lazy_var)])
    dense.apply_gradients([(tf.constant(g), dense_var)])
  np.testing.assert_allclose(lazy_var.numpy(), dense_var.numpy(), atol=1e-6)


def test_lazy_adam_leaves_untouched_rows_and_slots_unchanged_and_sums_duplicates():
  var, ref_var = _table(), _table()
  before = var.numpy().copy()
  opt, ref = optimizers.LazyAdam(0.05), optimizers.LazyAdam(0.05)
  g = tf.constant([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5], [-1.0, 0.0, 1.0]])
  # rows 1 and 4; row 1 appears twice: the same as one summed gradient.
  _apply(opt, var, [tf.IndexedSlices(g, tf.constant([1, 4, 1]))] * 3)
  summed = tf.constant([[0.0, 2.0, 4.0], [0.5, 0.5, 0.5]])
  _apply(ref, ref_var, [tf.IndexedSlices(summed, tf.constant([1, 4]))] * 3)
  np.testing.assert_allclose(var.numpy(), ref_var.numpy(), atol=1e-7)
  untouched = [0, 2, 3, 5]
  np.testing.assert_array_equal(var.numpy()[untouched], before[untouched])
  for slot in ("m", "v"):
    s = opt.get_slot(var, slot).numpy()
    assert not s[untouched].any() and s[[1, 4]].any()
  assert int(opt.iterations.numpy()) == 3


@pytest.mark.parametrize("cls", [tf.keras.optimizers.legacy.Adagrad, tf.keras.optimizers.legacy.Ftrl])
def test_adagrad_and_ftrl_touch_only_the_batch_rows(cls):
  var = _table()
  before = var.numpy().copy()
  opt = cls(0.1)
  _apply(opt, var, [tf.IndexedSlices(tf.ones([2, 3]), tf.constant([2, 2]))])
  changed = np.flatnonzero(np.abs(var.numpy() - before).sum(axis=1))
  assert changed.tolist() == [2]
  init = optimizers.slot_initial_values(opt)
  for name, value in init.items():
    s = opt.get_slot(var, name).numpy()
    assert np.all(s[[0, 1, 3, 4, 5]] == value)


def test_lazy_adam_refuses_a_dense_gradient():
  opt = optimizers.LazyAdam(0.1)
  with pytest.raises(ConfigError, match="train.embedding_optimizer.*dense gradient"):
    opt.apply_gradients([(tf.ones([6, 3]), _table())])


def test_ranking_optimizer_splits_tables_from_dense_weights(make_config):
  cfg = load_config(str(make_config()))
  from ssr_tf.models.ranker import build_model
  model = build_model(load_spec(cfg.data.spec), cfg.model)
  opt = optimizers.make_optimizer(cfg, model)
  dense, tables = opt.split(model.trainable_variables)
  assert tables and all("emb_" in v.name for v in tables)
  assert not any("emb_" in v.name for v in dense)
  assert isinstance(opt.embedding_optimizer, optimizers.LazyAdam)


# --- the id map -------------------------------------------------------------------------


def _step(table, ids):
  rows, reassigned = table(tf.constant(ids, tf.int64), training=True)
  return rows.numpy().tolist(), reassigned.numpy().tolist()


def test_id_map_admission_and_eviction_by_hand():
  """capacity 3, admit_after 2, one fallback row: rows 0 missing, 1 fallback, 2..4 slots."""
  t = DynamicIdTable(3, admit_after=2, fallback_rows=1)
  t.build(None)
  # step 1: 10 seen twice -> admitted, slot 0 (row 2); 11 once -> fallback; -1 missing -> 0
  assert _step(t, [10, 11, 10, -1]) == ([2, 1, 2, 0], [])
  # step 2: 11's second sighting -> slot 1 (row 3); 12 once -> fallback
  assert _step(t, [11, 12]) == ([3, 1], [])
  # step 3: 12 admitted into the last free slot (row 4); 13 (twice) needs a row: the least
  # recently seen id is 10 (step 1) -> evicted, its row 2 goes to 13 and is reported
  assert _step(t, [12, 13, 13]) == ([4, 2, 2], [2])
  # step 4: 11 and 12 seen again; 10 returns: its count is kept (2), so it is admitted at
  # once and takes the row of the least recently seen id not in this batch: 13 (step 3)?
  # No: 11 (step 2) is older, but 11 is in this batch; so 13 (step 3) gives row 2 to 10.
  assert _step(t, [11, 12, 10]) == ([3, 4, 2], [2])
  # read-only lookup: 13 lost its row -> fallback; nothing changes
  np.testing.assert_array_equal(t.lookup(tf.constant([10, 11, 12, 13, -1], tf.int64)),
                                [2, 3, 4, 1, 0])
  stats = {k: float(v) for k, v in t.stats().items()}
  assert stats == {"occupancy": 1.0, "admissions": 5.0, "evictions": 2.0}
  assert int(t.step.numpy()) == 4


def test_id_map_more_new_ids_than_rows_use_the_fallback():
  t = DynamicIdTable(2, admit_after=1, fallback_rows=4)
  t.build(None)
  rows, reassigned = _step(t, [1, 2, 3, 4])
  assert rows[:2] == [5, 6] and all(1 <= r <= 4 for r in rows[2:]) and reassigned == []
  # all rows were seen this step: none can be evicted in it
  rows, reassigned = _step(t, [1, 2, 9])
  assert rows[:2] == [5, 6] and 1 <= rows[2] <= 4 and reassigned == []


def test_an_eviction_frees_a_chunk_and_keeps_the_rest_in_reserve():
  """capacity 128: an eviction frees capacity / 64 = 2 rows; the spare one waits."""
  t = DynamicIdTable(128, admit_after=1, fallback_rows=1)
  t.build(None)
  rows, _ = _step(t, list(range(100, 228)))                 # fills slots 0..127 (rows 2..129)
  assert rows == list(range(2, 130))
  rows, reassigned = _step(t, [500])                         # ids 100 and 101 (slots 0, 1) go
  assert rows == [2] and reassigned == [2]
  np.testing.assert_array_equal(t.lookup(tf.constant([100, 101, 102], tf.int64)), [1, 1, 4])
  assert int(t.evictions.numpy()) == 2 and int(t.reserve_count.numpy()) == 1
  assert float(t.stats()["occupancy"]) == 127 / 128
  rows, reassigned = _step(t, [501])                         # takes the reserved row 3
  assert rows == [3] and reassigned == [3] and int(t.evictions.numpy()) == 2
  assert float(t.stats()["occupancy"]) == 1.0


def test_string_ids_are_fingerprinted_and_missing_is_minus_one():
  keys = fingerprint(tf.constant(["a", "", "b", "a"])).numpy()
  assert keys[1] == -1 and keys[0] == keys[3] != keys[2] and (keys[[0, 2]] >= 0).all()
  np.testing.assert_array_equal(fingerprint(tf.constant([5, -3], tf.int64)), [5, -1])


# --- a model with dynamic features -----------------------------------------------------


def dynamic_spec(synth_dir: pathlib.Path, out: pathlib.Path, capacity=40, admit_after=2) -> str:
  """The synthetic spec with every single-valued categorical made dynamic."""
  spec = yaml.safe_load((synth_dir / "spec.yaml").read_text())
  for f in spec["features"]:
    if f.get("type", "categorical") == "categorical":
      for k in ("vocab_file", "num_buckets", "hash_buckets", "min_count"):
        f.pop(k, None)
      f["dynamic"] = {"capacity": capacity, "admit_after": admit_after}
  path = out / "spec_dynamic.yaml"
  path.write_text(yaml.safe_dump(spec))
  return str(path)


def _dynamic_config(tmp_path, synth_dir, name="model", **train):
  spec = dynamic_spec(synth_dir, tmp_path)
  return experiment_yaml(
      tmp_path, synth_dir, data={"spec": spec},
      model={"name": "dnn", "backbone": {"hidden_units": [16]}},
      train={"model_dir": str(tmp_path / name), "checkpoint_every_steps": 3, **train})


class _Crash(tf.keras.callbacks.Callback):
  """Fails the run after `at` training steps (after the backup at that step)."""

  def __init__(self, at: int):
    super().__init__()
    self.at = at

  def on_train_batch_end(self, batch, logs=None):
    if int(self.model.optimizer.iterations.numpy()) >= self.at:
      raise RuntimeError("crash for the test")


def test_dynamic_run_resumes_bit_identical(tmp_path, synth_dir):
  from ssr_tf.training import read_jsonl, train
  cfg_path = _dynamic_config(tmp_path, synth_dir, epochs=2)
  ref = train(load_config(str(cfg_path), [f"train.model_dir={tmp_path / 'ref'}"]))
  cfg = load_config(str(cfg_path), [f"train.model_dir={tmp_path / 'crashed'}"])
  with pytest.raises(RuntimeError, match="crash for the test"):
    train(cfg, callbacks=[_Crash(7)])
  assert not tf.summary.scalar("probe", 1.0, step=0)   # the crash left no default writer
  resumed = train(cfg)
  assert resumed["resumed_from_step"] == 6
  assert resumed["weights_sha256"] == ref["weights_sha256"]
  backups = [e for e in read_jsonl(tmp_path / "crashed" / "progress.jsonl")
             if e["event"] == "backup"]
  assert backups and all(e["seconds"] >= 0 for e in backups)
  # TensorBoard: per-feature occupancy, admissions, evictions
  assert list((tmp_path / "crashed" / "logs" / "dynamic_ids").iterdir())


def _trained_dynamic(tmp_path, synth_dir):
  from ssr_tf import task
  from ssr_tf.training import train
  cfg_path = _dynamic_config(tmp_path, synth_dir)
  cfg = load_config(str(cfg_path))
  train(cfg)
  spec, model = task.build(cfg)
  task.restore(model, cfg.train.model_dir)
  return cfg, cfg_path, model


# TF Serving restores a SavedModel through its saver_def in a session (C++ LoadSavedModel);
# the TF1 loader runs the same restore op, so tables must come back this way too.
SESSION_RELOAD = r"""
import json, sys
import tensorflow as tf
tf.compat.v1.disable_eager_execution()
recs = [r for r in tf.compat.v1.io.tf_record_iterator(sys.argv[2])][:int(sys.argv[3])]
with tf.compat.v1.Session(graph=tf.Graph()) as sess:
  meta = tf.compat.v1.saved_model.load(sess, ["serve"], sys.argv[1])
  sig = meta.signature_def["serving_default"]
  out = sess.run({k: v.name for k, v in sig.outputs.items()},
                 {sig.inputs["examples"].name: recs})
assert "ssr_tf" not in sys.modules
print(json.dumps({k: v.tolist() for k, v in out.items()}))
"""


def test_dynamic_export_scores_like_keras_without_ssr_tf(tmp_path, synth_dir):
  from ssr_tf import export
  cfg, cfg_path, model = _trained_dynamic(tmp_path, synth_dir)
  occupied = [int(t.used.numpy()) for t in model.embedding.id_tables.values()]
  assert sum(occupied) > 0
  out = tmp_path / "export"
  assert export.main(["--config", str(cfg_path), "--output", str(out)]) == 0
  shard = sorted(str(p) for p in (synth_dir / "test").iterdir())[0]
  served = assert_export_matches(out / "1", shard, model, rows=64)
  proc = subprocess.run([sys.executable, "-c", SESSION_RELOAD, str(out / "1"), shard, "64"],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  session = json.loads(proc.stdout.strip().splitlines()[-1])
  np.testing.assert_allclose(session["click_prob"], served["click_prob"], atol=1e-6)


def test_warm_start_carries_the_id_map(tmp_path, synth_dir):
  from ssr_tf import task
  from ssr_tf.training import train
  cfg, cfg_path, first = _trained_dynamic(tmp_path, synth_dir)
  cfg2 = load_config(str(cfg_path), [f"train.model_dir={tmp_path / 'next'}",
                                     f"train.warm_start_from={tmp_path / 'model'}",
                                     "train.epochs=1"])
  state = train(cfg2)
  assert state["warm_started_from"]
  name = next(iter(first.embedding.id_tables))
  key = int(first.embedding.id_tables[name].slot_keys.numpy()[0])
  # Warm start only: the new run's model, restored before its own training, holds the map.
  from ssr_tf import warm_start
  spec, fresh = task.build(cfg2)
  warm_start.load_weights(fresh, state["warm_started_from"], "train.warm_start_from")
  np.testing.assert_array_equal(
      fresh.embedding.id_tables[name].lookup(tf.constant([key], tf.int64)),
      first.embedding.id_tables[name].lookup(tf.constant([key], tf.int64)))


# --- bad input ---------------------------------------------------------------------------


def _spec_error(tmp_path, feature: dict) -> str:
  path = tmp_path / "spec.yaml"
  path.write_text(yaml.safe_dump({"features": [feature], "labels": {"click": "click"}}))
  with pytest.raises(ConfigError) as e:
    load_spec(str(path))
  return str(e.value)


@pytest.mark.parametrize("feature, key", [
    ({"name": "a", "dynamic": {"capacity": 0}}, "dynamic.capacity"),
    ({"name": "a", "dynamic": {"capacity": 5, "admit_after": 0}}, "dynamic.admit_after"),
    ({"name": "a", "type": "numeric", "boundaries": [1.0], "dynamic": {"capacity": 5}},
     "dynamic"),
    ({"name": "a", "type": "multi_categorical", "dynamic": {"capacity": 5}}, "dynamic"),
    ({"name": "a", "hash_buckets": 10, "dynamic": {"capacity": 5}}, "exactly one of"),
    ({"name": "a", "dynamic": {"capacity": 5, "admit": 2}}, "dynamic.admit"),
])
def test_bad_dynamic_specs_name_the_key(tmp_path, feature, key):
  assert key in _spec_error(tmp_path, feature)


def test_cli_refuses_unknown_embedding_optimizer_and_dynamic_under_mirrored(tmp_path, synth_dir):
  cfg_path = _dynamic_config(tmp_path, synth_dir)
  for override, word in (("train.embedding_optimizer=sgd", "train.embedding_optimizer"),
                         ("train.embedding_learning_rate=-1", "train.embedding_learning_rate"),
                         ("distribution.strategy=mirrored", "dynamic ids")):
    proc = subprocess.run([sys.executable, "-m", "ssr_tf", "train", "--config", str(cfg_path),
                           "--set", override], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-1500:]
    errors = [l for l in proc.stderr.splitlines() if l.startswith("ssr_tf: error")]
    assert len(errors) == 1 and word in errors[0] and "Traceback" not in proc.stderr


def test_embedding_optimizer_default_is_lazy_adam():
  assert ExperimentConfig().train.embedding_optimizer == "lazy_adam"


@pytest.mark.slow
def test_bench_scale_prints_rates_rss_and_backup_cost_per_size():
  proc = subprocess.run([sys.executable, "-m", "ssr_tf", "bench", "scale", "--rows", "260,2600",
                         "--models", "dnn", "--steps", "2", "--batch_size", "64", "--repeats", "1"],
                        capture_output=True, text=True, cwd=REPO, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout)
  cases = out["models"]["dnn"]
  assert [c["embedding_rows"] for c in cases] == [26 * 10 + 26, 26 * 100 + 26]
  assert cases[0]["rate_ratio_vs_smallest"] == 1.0
  for c in cases:
    assert c["examples_per_s"] > 0 and c["peak_rss_gib"] > 0 and c["backup_gib"] > 0
