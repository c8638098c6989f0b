"""Context serving with the backbone's first layer split: x W = x_ctx W_ctx + x_cand W_cand.

The context_candidates path of DNN and SSR-D computes the context fields' first-layer term
once per request (``split_first_layer``); SSR-S and the other backbones run on the
broadcast fields. Scores must equal the flat path on the merged examples.
"""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from ssr_tf import context as context_lib
from ssr_tf.serving import examples as examples_lib

from conftest import custom_ops

# about half of the synthetic fields (conftest's spec: 11 + 3 noise fields): user, request
# and two noise fields; history_categories is multi-valued
CONTEXT = ("scene", "user_id", "hour", "device", "query", "history_categories", "noise_0",
           "noise_1")
SSR_D = {"mode": "dynamic", "num_layers": 2, "num_views": 4, "view_dim": 8,
         "expanded_dim": 16, "impl": "tf"}
SSR_S = {"mode": "static", "num_layers": 2, "num_views": 4, "view_dim": 8, "impl": "tf"}
BACKBONES = {  # name: (model.name, backbone settings, splits the first layer)
    "dnn": ("dnn", {"hidden_units": [16, 8]}, True),
    "dnn_bn": ("dnn", {"hidden_units": [16, 8], "batch_norm": True}, True),
    "ssr_dynamic": ("ssr", SSR_D, True),
    "ssr_dynamic_tower": ("ssr", {**SSR_D, "filter": "none", "tower_units": [8]}, True),
    "ssr_static": ("ssr", SSR_S, False),
    "ssr_msn": ("ssr_msn", {**SSR_D, "memories": [{"num_sub_keys": 8, "key_dim": 8, "top_k": 4,
                                                   "value_dim": 8, "after_layer": 0}]}, False),
    "dcnv2": ("dcnv2", {"num_cross_layers": 2, "hidden_units": [16]}, False),
}


def _spec(synth_dir, context=CONTEXT):
  from ssr_tf.features import load_spec
  spec = load_spec(str(synth_dir / "spec.yaml"))
  for f in spec.features:
    f.context = f.name in context
  return spec


def _model(spec, name, backbone):
  from ssr_tf.config import ModelConfig
  from ssr_tf.models.ranker import build_model
  return build_model(spec, ModelConfig(name=name, embedding_dim=4, backbone=dict(backbone)))


@pytest.fixture(scope="module")
def records(synth_dir):
  shard = sorted(glob.glob(str(synth_dir / "test" / "*")))[0]
  return [bytes(r) for r in tf.data.TFRecordDataset(shard).take(40).as_numpy_iterator()]


def _merge(context: bytes, candidate: bytes) -> bytes:
  m = tf.train.Example.FromString(context)
  m.MergeFrom(tf.train.Example.FromString(candidate))
  return m.SerializeToString()


def _request(records, context=CONTEXT):
  ctx = examples_lib.split_context(records[:1], context)[0][0]
  cands = [c for _, group, _ in examples_lib.split_context(records, context) for c in group]
  return ctx, cands


def _with_feature(serialized: bytes, name: str, values) -> bytes:
  ex = tf.train.Example.FromString(serialized)
  ex.features.feature[name].int64_list.value[:] = values
  return ex.SerializeToString()


def _counting(backbone) -> list:
  """Counts calls of the backbone's split_first_layer (an instance attribute wraps it)."""
  calls = []
  if getattr(backbone, "splits_first_layer", False):
    inner = backbone.split_first_layer

    def wrapped(*args, **kwargs):
      calls.append(1)
      return inner(*args, **kwargs)
    backbone.split_first_layer = wrapped
  return calls


@pytest.mark.parametrize("case", sorted(BACKBONES))
def test_context_path_equals_flat_path(synth_dir, records, case):
  from ssr_tf.export import ServingModule
  name, backbone, splits = BACKBONES[case]
  spec = _spec(synth_dir)
  model = _model(spec, name, backbone)
  module = ServingModule(model, spec)
  module.serve_examples(tf.constant(records[:2]))                  # builds the model
  assert bool(getattr(model.backbone, "splits_first_layer", False)) is splits
  calls = _counting(model.backbone)
  ctx, cands = _request(records)
  overriding = list(cands)
  overriding[3] = _with_feature(overriding[3], "user_id", [4])      # the merge rule's branch
  overriding[5] = _with_feature(overriding[5], "noise_1", [2])
  for cs in (cands, cands[:1], overriding):
    got = module.serve_context(tf.constant(ctx), tf.constant(cs))
    want = module.serve_examples(tf.constant([_merge(ctx, c) for c in cs]))
    assert set(got) == set(want)
    for k in want:
      assert got[k].shape == (len(cs),)
      np.testing.assert_allclose(got[k].numpy(), want[k].numpy(), rtol=1e-6, atol=1e-6)
  assert len(calls) == (3 if splits else 0)


