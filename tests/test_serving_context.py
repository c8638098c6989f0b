"""Context + candidates serving: the context_candidates signature, the server's routing of
ExampleListWithContext and Predict to it, bad requests, and the client's grouping.

One small export of the synthetic data set with the user / request features marked
``context: true`` (an untrained DNN: only equality with the flat path counts).
"""
import json
import os
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from ssr_tf import context as context_lib
from ssr_tf.serving import client as client_lib
from ssr_tf.serving import examples as examples_lib
from ssr_tf.serving.process import ServerProcess

from conftest import custom_ops

CONTEXT = ("scene", "user_id", "hour", "device", "query", "history_categories")
MAX_ROWS = 50


def _context_spec(path):
  from ssr_tf.features import load_spec
  spec = load_spec(str(path))
  for f in spec.features:
    f.context = f.name in CONTEXT
  return spec


@pytest.fixture(scope="module")
def export(synth_dir, tmp_path_factory):
  """(export version dir, spec, test records) of a DNN over the context spec."""
  import glob
  from ssr_tf.config import ModelConfig
  from ssr_tf.export import export_saved_model
  from ssr_tf.models.ranker import build_model
  spec = _context_spec(synth_dir / "spec.yaml")
  model = build_model(spec, ModelConfig(name="dnn", embedding_dim=4,
                                        backbone={"hidden_units": [16, 8]}))
  shard = sorted(glob.glob(str(synth_dir / "test" / "*")))[0]
  records = [bytes(r) for r in tf.data.TFRecordDataset(shard).take(64).as_numpy_iterator()]
  base = str(tmp_path_factory.mktemp("context_export"))
  path = export_saved_model(model, spec, base, warmup=records, batches=(1, 8))
  return path, spec, records


@pytest.fixture(scope="module")
def signatures(export):
  return tf.saved_model.load(export[0]).signatures


def _merge(context: bytes, candidate: bytes) -> bytes:
  """TF Serving's merge: the context's features, then the candidate's (which win)."""
  m = tf.train.Example.FromString(context)
  m.MergeFrom(tf.train.Example.FromString(candidate))
  return m.SerializeToString()


def _request(records):
  """One context (the first record's context features) and every record's candidate part."""
  ctx = examples_lib.split_context(records[:1], CONTEXT)[0][0]
  cands = [c for _, group, _ in examples_lib.split_context(records, CONTEXT) for c in group]
  return ctx, cands


def _flat(signatures, examples):
  out = signatures["serving_default"](examples=tf.constant(examples))
  return {k: v.numpy() for k, v in out.items()}


def _with_feature(serialized: bytes, name: str, values, kind="int64_list") -> bytes:
  ex = tf.train.Example.FromString(serialized)
  getattr(ex.features.feature[name], kind).value[:] = values
  return ex.SerializeToString()


def test_context_scores_equal_flat_scores(signatures, export):
  _, _, records = export
  assert {"context_candidates", "context_features"} <= set(signatures)
  for start in (0, 20):
    ctx, cands = _request(records[start:start + 40])
    want = _flat(signatures, [_merge(ctx, c) for c in cands])
    for shaped in (tf.constant(ctx), tf.constant([ctx])):         # shape [] and [1]
      got = signatures["context_candidates"](context=shaped, candidates=tf.constant(cands))
      assert set(got) == set(want) == {"click_prob", "pay_prob"}
      for k in want:
        assert got[k].shape == (len(cands),)
        np.testing.assert_allclose(got[k].numpy(), want[k], rtol=1e-6, atol=1e-6)
  # a candidate's own value of a context feature wins, as in the merged flat request
  ctx, cands = _request(records[:12])
  cands[3] = _with_feature(cands[3], "user_id", [4])
  cands[7] = _with_feature(cands[7], "history_categories", [1, 2, 3])
  want = _flat(signatures, [_merge(ctx, c) for c in cands])
  got = signatures["context_candidates"](context=tf.constant(ctx), candidates=tf.constant(cands))
  for k in want:
    np.testing.assert_allclose(got[k].numpy(), want[k], rtol=1e-6, atol=1e-6)


def test_graph_refuses_two_contexts_and_zero_candidates(signatures, export):
  """What stock TF Serving answers (no ssr_tf serve checks in front of the graph)."""
  ctx, cands = _request(export[2][:3])
  sig = signatures["context_candidates"]
  with pytest.raises(tf.errors.InvalidArgumentError, match="one serialized tf.Example"):
    sig(context=tf.constant([ctx, ctx]), candidates=tf.constant(cands))
  with pytest.raises(tf.errors.InvalidArgumentError, match="0 candidates"):
    sig(context=tf.constant(ctx), candidates=tf.constant([], tf.string))


def test_context_features_signature_names_them(signatures):
  assert set(signatures["context_features"].structured_outputs) == set(CONTEXT)


