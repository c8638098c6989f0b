"""End to end on a real export: synth -> train -> `ssr_tf export` -> `ssr_tf serve` -> Predict.

Also checks what stock TF Serving needs from the default export: the versioned layout,
the two signatures, and only ops TensorFlow itself registers (no custom-op library).
"""
import glob
import os

import numpy as np
import pytest
import tensorflow as tf
import yaml
from tensorflow_serving.apis import prediction_log_pb2

from conftest import custom_ops, grpc_predict, saved_model_ops
from ssr_tf import cli
from ssr_tf.config import load_config
from ssr_tf.serving import client as client_lib
from ssr_tf.serving.process import ServerProcess
from ssr_tf.serving.servable import WARMUP_FILE

pytestmark = pytest.mark.slow


def test_real_export_served_end_to_end(tmp_path, make_config, capsys):
  cfg_path = make_config()
  assert cli.main(["train", "--config", str(cfg_path)]) == 0
  base = str(tmp_path / "export")
  assert cli.main(["export", "--config", str(cfg_path), "--output", base]) == 0
  export_dir = os.path.join(base, "1")
  assert os.path.isfile(os.path.join(export_dir, "saved_model.pb"))
  custom = custom_ops(export_dir)
  assert not custom, f"default export uses ops stock TF Serving lacks: {custom}"

  cfg = load_config(str(cfg_path))
  shard = sorted(glob.glob(cfg.data.test))[0]
  records = [r.numpy() for r in tf.data.TFRecordDataset(shard).take(128)]
  # TF Serving's warm-up file: one serving_default request per batch size, real records
  warm = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in
          tf.data.TFRecordDataset(os.path.join(export_dir, WARMUP_FILE))]
  assert [len(w.predict_log.request.inputs["examples"].string_val) for w in warm] == [1, 32, 128]
  assert {w.predict_log.request.model_spec.signature_name for w in warm} == {"serving_default"}
  assert list(warm[2].predict_log.request.inputs["examples"].string_val) == records
  want = tf.saved_model.load(export_dir).signatures["serving_default"](
      examples=tf.constant(records))
  with ServerProcess(base, ["--file_system_poll_wait_seconds=0"]) as srv:
    resp = grpc_predict(srv.target, records)
    assert "replayed 3 records from assets.extra/tf_serving_warmup_requests" in srv.log()
    for k in ("click_prob", "pay_prob"):
      np.testing.assert_allclose(tf.make_ndarray(resp.outputs[k]), want[k].numpy(),
                                 rtol=1e-5, atol=1e-6)
    with client_lib.RankingClient(srv.target) as c:
      sigs = c.signatures()
      assert set(sigs) == {"serving_default", "predict_raw"}
      with open(cfg.data.spec) as f:
        spec_features = {feat["name"] for feat in yaml.safe_load(f)["features"]}
      assert set(sigs["predict_raw"].inputs) == spec_features
      # rows typed by predict_raw metadata score like the original tf.Examples
      first = tf.train.Example.FromString(records[0])
      row = {}
      for name, feat in first.features.feature.items():
        kind = feat.WhichOneof("kind")
        vals = list(getattr(feat, kind).value) if kind else []
        if kind == "bytes_list":
          vals = [v.decode() for v in vals]
        ft = c.feature_types().get(name)
        row[name] = vals if ft is not None and ft.multi else (vals[0] if vals else None)
      got = c.score_rows([row])
      np.testing.assert_allclose(got["click_prob"][0], want["click_prob"].numpy()[0], rtol=1e-5)
    capsys.readouterr()
    assert client_lib.main(["--server", srv.target, "--input", shard, "--batch_size", "500"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 + sum(1 for _ in tf.data.TFRecordDataset(shard))
    np.testing.assert_allclose(float(lines[1].split("\t")[0]), want["click_prob"].numpy()[0],
                               atol=2e-6)


def test_fused_export_loads_in_our_server_engine(tmp_path, make_config):
  """`ssr_tf export --fused` keeps the custom ops; our server engine registers them and
  scores like the pure-TF export (stock TF Serving could not load this one)."""
  from ssr_tf import ops
  from ssr_tf.serving.servable import Servable
  if not ops.is_available():
    pytest.skip(f"custom-op library not built: {ops.load_error()}")
  cfg_path = make_config()
  assert cli.main(["train", "--config", str(cfg_path)]) == 0
  for name, flags in (("plain", []), ("fused", ["--fused"])):
    assert cli.main(["export", "--config", str(cfg_path), "--output",
                     str(tmp_path / name)] + flags) == 0
  assert {"SsrIcs", "SsrBlockFusion"} & saved_model_ops(str(tmp_path / "fused" / "1"))
  cfg = load_config(str(cfg_path))
  shard = sorted(glob.glob(cfg.data.test))[0]
  records = np.array([r.numpy() for r in tf.data.TFRecordDataset(shard).take(64)], dtype=object)
  out = {}
  for name in ("plain", "fused"):
    servable = Servable("ssr", 1, str(tmp_path / name / "1"), intra_op_threads=1)
    sig = servable.signatures["serving_default"]
    out[name] = servable.run(sig, {"examples": records}, ["click_prob"])
  np.testing.assert_allclose(out["fused"]["click_prob"], out["plain"]["click_prob"],
                             rtol=1e-4, atol=1e-6)
