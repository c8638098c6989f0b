"""Sequence features: spec checks, parsing, target attention, shared tables, export."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import yaml

from ssr_tf import cli, task
from ssr_tf import data as data_lib
from ssr_tf.config import ModelConfig, load_config
from ssr_tf.errors import ConfigError, DataError
from ssr_tf.features import Feature, FeatureSpec, load_spec
from ssr_tf.layers.embedding import FeatureEmbedding, raw_input_signature
from ssr_tf.layers.sequence import TargetAttention
from ssr_tf.models.ranker import build_model, dummy_batch

from conftest import custom_ops

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance"]
MOVIES, L, K = 30, 6, 3

BASE = [
    {"name": "movieId", "type": "categorical", "dtype": "int64", "num_buckets": MOVIES},
    {"name": "genres", "type": "multi_categorical", "dtype": "string",
     "vocab_file": "vocab/genres.txt", "max_len": K},
    {"name": "hist_movieId", "type": "sequence", "dtype": "int64", "share_with": "movieId",
     "max_len": L, "pooling": "attention"},
    {"name": "hist_genres", "type": "sequence", "dtype": "string", "share_with": "genres",
     "max_len": L, "side_of": "hist_movieId"},
]


def write_spec(folder, features=None, **extra) -> str:
  (folder / "vocab").mkdir(exist_ok=True)
  (folder / "vocab" / "genres.txt").write_text("".join(g + "\n" for g in GENRES))
  spec = {"features": features or BASE, "labels": {"click": "click"}, **extra}
  path = folder / "spec.yaml"
  path.write_text(yaml.safe_dump(spec, sort_keys=False))
  return str(path)


def with_changes(index: int, **changes) -> list[dict]:
  feats = [dict(f) for f in BASE]
  feats[index].update(changes)
  return [{k: v for k, v in f.items() if v is not None} for f in feats]


# ----------------------------------------------------------------------------- spec checks

@pytest.mark.parametrize("features,match", [
    (with_changes(2, share_with=None), r"features\[2\] \(hist_movieId\)\.share_with: required"),
    (with_changes(2, share_with="userId"), r"\.share_with: no feature named 'userId'"),
    (BASE[:1] + [{"name": "price", "type": "numeric", "transform": "dense"}]
     + [with_changes(2, share_with="price")[2]], r"\.share_with: 'price' is a numeric"),
    (with_changes(3, share_with="hist_movieId", side_of=None, dtype="int64"),
     r"features\[3\] \(hist_genres\)\.share_with: 'hist_movieId' is a sequence"),
    (with_changes(0, num_buckets=None, dynamic={"capacity": 100}),
     r"\.share_with: 'movieId' has dynamic ids.*admission.*hash_buckets or a vocabulary"),
    (with_changes(2, dtype="string"), r"features\[2\] \(hist_movieId\)\.dtype: string differs"),
    (with_changes(2, num_buckets=10), r"\.num_buckets: a sequence has no table of its own"),
    (with_changes(2, vocab_file="vocab/genres.txt"), r"\.vocab_file: a sequence has no table"),
    (with_changes(2, pooling="max"), r"\.pooling: must be one of"),
    (with_changes(2, attention_units=[0]), r"\.attention_units: give one or more"),
    (with_changes(3, side_of="movieId"), r"\(hist_genres\)\.side_of: 'movieId' is not a sequence"),
    (with_changes(3, side_of="hist_genres"), r"\.side_of: 'hist_genres' is itself a side_of"),
    (with_changes(3, max_len=L + 1), r"\(hist_genres\)\.max_len: 7 differs"),
    (with_changes(3, pooling="mean"), r"\(hist_genres\)\.pooling: a side_of member"),
    (with_changes(0, pooling="mean"), r"\(movieId\)\.pooling: only sequence features"),
    (with_changes(1, share_with="movieId"), r"\(genres\)\.share_with: only sequence features"),
])
def test_spec_errors_name_the_key(tmp_path, features, match):
  with pytest.raises(ConfigError, match=match):
    load_spec(write_spec(tmp_path, features))


def test_spec_defaults_and_round_trip(tmp_path):
  spec = load_spec(write_spec(tmp_path, with_changes(2, pooling=None, context=True)))
  hist, side = spec.feature("hist_movieId"), spec.feature("hist_genres")
  assert hist.pooling == "attention" and hist.attention_units == [80, 40] and hist.context
  assert side.pooling is None and side.attention_units is None
  assert spec.value_shape(hist) == [L] and spec.value_shape(side) == [L, K]
  assert hist.table_size() == 0
  again = yaml.safe_load(spec.to_yaml())["features"]
  assert again[2]["share_with"] == "movieId" and again[3]["side_of"] == "hist_movieId"
  assert "share_with" not in again[0]
  hist.pooling = "mean"                        # a validated spec written back loads again
  (tmp_path / "again.yaml").write_text(spec.to_yaml())
  assert load_spec(str(tmp_path / "again.yaml")).feature("hist_movieId").pooling == "mean"


# ----------------------------------------------------------------------------- parsing

def example(movie, genres, hist, hist_genres, click=0.0) -> bytes:
  def ints(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=v))

  def strs(v):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[s.encode() for s in v]))
  return tf.train.Example(features=tf.train.Features(feature={
      "movieId": ints([movie]), "genres": strs(genres), "hist_movieId": ints(hist),
      "hist_genres": strs(hist_genres),
      "click": tf.train.Feature(float_list=tf.train.FloatList(value=[click]))})
  ).SerializeToString()


def flat_genres(items: list[list[str]]) -> list[str]:
  """Row-major (items) x K, each item padded to K with ""."""
  return [g for item in items for g in (item + [""] * K)[:K]]


def test_parse_pads_truncates_and_reshapes(tmp_path):
  spec = load_spec(write_spec(tmp_path))
  recs = [
      example(1, ["Action"], [4, 5], flat_genres([["Drama", "Horror"], ["Comedy"]])),
      example(2, [], [], []),
      example(3, ["Drama"], list(range(10, 10 + L + 2)), flat_genres([["Romance"]] * (L + 2))),
  ]
  feats = data_lib.parse_features(tf.constant(recs), spec)
  assert feats["hist_movieId"].shape == (3, L) and feats["hist_genres"].shape == (3, L, K)
  np.testing.assert_array_equal(feats["hist_movieId"][0], [4, 5, -1, -1, -1, -1])
  np.testing.assert_array_equal(feats["hist_movieId"][1], [-1] * L)
  np.testing.assert_array_equal(feats["hist_movieId"][2], range(10, 10 + L))   # most recent kept
  assert feats["hist_genres"][0, 0].numpy().tolist() == [b"Drama", b"Horror", b""]
  assert feats["hist_genres"][0, 1].numpy().tolist() == [b"Comedy", b"", b""]
  assert feats["hist_genres"][0, 2:].numpy().tolist() == [[b""] * K] * (L - 2)
  assert feats["hist_genres"][2].numpy().tolist() == [[b"Romance", b"", b""]] * L
  sig = raw_input_signature(spec)
  assert sig["hist_movieId"].shape.as_list() == [None, L]
  assert sig["hist_genres"].shape.as_list() == [None, L, K]
  assert dummy_batch(spec)["hist_genres"].shape == (2, L, K)

  shard = str(tmp_path / "ok.tfrecord")
  with tf.io.TFRecordWriter(shard) as w:
    w.write(recs[0])
  data_lib.check_records([shard], spec, "data.train")
  bad = str(tmp_path / "bad.tfrecord")
  with tf.io.TFRecordWriter(bad) as w:
    w.write(example(1, ["Action"], [4], ["Drama", "Horror"]))
  with pytest.raises(DataError, match=r"2 values in sequence column 'hist_genres', not a "
                                      r"multiple of 3"):
    data_lib.check_records([bad], spec, "data.train")


# ----------------------------------------------------------------------------- the math

def np_attention(layer: TargetAttention, h, t, mask):
  """DIN's activation unit in NumPy: w_l = m_l * MLP([h, t, h - t, h * t]); sum_l w_l h_l."""
  tb = np.broadcast_to(t[:, None, :], h.shape)
  x = np.concatenate([h, tb, h - tb, h * tb], axis=-1)
  for dense in layer.hidden:
    x = 1.0 / (1.0 + np.exp(-(x @ dense.kernel.numpy() + dense.bias.numpy())))
  w = (x @ layer.score.kernel.numpy() + layer.score.bias.numpy())[..., 0] * mask
  return w, np.einsum("bl,bld->bd", w, h)