@pytest.mark.parametrize("case", ["dnn", "ssr_dynamic", "ssr_dynamic_tower"])
def test_split_first_layer_equals_call(case):
  """The backbone alone, on random fields: split (one context row or N) == call."""
  from ssr_tf.models import registry
  from ssr_tf.config import ModelConfig
  name, backbone, _ = BACKBONES[case]
  num_fields, dim, n = 7, 5, 9
  layer = registry.build_backbone(ModelConfig(name=name, embedding_dim=dim,
                                              backbone=dict(backbone)), num_fields, ("click",))
  rng = np.random.default_rng(1)
  for index in ([0, 1], [1, 3, 4, 6], [6], [2, 3, 4]):             # scattered and one block
    rest = [i for i in range(num_fields) if i not in index]
    cand = rng.normal(size=[n, len(rest), dim]).astype(np.float32)
    for rows in (1, n):
      ctx = rng.normal(size=[rows, len(index), dim]).astype(np.float32)
      full = np.zeros([n, num_fields, dim], np.float32)
      full[:, index] = np.broadcast_to(ctx, [n, len(index), dim])
      full[:, rest] = cand
      want = layer(tf.constant(full), training=False).numpy()
      got = layer.split_first_layer(tf.constant(ctx), tf.constant(cand), index).numpy()
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_sequence_context_feature_is_not_split():
  """A context history pooled against a candidate field differs per candidate: it goes
  with the candidate part; the context ids feature is split."""
  from ssr_tf.config import ModelConfig
  from ssr_tf.export import ServingModule
  from ssr_tf.features import Feature, FeatureSpec
  from ssr_tf.models.ranker import build_model
  spec = FeatureSpec(features=[
      Feature(name="user_id", num_buckets=50, context=True),
      Feature(name="item_id", num_buckets=40),
      Feature(name="hist", type="sequence", share_with="item_id", max_len=5, context=True),
      Feature(name="hour", num_buckets=24, context=True),
      Feature(name="price", type="numeric", transform="dense", mean=1.0, std=2.0)])
  spec.validate()
  assert context_lib.shared_field_index(spec) == [0, 3]
  model = build_model(spec, ModelConfig(name="dnn", embedding_dim=4,
                                        backbone={"hidden_units": [8]}))
  module = ServingModule(model, spec)

  def example(feats):
    f = {k: (tf.train.Feature(float_list=tf.train.FloatList(value=v)) if isinstance(v[0], float)
             else tf.train.Feature(int64_list=tf.train.Int64List(value=v)))
         for k, v in feats.items()}
    return tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString()

  rng = np.random.default_rng(0)
  ctx = example({"user_id": [7], "hist": [3, 9, 12], "hour": [5]})
  cands = [example({"item_id": [int(rng.integers(0, 40))], "price": [float(rng.gamma(2.0))]})
           for _ in range(9)]
  got = module.serve_context(tf.constant(ctx), tf.constant(cands))
  want = module.serve_examples(tf.constant([_merge(ctx, c) for c in cands]))
  for k in want:
    np.testing.assert_allclose(got[k].numpy(), want[k].numpy(), rtol=1e-6, atol=1e-6)


# Loads the export in a fresh interpreter that never imports ssr_tf (as TF Serving would).
RELOAD = r"""
import json, sys
import tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
req = json.loads(open(sys.argv[2]).read())
dec = bytes.fromhex
cands = tf.constant([dec(c) for c in req["candidates"]])
ctx = m.signatures["context_candidates"](context=tf.constant(dec(req["context"])),
                                         candidates=cands)
flat = m.signatures["serving_default"](examples=tf.constant([dec(c) for c in req["flat"]]))
assert "ssr_tf" not in sys.modules
print(json.dumps({w: {k: v.numpy().tolist() for k, v in out.items()}
                  for w, out in (("context", ctx), ("flat", flat))}))
"""


@pytest.mark.parametrize("case", ["dnn", "ssr_dynamic"])
def test_split_export_core_ops_and_fresh_process(synth_dir, records, tmp_path, case):
  from ssr_tf.export import export_saved_model
  name, backbone, _ = BACKBONES[case]
  spec = _spec(synth_dir)
  model = _model(spec, name, backbone)
  model(_features(spec, records[:2]), training=False)
  path = export_saved_model(model, spec, str(tmp_path / "export"))
  assert not custom_ops(path)
  ctx, cands = _request(records[:30])
  req = tmp_path / "request.json"
  req.write_text(json.dumps({"context": ctx.hex(), "candidates": [c.hex() for c in cands],
                             "flat": [_merge(ctx, c).hex() for c in cands]}))
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  proc = subprocess.run([sys.executable, "-c", RELOAD, path, str(req)], capture_output=True,
                        text=True, timeout=300, env=env, cwd=str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  for k in got["flat"]:
    np.testing.assert_allclose(got["context"][k], got["flat"][k], rtol=1e-6, atol=1e-6)


def _features(spec, records):
  from ssr_tf import data as data_lib
  return data_lib.parse_features(tf.constant(records), spec)