def test_spec_without_context_exports_two_signatures(synth_dir, tmp_path):
  from ssr_tf.config import ModelConfig
  from ssr_tf.export import export_saved_model
  from ssr_tf.features import load_spec
  from ssr_tf.models.ranker import build_model
  spec = load_spec(str(synth_dir / "spec.yaml"))
  model = build_model(spec, ModelConfig(name="dnn", embedding_dim=4,
                                        backbone={"hidden_units": [8]}))
  path = export_saved_model(model, spec, str(tmp_path))
  assert set(tf.saved_model.load(path).signatures) == {"serving_default", "predict_raw"}


def test_all_context_features_refused(synth_dir):
  from ssr_tf.errors import ConfigError
  spec = _context_spec(synth_dir / "spec.yaml")
  for f in spec.features:
    f.context = True
  with pytest.raises(ConfigError, match="candidates need at least one feature"):
    context_lib.check_context_spec(spec)


def test_only_core_ops(export):
  assert not custom_ops(export[0])


# Loads the export in a fresh interpreter that never imports ssr_tf (as TF Serving would).
RELOAD = r"""
import json, sys
import tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
req = json.loads(open(sys.argv[2]).read())
dec = lambda s: bytes.fromhex(s)
out = m.signatures["context_candidates"](context=tf.constant(dec(req["context"])),
                                         candidates=tf.constant([dec(c) for c in req["candidates"]]))
assert "ssr_tf" not in sys.modules
print(json.dumps({k: v.numpy().tolist() for k, v in out.items()}))
"""


def test_signature_scores_in_plain_tensorflow_in_a_fresh_process(export, signatures, tmp_path):
  path, _, records = export
  ctx, cands = _request(records[:30])
  req = tmp_path / "request.json"
  req.write_text(json.dumps({"context": ctx.hex(), "candidates": [c.hex() for c in cands]}))
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  proc = subprocess.run([sys.executable, "-c", RELOAD, path, str(req)], capture_output=True,
                        text=True, timeout=300, env=env, cwd=str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  want = _flat(signatures, [_merge(ctx, c) for c in cands])
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)


def test_synthetic_warmup_feeds_run_the_context_signature(export):
  """Without a warm-up file the server warms every signature on zero_feeds."""
  from ssr_tf.serving.servable import Servable
  servable = Servable("ssr", 1, export[0], intra_op_threads=1)
  for name in ("context_candidates", "context_features"):
    sig = servable.signatures[name]
    for rows in (1, 32):
      out = servable.run(sig, examples_lib.zero_feeds(sig.inputs, rows))
      if name == "context_candidates":
        assert out["click_prob"].shape == (rows,)
  servable.close()


def test_split_context_groups_consecutive_runs():
  def ex(user, item, hour=None):
    f = {"user_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[user])),
         "item_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[item]))}
    if hour is not None:
      f["hour"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[hour]))
    return tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString()
  rows = [ex(1, 10, 5), ex(1, 11, 5), ex(2, 12, 5), ex(2, 13, 5), ex(2, 14, 5), ex(1, 15, 5),
          ex(1, 16), ex(1, 17, 6)]
  groups = examples_lib.split_context(rows, ["user_id", "hour"])
  assert [(len(c), first) for _, c, first in groups] == [(2, 0), (3, 2), (1, 5), (1, 6), (1, 7)]
  ctx = tf.train.Example.FromString(groups[1][0]).features.feature
  assert set(ctx) == {"user_id", "hour"} and ctx["user_id"].int64_list.value == [2]
  assert set(tf.train.Example.FromString(groups[3][0]).features.feature) == {"user_id"}
  for _, cands, _ in groups:
    for c in cands:
      assert set(tf.train.Example.FromString(c).features.feature) == {"item_id"}
  # runs averaging under MIN_MEAN_RUN rows go flat
  assert client_lib.context_groups(rows[:6], ["user_id"]) is not None
  assert client_lib.context_groups([ex(i, i) for i in range(4)], ["user_id"]) is None