def np_masked_softmax(logits, mask):
  """softmax over the present positions of each row; 0 at masked ones and in empty rows."""
  e = np.exp(logits - logits.max(1, keepdims=True)) * mask
  return e / np.maximum(e.sum(1, keepdims=True), 1e-30)


def test_target_attention_matches_numpy():
  rng = np.random.default_rng(0)
  h = rng.normal(size=(4, 5, 6)).astype(np.float32)
  t = rng.normal(size=(4, 6)).astype(np.float32)
  mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 1, 0, 1]], bool)
  layer = TargetAttention([7, 3], name="att")
  out = layer(tf.constant(h), tf.constant(t), mask=tf.constant(mask)).numpy()
  w_np, out_np = np_attention(layer, h, t, mask.astype(np.float32))
  w = layer.weights_of(tf.constant(h), tf.constant(t), tf.constant(mask)).numpy()
  np.testing.assert_allclose(w, w_np, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out, out_np, rtol=1e-5, atol=1e-6)
  assert np.all(w[~mask] == 0.0) and np.all(w[mask] != 0.0)     # padding weight exactly 0
  np.testing.assert_array_equal(out[2], 0.0)                    # empty history: zero vector
  clone = TargetAttention.from_config(layer.get_config())
  assert clone.units == [7, 3] and clone.activation == "sigmoid"
  assert [v.name for v in layer.trainable_variables][0] == "att/hidden_0/kernel:0"


