"""`ssr_tf serve` through the official TF Serving stubs, REST, the client and `ssr_tf score`.

One server subprocess (127.0.0.1, free ports) serves the toy model with the export
contract's signatures; references come from loading the same SavedModel in-process.
"""
import base64
import concurrent.futures
import json
import os
import urllib.error
import urllib.request

import ssr_tf  # noqa: F401
import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from ssr_tf.serving import client as client_lib
from ssr_tf.serving import examples as examples_lib
from ssr_tf.serving.process import ServerProcess
from ssr_tf.serving.toy_model import build_toy_model, toy_examples

MAX_ROWS = 600


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  base = str(tmp_path_factory.mktemp("models"))
  build_toy_model(base, version=1, seed=0)
  return base


@pytest.fixture(scope="module")
def server(model_dir):
  srv = ServerProcess(model_dir, [f"--max_request_rows={MAX_ROWS}", "--max_message_bytes=200000",
                                  "--file_system_poll_wait_seconds=0", "--num_batch_threads=2"],
                      rest=True)
  with srv:
    yield srv
  assert srv.returncode == 0, srv.log()[-2000:]


@pytest.fixture(scope="module")
def reference(model_dir):
  loaded = tf.saved_model.load(os.path.join(model_dir, "1"))
  return loaded.signatures


@pytest.fixture(scope="module")
def stubs(server):
  channel = grpc.insecure_channel(server.target,
                                  options=[("grpc.max_send_message_length", 8 << 20)])
  yield (prediction_service_pb2_grpc.PredictionServiceStub(channel),
         model_service_pb2_grpc.ModelServiceStub(channel))
  channel.close()


def _request(examples, name="ssr", signature="", version=None) -> predict_pb2.PredictRequest:
  req = predict_pb2.PredictRequest()
  req.model_spec.name = name
  if signature:
    req.model_spec.signature_name = signature
  if version is not None:
    req.model_spec.version.value = version
  req.inputs["examples"].CopyFrom(tf.make_tensor_proto(examples, dtype=tf.string))
  return req


def _ref(reference, examples):
  out = reference["serving_default"](examples=tf.constant(examples))
  return {k: v.numpy() for k, v in out.items()}


def test_predict_matches_savedmodel(stubs, reference):
  predict, _ = stubs
  exs = toy_examples(100, seed=1)
  resp = predict.Predict(_request(exs), timeout=30)
  want = _ref(reference, exs)
  assert resp.model_spec.name == "ssr" and resp.model_spec.version.value == 1
  assert resp.model_spec.signature_name == "serving_default"
  assert set(resp.outputs) == {"click_prob", "pay_prob"}
  for k in want:
    got = tf.make_ndarray(resp.outputs[k])
    assert got.dtype == np.float32 and got.shape == (100,)
    np.testing.assert_allclose(got, want[k], rtol=1e-6, atol=1e-7)
  assert np.all(want["pay_prob"] <= want["click_prob"] + 1e-7)    # pay = click * cvr


def test_predict_raw_signature_matches(stubs, reference):
  predict, _ = stubs
  rng = np.random.default_rng(3)
  feats = {"user_id": rng.integers(0, 500, 7), "item_id": rng.integers(0, 500, 7),
           "city": np.array([b"a", b"b", b"", b"c", b"a", b"d", b"e"]),
           "price": rng.gamma(2.0, 2.0, 7).astype(np.float32),
           "history": rng.integers(0, 30, (7, 4))}
  req = predict_pb2.PredictRequest()
  req.model_spec.name, req.model_spec.signature_name = "ssr", "predict_raw"
  for k, v in feats.items():
    req.inputs[k].CopyFrom(tf.make_tensor_proto(v))
  resp = predict.Predict(req, timeout=30)
  want = reference["predict_raw"](**{k: tf.constant(v) for k, v in feats.items()})
  np.testing.assert_allclose(tf.make_ndarray(resp.outputs["click_prob"]),
                             want["click_prob"].numpy(), rtol=1e-6)
  # output_filter returns only what was asked for
  req.output_filter.append("pay_prob")
  assert set(predict.Predict(req, timeout=30).outputs) == {"pay_prob"}