def test_sequence_context_feature_equals_flat():
  """A context history pooled by target attention against a candidate feature: its ids are
  broadcast and pooled per candidate; scores equal the merged flat path."""
  from ssr_tf.config import ModelConfig
  from ssr_tf.export import ServingModule
  from ssr_tf.features import Feature, FeatureSpec
  from ssr_tf.models.ranker import build_model
  spec = FeatureSpec(features=[
      Feature(name="user_id", num_buckets=50, context=True),
      Feature(name="item_id", num_buckets=40),
      Feature(name="hist", type="sequence", share_with="item_id", max_len=5, context=True),
      Feature(name="price", type="numeric", transform="dense", mean=1.0, std=2.0)])
  spec.validate()
  model = build_model(spec, ModelConfig(name="dnn", embedding_dim=4,
                                        backbone={"hidden_units": [8]}))
  module = ServingModule(model, spec)
  rng = np.random.default_rng(0)

  def example(feats):
    f = {}
    for k, v in feats.items():
      if isinstance(v[0], float):
        f[k] = tf.train.Feature(float_list=tf.train.FloatList(value=v))
      else:
        f[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=v))
    return tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString()

  ctx = example({"user_id": [7], "hist": [3, 9, 12]})
  cands = [example({"item_id": [int(rng.integers(0, 40))], "price": [float(rng.gamma(2.0))]})
           for _ in range(9)]
  got = module.serve_context(tf.constant(ctx), tf.constant(cands))
  want = module.serve_examples(tf.constant([_merge(ctx, c) for c in cands]))
  for k in want:
    np.testing.assert_allclose(got[k].numpy(), want[k].numpy(), rtol=1e-6, atol=1e-6)


# -- through `ssr_tf serve` -----------------------------------------------------------------
@pytest.fixture(scope="module")
def server(export):
  base = os.path.dirname(export[0])
  with ServerProcess(base, [f"--max_request_rows={MAX_ROWS}", "--file_system_poll_wait_seconds=0",
                            "--num_batch_threads=2"], rest=True) as srv:
    yield srv
  assert srv.returncode == 0, srv.log()[-2000:]


@pytest.fixture(scope="module")
def stub(server):
  channel = grpc.insecure_channel(server.target)
  yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
  channel.close()


def _with_context(req, ctx: bytes, cands: list[bytes]):
  wc = req.input.example_list_with_context
  wc.context.CopyFrom(tf.train.Example.FromString(ctx))
  wc.examples.extend(tf.train.Example.FromString(c) for c in cands)
  return req


def _classify(ctx, cands):
  req = classification_pb2.ClassificationRequest()
  req.model_spec.name = "ssr"
  return _with_context(req, ctx, cands)


def _regress(ctx, cands):
  req = regression_pb2.RegressionRequest()
  req.model_spec.name = "ssr"
  return _with_context(req, ctx, cands)


def _predict(ctx, cands):
  req = predict_pb2.PredictRequest()
  req.model_spec.name, req.model_spec.signature_name = "ssr", "context_candidates"
  req.inputs["context"].CopyFrom(tf.make_tensor_proto(ctx, dtype=tf.string))
  req.inputs["candidates"].CopyFrom(tf.make_tensor_proto(cands, dtype=tf.string,
                                                         shape=[len(cands)]))
  return req


def test_server_classify_regress_predict_with_context(stub, server, signatures, export):
  _, _, records = export
  ctx, cands = _request(records[:40])
  want = _flat(signatures, [_merge(ctx, c) for c in cands])
  resp = stub.Classify(_classify(ctx, cands), timeout=60)
  got = [{c.label: c.score for c in r.classes} for r in resp.result.classifications]
  for k in want:
    np.testing.assert_allclose([g[k] for g in got], want[k], rtol=1e-6, atol=1e-6)
  assert resp.model_spec.signature_name == "serving_default"
  got = [r.value for r in stub.Regress(_regress(ctx, cands), timeout=60).result.regressions]
  np.testing.assert_allclose(got, want["click_prob"], rtol=1e-6, atol=1e-6)
  resp = stub.Predict(_predict(ctx, cands), timeout=60)
  for k in want:
    np.testing.assert_allclose(tf.make_ndarray(resp.outputs[k]), want[k], rtol=1e-6, atol=1e-6)
  # a candidate that sets a context feature: its value wins (merged flat scores)
  cands[5] = _with_feature(cands[5], "query", [b"other query"], "bytes_list")
  want = _flat(signatures, [_merge(ctx, c) for c in cands])
  got = [r.value for r in stub.Regress(_regress(ctx, cands), timeout=60).result.regressions]
  np.testing.assert_allclose(got, want["click_prob"], rtol=1e-6, atol=1e-6)
  # the export's warm-up file holds a context_candidates request per batch size
  assert "replayed 4 records from assets.extra/tf_serving_warmup_requests" in server.log()


def test_server_rest_regress_with_context(server, signatures, export):
  import urllib.request
  _, _, records = export
  ctx, cands = _request(records[:6])

  def row(serialized: bytes, lists=()) -> dict:
    out = {}
    for k, v in tf.train.Example.FromString(serialized).features.feature.items():
      vals = [x.decode() if isinstance(x, bytes) else x
              for x in getattr(v, v.WhichOneof("kind")).value]
      out[k] = vals if k in lists else vals[0]
    return out

  body = {"context": row(ctx, ("history_categories",)), "examples": [row(c) for c in cands]}
  url = f"http://127.0.0.1:{server.rest_port}/v1/models/ssr:regress"
  with urllib.request.urlopen(urllib.request.Request(url, json.dumps(body).encode()),
                              timeout=60) as r:
    got = json.loads(r.read())["results"]
  want = _flat(signatures, [_merge(ctx, c) for c in cands])
  np.testing.assert_allclose(got, want["click_prob"], rtol=1e-6, atol=1e-6)