def test_softmax_attention_normalises_over_present_items():
  rng = np.random.default_rng(1)
  h = rng.normal(size=(3, 5, 4)).astype(np.float32)
  t = rng.normal(size=(3, 4)).astype(np.float32)
  mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
  layer = TargetAttention([6], softmax=True, name="att_softmax")
  out = layer(tf.constant(h), tf.constant(t), mask=tf.constant(mask)).numpy()
  w = layer.weights_of(tf.constant(h), tf.constant(t), tf.constant(mask)).numpy()
  logits, _ = np_attention(layer, h, t, np.ones_like(mask, np.float32))
  want = np_masked_softmax(logits, mask.astype(np.float32))
  np.testing.assert_allclose(w, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(w[:2].sum(axis=1), 1.0, rtol=1e-6)
  assert np.all(w[~mask] == 0.0)
  np.testing.assert_allclose(out, np.einsum("bl,bld->bd", want, h), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out[2], 0.0)                    # empty history: zero vector
  assert TargetAttention.from_config(layer.get_config()).softmax


def embedding_inputs():
  """Two records: ids for movieId / genres / the history and its genres."""
  return {
      "movieId": tf.constant([3, 7], tf.int64),
      "genres": tf.constant([["Action", "Drama", ""], ["Comedy", "", ""]]),
      "hist_movieId": tf.constant([[4, 5, 99, -1, -1, -1], [6, 7, 8, 9, 10, 11]], tf.int64),
      "hist_genres": tf.constant([[["Drama", "Horror", ""], ["", "", ""]] + [["", "", ""]] * 4,
                                  [["Comedy", "", ""]] * 6]),
  }


def np_history(emb: FeatureEmbedding, inputs: dict):
  """Per-position embeddings, position mask and target fields of the test group, in NumPy."""
  movie, genre = emb.tables["movieId"].numpy(), emb.tables["genres"].numpy()
  gid = {g: i + 1 for i, g in enumerate(GENRES)}
  hm = inputs["hist_movieId"].numpy()
  ids_m = np.where((hm >= 0) & (hm < MOVIES), hm + 1, 0)
  e_m = movie[ids_m]                                              # [B, L, d]
  hg = inputs["hist_genres"].numpy()
  ids_g = np.vectorize(lambda s: gid.get(s.decode(), 0))(hg)      # [B, L, K]
  present = (ids_g > 0)[..., None]
  e_g = (genre[ids_g] * present).sum(2) / np.maximum(present.sum(2), 1)
  t_m = movie[inputs["movieId"].numpy() + 1]
  tg = np.vectorize(lambda s: gid.get(s.decode(), 0))(inputs["genres"].numpy())
  tp = (tg > 0)[..., None]
  t_g = (genre[tg] * tp).sum(1) / np.maximum(tp.sum(1), 1)
  return e_m, e_g, (ids_m > 0).astype(np.float32), t_m, t_g, ids_m, ids_g


@pytest.mark.parametrize("pooling", ["attention", "attention_softmax"])
def test_feature_embedding_attention_group_matches_numpy(tmp_path, pooling):
  spec = load_spec(write_spec(tmp_path, with_changes(2, attention_units=[5], pooling=pooling)))
  emb = FeatureEmbedding(spec, dim=4)
  inputs = embedding_inputs()
  out = emb(inputs).numpy()                                        # [B, 4 fields, 4]
  assert out.shape == (2, 4, 4)
  e_m, e_g, mask, t_m, t_g, _, _ = np_history(emb, inputs)
  history = np.concatenate([e_m, e_g], -1)
  w, pooled = np_attention(emb.attention["hist_movieId"], history,
                           np.concatenate([t_m, t_g], -1), mask)
  if pooling == "attention_softmax":
    w = np_masked_softmax(w, mask)
    pooled = np.einsum("bl,bld->bd", w, history)
  assert np.all(w[0, :2] != 0) and np.all(w[0, 2:] == 0)     # OOV id 99 (row 0) and padding
  np.testing.assert_allclose(out[:, 2], pooled[:, :4], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[:, 3], pooled[:, 4:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_mean_and_sum_pooling(tmp_path, pooling):
  spec = load_spec(write_spec(tmp_path, with_changes(2, pooling=pooling)))
  emb = FeatureEmbedding(spec, dim=4)
  inputs = embedding_inputs()
  out = emb(inputs).numpy()
  assert not emb.attention
  e_m, e_g, mask, _, _, _, _ = np_history(emb, inputs)
  m = mask[..., None]
  for field, e in ((2, e_m), (3, e_g)):
    want = (e * m).sum(1)
    if pooling == "mean":
      want = want / np.maximum(m.sum(1), 1)
    np.testing.assert_allclose(out[:, field], want, rtol=1e-5, atol=1e-6)


def test_history_shares_the_target_table_and_l2_counts_present_rows(tmp_path):
  spec = load_spec(write_spec(tmp_path))
  emb = FeatureEmbedding(spec, dim=4, l2=0.1)
  inputs = embedding_inputs()
  emb(inputs)
  names = sorted(v.name.split("/")[1] for v in emb.trainable_variables if "/emb_" in v.name)
  assert names == ["emb_genres:0", "emb_movieId:0"]                 # no table of its own
  with tf.GradientTape() as tape:
    out = emb(inputs)
    history_only = tf.reduce_sum(out[:, 2] ** 2)
  grad = tf.convert_to_tensor(tape.gradient(history_only, emb.tables["movieId"])).numpy()
  changed = set(np.flatnonzero(np.abs(grad).sum(1)))
  # history ids 4..11 -> rows 5..12, and the targets 3, 7 (rows 4, 8) through the attention;
  # never row 0 (OOV id 99 and padding)
  assert changed == {4, 5, 6, 7, 8, 9, 10, 11, 12}
  # L2 of the last call: the rows every field used, padding and OOV positions excluded
  _, _, _, _, _, ids_m, ids_g = np_history(emb, inputs)
  movie, genre = emb.tables["movieId"].numpy(), emb.tables["genres"].numpy()
  tg = [[1, 3], [2]]
  want = (np.square(movie[[4, 8]]).sum() + sum(np.square(genre[g]).sum() for g in tg)
          + np.square(movie[ids_m[ids_m > 0]]).sum() + np.square(genre[ids_g[ids_g > 0]]).sum())
  np.testing.assert_allclose(emb.losses[-1].numpy(), 0.1 * want / 2, rtol=1e-5)


# ----------------------------------------------------------------------------- end to end

def write_records(folder, rows: int, seed: int) -> None:
  """Clicks follow the overlap of the candidate with the history (id and genres)."""
  rng = np.random.default_rng(seed)
  genre_of = {m: list(rng.choice(GENRES, size=rng.integers(1, K + 1), replace=False))
              for m in range(MOVIES)}
  for split, n in (("train", rows), ("test", rows // 4)):
    (folder / split).mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(folder / split / "part-0.tfrecord")) as w:
      for _ in range(n):
        hist = [int(m) for m in rng.integers(0, MOVIES, size=rng.integers(0, L + 3))]
        movie = int(rng.integers(0, MOVIES))
        logit = -1.0 + 2.0 * (movie in hist) + 0.5 * (movie % 3 == 0)
        click = float(rng.random() < 1 / (1 + np.exp(-logit)))
        w.write(example(movie, genre_of[movie], hist,
                        flat_genres([genre_of[m] for m in hist]), click))


RELOAD = r"""
import json, sys
import numpy as np
import tensorflow as tf
assert "ssr_tf" not in sys.modules
out = {}
for path, shard, raw in zip(*[iter(sys.argv[1:])] * 3):
  m = tf.saved_model.load(path)
  recs = [r.numpy() for r in tf.data.TFRecordDataset(shard)]
  served = m.signatures["serving_default"](examples=tf.constant(recs))
  feeds = {k: tf.constant(v) for k, v in np.load(raw, allow_pickle=True).items()}
  direct = m.signatures["predict_raw"](**feeds)
  out[path] = {"serving_default": served["click_prob"].numpy().tolist(),
               "predict_raw": direct["click_prob"].numpy().tolist()}
assert "ssr_tf" not in sys.modules
print(json.dumps(out))
"""


def test_train_export_reload_with_history(tmp_path, capsys):
  data = tmp_path / "data"
  data.mkdir()
  spec_path = write_spec(data)
  write_records(data, 384, seed=1)
  shard = str(data / "test" / "part-0.tfrecord")
  models = {"dnn": {"hidden_units": [16]},
            "ssr": {"mode": "dynamic", "num_layers": 1, "num_views": 2, "view_dim": 8,
                    "impl": "tf"}}
  argv, keras_scores = [], {}
  for name, backbone in models.items():
    cfg_path = tmp_path / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "data": {"spec": spec_path, "train": str(data / "train/*"),
                 "test": str(data / "test/*"), "batch_size": 64, "deterministic": True},
        "model": {"name": name, "embedding_dim": 8, "embedding_l2": 1e-4,
                  "backbone": backbone},
        "train": {"model_dir": str(tmp_path / name / "model"), "epochs": 1,
                  "steps_per_epoch": 4, "learning_rate": 0.01, "verbose": 0}}))
    cfg = load_config(str(cfg_path))
    from ssr_tf import training
    state = training.train(cfg)
    assert state["completed"]
    base = str(tmp_path / name / "export")
    assert cli.main(["export", "--config", str(cfg_path), "--output", base,
                     "--warmup_batches", "4" if name == "dnn" else ""]) == 0
    export_dir = os.path.join(base, "1")
    assert not custom_ops(export_dir)
    spec, model = task.build(cfg)
    task.restore(model, cfg.train.model_dir)
    recs = tf.constant([r.numpy() for r in tf.data.TFRecordDataset(shard)])
    feats = data_lib.parse_features(recs, spec)
    assert feats["hist_genres"].shape[1:] == (L, K)
    keras_scores[export_dir] = model(feats, training=False)["click_prob"].numpy()
    raw = str(tmp_path / name / "raw.npz")
    np.savez(raw, **{k: v.numpy() for k, v in feats.items()})
    argv += [export_dir, shard, raw]
    if name == "dnn":                         # `ssr_tf score` through the export, unchanged
      scored = tmp_path / "scores.tsv"
      assert cli.main(["score", "--saved_model", base, "--input", shard,
                       "--output", str(scored), "--json"]) == 0
      got = [json.loads(line)["click_prob"] for line in scored.read_text().splitlines()]
      np.testing.assert_allclose(got, keras_scores[export_dir], atol=1e-5)
  capsys.readouterr()
  proc = subprocess.run([sys.executable, "-c", RELOAD, *argv], capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  served = json.loads(proc.stdout.strip().splitlines()[-1])
  for export_dir, want in keras_scores.items():
    assert np.std(want) > 0                                  # scores depend on the inputs
    np.testing.assert_allclose(served[export_dir]["serving_default"], want, atol=1e-5)
    np.testing.assert_allclose(served[export_dir]["predict_raw"], want, atol=1e-5)


def test_history_encoded_like_its_target():
  """Hashed and identity targets: a history value gets the row its target value gets, and
  padding ("" / -1) gets row 0."""
  spec = FeatureSpec(features=[
      Feature(name="query", dtype="string", hash_buckets=97),
      Feature(name="item", num_buckets=10),
      Feature(name="hist_query", type="sequence", dtype="string", share_with="query", max_len=3),
      Feature(name="hist_item", type="sequence", share_with="item", max_len=3, pooling="sum")],
      labels={"click": "click"})
  spec.validate()
  emb = FeatureEmbedding(spec, dim=2)
  enc = emb.encoder({"query": tf.constant(["a", "b"]), "item": tf.constant([4, 12], tf.int64),
                     "hist_query": tf.constant([["b", "a", ""], ["", "", ""]]),
                     "hist_item": tf.constant([[12, 4, -1], [-1, -1, -1]], tf.int64)})
  q, hq = enc["query"].numpy(), enc["hist_query"].numpy()
  np.testing.assert_array_equal(hq, [[q[1], q[0], 0], [0, 0, 0]])
  np.testing.assert_array_equal(enc["hist_item"].numpy(), [[0, 5, 0], [0, 0, 0]])
  out = emb({"query": tf.constant(["a", "b"]), "item": tf.constant([4, 12], tf.int64),
             "hist_query": tf.constant([["b", "a", ""], ["", "", ""]]),
             "hist_item": tf.constant([[12, 4, -1], [-1, -1, -1]], tf.int64)})
  assert out.shape == (2, 4, 2) and set(emb.attention) == {"hist_query"}
  np.testing.assert_allclose(out[0, 3], emb.tables["item"][5].numpy(), rtol=1e-6)
  np.testing.assert_array_equal(out[1, 2:], 0.0)                 # empty histories