def test_metadata_lists_signatures(stubs):
  predict, _ = stubs
  req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
  req.model_spec.name = "ssr"
  resp = predict.GetModelMetadata(req, timeout=30)
  smap = get_model_metadata_pb2.SignatureDefMap()
  assert resp.metadata["signature_def"].Unpack(smap)
  assert set(smap.signature_def) == {"serving_default", "predict_raw"}
  ex = smap.signature_def["serving_default"].inputs["examples"]
  assert ex.dtype == tf.string.as_datatype_enum
  assert set(smap.signature_def["predict_raw"].inputs) == {"user_id", "item_id", "city",
                                                           "price", "history"}
  assert resp.model_spec.version.value == 1


def test_model_status_available(stubs):
  _, models = stubs
  req = get_model_status_pb2.GetModelStatusRequest()
  req.model_spec.name = "ssr"
  resp = models.GetModelStatus(req, timeout=30)
  assert [(s.version, s.state) for s in resp.model_version_status] == [
      (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]


def _tensor(values, dtype=None):
  return tf.make_tensor_proto(values, dtype=dtype)


def _bad_requests():
  """(id, method, request, expected code, text the message must contain)."""
  good = toy_examples(2)
  cases = []
  cases.append(("unknown model", "Predict", _request(good, name="nope"),
                grpc.StatusCode.NOT_FOUND, "nope"))
  cases.append(("unknown version", "Predict", _request(good, version=7),
                grpc.StatusCode.NOT_FOUND, "7"))
  label = _request(good)
  label.model_spec.version_label = "canary"
  cases.append(("unknown label", "Predict", label, grpc.StatusCode.NOT_FOUND, "canary"))
  cases.append(("unknown signature", "Predict", _request(good, signature="nosuch"),
                grpc.StatusCode.INVALID_ARGUMENT, "nosuch"))
  missing = predict_pb2.PredictRequest()
  missing.model_spec.name = "ssr"
  cases.append(("missing input", "Predict", missing, grpc.StatusCode.INVALID_ARGUMENT,
                "'examples' is missing"))
  extra = _request(good)
  extra.inputs["bogus"].CopyFrom(_tensor([1, 2]))
  cases.append(("unknown input", "Predict", extra, grpc.StatusCode.INVALID_ARGUMENT, "'bogus'"))
  wrong_dtype = predict_pb2.PredictRequest()
  wrong_dtype.model_spec.name = "ssr"
  wrong_dtype.inputs["examples"].CopyFrom(_tensor([1, 2], tf.int64))
  cases.append(("wrong dtype", "Predict", wrong_dtype, grpc.StatusCode.INVALID_ARGUMENT,
                "input 'examples': expected DT_STRING, got DT_INT64"))
  wrong_shape = predict_pb2.PredictRequest()
  wrong_shape.model_spec.name = "ssr"
  wrong_shape.inputs["examples"].CopyFrom(_tensor([good, good], tf.string))
  cases.append(("wrong shape", "Predict", wrong_shape, grpc.StatusCode.INVALID_ARGUMENT,
                "input 'examples': expected shape"))
  cases.append(("unparsable example", "Predict", _request([good[0], b"\xff\x00garbage"]),
                grpc.StatusCode.INVALID_ARGUMENT, "input 'examples'"))
  wrong_feature = tf.train.Example()
  wrong_feature.features.feature["user_id"].bytes_list.value.append(b"x")
  cases.append(("mistyped feature", "Predict", _request([wrong_feature.SerializeToString()]),
                grpc.StatusCode.INVALID_ARGUMENT, "user_id"))
  raw = predict_pb2.PredictRequest()
  raw.model_spec.name, raw.model_spec.signature_name = "ssr", "predict_raw"
  for k, v in {"user_id": [1], "item_id": [2], "history": [[1, 2, 3, 4]]}.items():
    raw.inputs[k].CopyFrom(_tensor(v, tf.int64))
  raw.inputs["city"].CopyFrom(_tensor([b"x"]))
  raw.inputs["price"].CopyFrom(_tensor(["cheap"]))
  cases.append(("raw wrong dtype", "Predict", raw, grpc.StatusCode.INVALID_ARGUMENT,
                "input 'price': expected DT_FLOAT, got DT_STRING"))
  raw2 = predict_pb2.PredictRequest()
  raw2.CopyFrom(raw)
  raw2.inputs["price"].CopyFrom(_tensor([1.0], tf.float32))
  raw2.inputs["history"].CopyFrom(_tensor([[1, 2, 3]], tf.int64))
  cases.append(("raw wrong width", "Predict", raw2, grpc.StatusCode.INVALID_ARGUMENT,
                "input 'history': expected shape [-1, 4]"))
  raw3 = predict_pb2.PredictRequest()
  raw3.CopyFrom(raw2)
  raw3.inputs["history"].CopyFrom(_tensor([[1, 2, 3, 4]], tf.int64))
  raw3.inputs["item_id"].CopyFrom(_tensor([1, 2], tf.int64))
  cases.append(("raw batch mismatch", "Predict", raw3, grpc.StatusCode.INVALID_ARGUMENT,
                "input 'item_id': batch size 2"))
  bad_content = _request(good)
  bad_content.inputs["examples"].tensor_shape.dim[0].size = 5
  cases.append(("values vs shape", "Predict", bad_content, grpc.StatusCode.INVALID_ARGUMENT,
                "needs 5 values, got 2"))
  cases.append(("too many rows", "Predict", _request([b""] * (MAX_ROWS + 1)),
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"at most {MAX_ROWS}"))
  cases.append(("message too large", "Predict", _request([b"x" * 300_000]),
                grpc.StatusCode.RESOURCE_EXHAUSTED, ""))
  filt = _request(good)
  filt.output_filter.append("ctr")
  cases.append(("unknown output", "Predict", filt, grpc.StatusCode.INVALID_ARGUMENT, "'ctr'"))
  meta = get_model_metadata_pb2.GetModelMetadataRequest()
  meta.model_spec.name = "ssr"
  cases.append(("metadata without field", "GetModelMetadata", meta,
                grpc.StatusCode.INVALID_ARGUMENT, "metadata_field"))
  meta2 = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
  meta2.model_spec.name = "other"
  cases.append(("metadata unknown model", "GetModelMetadata", meta2,
                grpc.StatusCode.NOT_FOUND, "other"))
  cls = classification_pb2.ClassificationRequest()
  cls.model_spec.name, cls.model_spec.signature_name = "ssr", "predict_raw"
  cls.input.example_list.examples.add()
  cases.append(("classify on raw signature", "Classify", cls, grpc.StatusCode.INVALID_ARGUMENT,
                "predict_raw"))
  empty = regression_pb2.RegressionRequest()
  empty.model_spec.name = "ssr"
  cases.append(("regress without input", "Regress", empty, grpc.StatusCode.INVALID_ARGUMENT,
                "Input is empty"))
  status = get_model_status_pb2.GetModelStatusRequest()
  status.model_spec.name = "ssr"
  status.model_spec.version.value = 9
  cases.append(("status unknown version", "GetModelStatus", status, grpc.StatusCode.NOT_FOUND,
                "9"))
  return cases


BAD = _bad_requests()


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_request_status(stubs, case):
  predict, models = stubs
  _, method, request, code, text = case
  stub = models if method == "GetModelStatus" else predict
  with pytest.raises(grpc.RpcError) as info:
    getattr(stub, method)(request, timeout=30)
  assert info.value.code() == code, info.value.details()
  assert text in info.value.details()


def test_server_alive_after_bad_requests_and_bad_neighbours(stubs, reference, server):
  """Bad requests batched next to good ones fail alone; good ones get their own rows."""
  predict, _ = stubs
  goods = [toy_examples(n, seed=10 + n) for n in range(1, 13)]

  def call(i):
    if i % 3 == 0:
      try:
        predict.Predict(_request([b"\xff\xfe", b"\x00bad"]), timeout=30)
      except grpc.RpcError as e:
        return e.code()
      return "no error"
    exs = goods[i % len(goods)]
    return tf.make_ndarray(predict.Predict(_request(exs), timeout=30).outputs["click_prob"])

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    results = list(pool.map(call, range(36)))
  for i, r in enumerate(results):
    if i % 3 == 0:
      assert r == grpc.StatusCode.INVALID_ARGUMENT
    else:
      np.testing.assert_allclose(r, _ref(reference, goods[i % len(goods)])["click_prob"],
                                 rtol=1e-6)
  assert server.proc.poll() is None


def test_classify_and_regress(stubs, reference):
  predict, _ = stubs
  exs = [tf.train.Example.FromString(s) for s in toy_examples(5, seed=4)]
  want = _ref(reference, [e.SerializeToString() for e in exs])
  cls = classification_pb2.ClassificationRequest()
  cls.model_spec.name = "ssr"
  cls.input.example_list.examples.extend(exs)
  resp = predict.Classify(cls, timeout=30)
  got = [{c.label: c.score for c in r.classes} for r in resp.result.classifications]
  np.testing.assert_allclose([g["click_prob"] for g in got], want["click_prob"], rtol=1e-6)
  np.testing.assert_allclose([g["pay_prob"] for g in got], want["pay_prob"], rtol=1e-6)
  reg = regression_pb2.RegressionRequest()
  reg.model_spec.name = "ssr"
  # context features are merged into every example (the examples' own values win)
  ctx = reg.input.example_list_with_context
  ctx.context.features.feature["city"].bytes_list.value.append(b"city3")
  ctx.examples.extend(exs)
  merged = []
  for e in exs:
    m = tf.train.Example()
    m.CopyFrom(ctx.context)
    m.MergeFrom(e)
    merged.append(m.SerializeToString())
  got = [r.value for r in predict.Regress(reg, timeout=30).result.regressions]
  np.testing.assert_allclose(got, _ref(reference, merged)["click_prob"], rtol=1e-6)


def _http(server, path, body=None):
  url = f"http://127.0.0.1:{server.rest_port}{path}"
  data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
  try:
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as r:
      return r.status, json.loads(r.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def test_rest_api(server, reference):
  exs = toy_examples(4, seed=5)
  want = _ref(reference, exs)
  b64 = [{"b64": base64.b64encode(e).decode()} for e in exs]
  code, body = _http(server, "/v1/models/ssr:predict", {"instances": b64})
  assert code == 200, body
  np.testing.assert_allclose([p["click_prob"] for p in body["predictions"]], want["click_prob"],
                             rtol=1e-6)
  code, body = _http(server, "/v1/models/ssr/versions/1:predict",
                     {"signature_name": "serving_default", "inputs": {"examples": b64}})
  assert code == 200
  np.testing.assert_allclose(body["outputs"]["pay_prob"], want["pay_prob"], rtol=1e-6)
  rows = [{"user_id": 3, "item_id": 4, "city": "x", "price": 2.5, "history": [1, 2, 3, 4]}]
  code, body = _http(server, "/v1/models/ssr:predict",
                     {"signature_name": "predict_raw", "instances": rows})
  assert code == 200 and 0.0 < body["predictions"][0]["click_prob"] < 1.0
  code, body = _http(server, "/v1/models/ssr:regress", {"examples": rows})
  assert code == 200 and len(body["results"]) == 1
  code, body = _http(server, "/v1/models/ssr")
  assert code == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
  code, body = _http(server, "/v1/models/ssr/metadata")
  assert code == 200 and "predict_raw" in body["metadata"]["signature_def"]["signature_def"]
  # errors: JSON {"error": ...} with an HTTP status from the gRPC code
  assert _http(server, "/v1/models/nope:predict", {"instances": b64})[0] == 404
  code, body = _http(server, "/v1/models/ssr:predict", b"{not json")
  assert code == 400 and "JSON" in body["error"]
  code, body = _http(server, "/v1/models/ssr:predict",
                     {"signature_name": "predict_raw", "instances": [{"user_id": 1}]})
  assert code == 400 and "'city'" in body["error"]
  code, body = _http(server, "/v1/models/ssr:predict",
                     {"signature_name": "predict_raw",
                      "instances": [dict(rows[0], price="high")]})
  assert code == 400 and "'price'" in body["error"]


def _rows(n):
  rng = np.random.default_rng(8)
  return [{"user_id": int(rng.integers(0, 900)), "item_id": int(rng.integers(0, 900)),
           "city": f"c{i % 4}", "price": round(float(rng.gamma(2.0, 2.0)), 3),
           "history": [int(x) for x in rng.integers(1, 90, 1 + i % 5)], "label": i % 2}
          for i in range(n)]


def test_client_class_and_score_cli(server, reference, tmp_path, capsys):
  rows = _rows(9)
  with client_lib.RankingClient(server.target, "ssr") as c:
    assert c.status() == [(1, "AVAILABLE")]
    types = c.feature_types()
    assert types["history"].multi and not types["price"].multi
    exs = [examples_lib.make_example(r, types).SerializeToString() for r in rows]
    want = _ref(reference, exs)
    got = c.score_rows(rows)
    np.testing.assert_allclose(got["click_prob"], want["click_prob"], rtol=1e-6)
    feats = c.score_features({
        "user_id": np.array([r["user_id"] for r in rows]),
        "item_id": np.array([r["item_id"] for r in rows]),
        "city": [r["city"] for r in rows], "price": np.array([r["price"] for r in rows],
                                                             np.float32),
        "history": np.array([(r["history"] + [0] * 4)[:4] for r in rows])})
    assert feats["pay_prob"].shape == (9,)
  # the same rows as TFRecord, CSV and JSON lines score identically through the CLI
  rec = tmp_path / "rows.tfrecord"
  with tf.io.TFRecordWriter(str(rec)) as w:
    for e in exs:
      w.write(e)
  csv_path = tmp_path / "rows.csv"
  csv_path.write_text("user_id,item_id,city,price,history,label\n" + "".join(
      f"{r['user_id']},{r['item_id']},{r['city']},{r['price']},"
      f"{'|'.join(map(str, r['history']))},{r['label']}\n" for r in rows))
  jsonl = tmp_path / "rows.jsonl"
  jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
  for path in (rec, csv_path, jsonl):
    capsys.readouterr()
    assert client_lib.main(["--server", server.target, "--input", str(path),
                            "--batch_size", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "click_prob\tpay_prob" and len(lines) == 10, path
    got = np.array([[float(x) for x in line.split("\t")] for line in lines[1:]])
    np.testing.assert_allclose(got[:, 0], want["click_prob"], atol=2e-6)
    np.testing.assert_allclose(got[:, 1], want["pay_prob"], atol=2e-6)


def test_score_cli_errors(server, tmp_path):
  from ssr_tf.errors import DataError, UserError
  with pytest.raises(DataError, match="not found"):
    client_lib.main(["--server", server.target, "--input", str(tmp_path / "none.csv")])
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"user_id": "abc"}\n')
  with pytest.raises(DataError, match="user_id"):
    client_lib.main(["--server", server.target, "--input", str(bad)])
  good = tmp_path / "ok.jsonl"
  good.write_text('{"user_id": 1}\n')
  with pytest.raises(UserError, match="NOT_FOUND"):
    client_lib.main(["--server", server.target, "--input", str(good), "--model_name", "x"])
  garbage = tmp_path / "bad.tfrecord"
  with tf.io.TFRecordWriter(str(garbage)) as w:
    for e in toy_examples(3, seed=0) + [b"\x01garbage"]:
      w.write(e)
  with pytest.raises(DataError, match=r"bad.tfrecord records 3-4: INVALID_ARGUMENT: .*examples"):
    client_lib.main(["--server", server.target, "--input", str(garbage), "--batch_size", "2"])


# ---------------------------------------------------------------------------------------
# docs/serving.md's REST example, as written there, against an export with the demo's
# features (`make demo`'s synthetic spec; an untrained tiny model: only the interface counts).

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                    "serving.md")


def _docs_rest_example():
  """(JSON body, URL path) of the `curl -s -d '{"signature_name": "predict_raw", ...}'`
  example in docs/serving.md."""
  import re
  import urllib.parse
  with open(DOCS) as f:
    text = f.read()
  m = re.search(r"curl -s -d '(\{\"signature_name\": \"predict_raw\".*?)' \\\n\s*(http://\S+)",
                text, re.S)
  assert m, "docs/serving.md: the predict_raw curl example is gone or reshaped"
  return json.loads(m.group(1)), urllib.parse.urlsplit(m.group(2)).path


@pytest.mark.slow     # ~25 s on the 2-core VM: the export's save and a second server
def test_docs_rest_example_runs_against_a_demo_like_export(tmp_path):
  from ssr_tf import synth
  from ssr_tf.config import ModelConfig
  from ssr_tf.export import export_saved_model
  from ssr_tf.features import load_spec
  from ssr_tf.models.ranker import build_model
  body, path = _docs_rest_example()
  data = tmp_path / "demo_like"
  synth.write(synth.SynthConfig(rows=400, seed=0, shards=1), str(data))   # demo's flags
  spec = load_spec(str(data / "spec.yaml"))
  assert sorted(body["instances"][0]) == sorted(spec.feature_names)
  model = build_model(spec, ModelConfig(name="dnn", embedding_dim=4,
                                        backbone={"hidden_units": [8]}))
  base = str(tmp_path / "export")
  export_saved_model(model, spec, base)
  with ServerProcess(base, ["--file_system_poll_wait_seconds=0"], rest=True) as srv:
    code, out = _http(srv, path, body)
  assert code == 200, out
  assert set(out["predictions"][0]) == {"click_prob", "pay_prob"}
  assert all(0.0 < v < 1.0 for v in out["predictions"][0].values())