def test_server_rest_predict_context_signature(server, signatures, export):
  import base64
  import urllib.request
  _, _, records = export
  ctx, cands = _request(records[:7])
  b64 = lambda b: {"b64": base64.b64encode(b).decode()}
  body = {"signature_name": "context_candidates",
          "inputs": {"context": b64(ctx), "candidates": [b64(c) for c in cands]}}
  url = f"http://127.0.0.1:{server.rest_port}/v1/models/ssr:predict"
  with urllib.request.urlopen(urllib.request.Request(url, json.dumps(body).encode()),
                              timeout=60) as r:
    got = json.loads(r.read())["outputs"]
  want = _flat(signatures, [_merge(ctx, c) for c in cands])
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)


def _bad(export):
  _, _, records = export
  ctx, cands = _request(records[:4])
  with_item = _merge(ctx, _with_feature(b"", "item_id", [3]))
  too_many = [cands[0]] * (MAX_ROWS + 1)
  inv, exh = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
  return [
      ("context with candidate feature (Classify)", "Classify", _classify(with_item, cands), inv,
       "candidate feature 'item_id'"),
      ("context with candidate feature (Predict)", "Predict", _predict(with_item, cands), inv,
       "candidate feature 'item_id'"),
      ("zero candidates (Regress)", "Regress", _regress(ctx, []), inv, "0 candidates"),
      ("zero candidates (Predict)", "Predict", _predict(ctx, []), inv, "0 candidates"),
      ("too many candidates (Classify)", "Classify", _classify(ctx, too_many), exh,
       f"{MAX_ROWS + 1} candidates"),
      ("too many candidates (Predict)", "Predict", _predict(ctx, too_many), exh,
       f"at most {MAX_ROWS}"),
      ("two contexts", "Predict", _predict([ctx, ctx], cands), inv,
       "input 'context': one serialized tf.Example"),
      ("mistyped context feature", "Predict",
       _predict(_with_feature(ctx, "hour", [b"x"], "bytes_list"), cands), inv, "hour"),
  ]


BAD_IDS = ["context with candidate feature (Classify)", "context with candidate feature (Predict)",
           "zero candidates (Regress)", "zero candidates (Predict)",
           "too many candidates (Classify)", "too many candidates (Predict)", "two contexts",
           "mistyped context feature"]


@pytest.mark.parametrize("case_id", BAD_IDS)
def test_server_bad_context_requests(stub, export, case_id):
  case = {c[0]: c for c in _bad(export)}[case_id]
  _, method, request, code, text = case
  with pytest.raises(grpc.RpcError) as info:
    getattr(stub, method)(request, timeout=60)
  assert info.value.code() == code, info.value.details()
  assert text in info.value.details(), info.value.details()


def test_client_sends_context_requests(server, signatures, export, monkeypatch, tmp_path,
                                       capsys):
  _, _, records = export
  # three runs of records sharing one user's context, then the records of the test split
  runs = []
  for start in (0, 10, 20):
    ctx = examples_lib.split_context(records[start:start + 1], CONTEXT)[0][0]
    runs += [_merge(ctx, c) for _, g, _ in
             examples_lib.split_context(records[start:start + 8], CONTEXT) for c in g]
  want = _flat(signatures, runs)
  calls = []
  real = client_lib.RankingClient.score_context
  monkeypatch.setattr(client_lib.RankingClient, "score_context",
                      lambda self, c, cands: calls.append(len(cands)) or real(self, c, cands))
  with client_lib.RankingClient(server.target) as c:
    assert c.context_features() == sorted(CONTEXT)
    got = c.score_examples(runs)
  assert calls == [8, 8, 8]
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)
  # `ssr_tf score --server` scores the same records the same way, grouped or --flat
  rec = tmp_path / "runs.tfrecord"
  with tf.io.TFRecordWriter(str(rec)) as w:
    for r in runs:
      w.write(r)
  outputs = []
  for flags in ([], ["--flat"]):
    calls.clear()
    capsys.readouterr()
    assert client_lib.main(["--server", server.target, "--input", str(rec)] + flags) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    outputs.append(np.array([[float(x) for x in line.split("\t")] for line in lines[1:]]))
    assert calls == ([] if flags else [8, 8, 8])
  np.testing.assert_allclose(outputs[0], outputs[1], atol=2e-6)
  np.testing.assert_allclose(outputs[0][:, 0], want["click_prob"], atol=2e-6)
