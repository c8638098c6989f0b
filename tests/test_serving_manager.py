"""Version manager + core in-process: failed loads, warm-up replay, draining an old version."""
import logging
import os
import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from ssr_tf.serving.core import ServingCore
from ssr_tf.serving.manager import ModelManager
from ssr_tf.serving.servable import WARMUP_FILE, Servable
from ssr_tf.serving.tensors import ServingError
from ssr_tf.serving.toy_model import build_toy_model, toy_examples


def _core(base):
  manager = ModelManager("ssr", base, lambda v, p: Servable("ssr", v, p, 1, 1),
                         poll_seconds=0, unload_timeout_s=30)
  core = ServingCore(manager, batcher=None, max_request_rows=100)
  manager.warmup = core.warmup
  return manager, core


def _predict(core, n=3, version=None):
  req = predict_pb2.PredictRequest()
  req.model_spec.name = "ssr"
  if version is not None:
    req.model_spec.version.value = version
  req.inputs["examples"].CopyFrom(tf.make_tensor_proto(toy_examples(n), dtype=tf.string))
  return core.predict(req)


def _write_warmup(version_dir, requests):
  os.makedirs(os.path.join(version_dir, "assets.extra"), exist_ok=True)
  with tf.io.TFRecordWriter(os.path.join(version_dir, WARMUP_FILE)) as w:
    for req in requests:
      w.write(prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=req)).SerializeToString())


def test_failed_load_keeps_serving_and_warmup_replay(tmp_path, caplog):
  base = str(tmp_path)
  build_toy_model(base, 1, seed=0)
  manager, core = _core(base)
  manager.start()
  assert _predict(core).model_spec.version.value == 1

  os.makedirs(os.path.join(base, "2"))
  with open(os.path.join(base, "2", "saved_model.pb"), "wb") as f:
    f.write(b"not a SavedModel")
  manager.poll_once()
  st = {s.version: s for s in manager.status("ssr")}
  assert st[2].state == "END" and st[2].error_code != grpc.StatusCode.OK and st[2].error_message
  assert st[1].state == "AVAILABLE" and manager.current_version == 1
  assert _predict(core).model_spec.version.value == 1

  # version 3 ships TF Serving's warm-up file: it is replayed before the swap
  staging = str(tmp_path / "staging")
  v3 = build_toy_model(staging, 3, seed=1)
  good = predict_pb2.PredictRequest()
  good.model_spec.name = "ssr"
  good.inputs["examples"].CopyFrom(tf.make_tensor_proto(toy_examples(4), dtype=tf.string))
  _write_warmup(v3, [good, good])
  os.rename(v3, os.path.join(base, "3"))
  with caplog.at_level(logging.INFO, logger="ssr_tf.serving"):
    manager.poll_once()
  assert "replayed 2 records" in caplog.text
  assert manager.current_version == 3

  # a warm-up record the model rejects fails the load (as in TF Serving)
  v4 = build_toy_model(staging, 4, seed=2)
  bad = predict_pb2.PredictRequest()
  bad.CopyFrom(good)
  bad.inputs["examples"].CopyFrom(tf.make_tensor_proto([1, 2], dtype=tf.int64))
  _write_warmup(v4, [bad])
  os.rename(v4, os.path.join(base, "4"))
  manager.poll_once()
  assert manager.current_version == 3
  assert {s.version: s.state for s in manager.status("ssr")}[4] == "END"
  with pytest.raises(ServingError) as info:
    _predict(core, version=2)
  assert info.value.code == grpc.StatusCode.NOT_FOUND
  manager.stop()


def test_old_version_unloads_after_its_last_request(tmp_path):
  base = str(tmp_path)
  build_toy_model(base, 1, seed=0)
  manager, core = _core(base)
  manager.start()
  held = manager.acquire("ssr")                      # an in-flight request on version 1
  staging = str(tmp_path / "staging")
  os.rename(build_toy_model(staging, 2, seed=1), os.path.join(base, "2"))
  poll = threading.Thread(target=manager.poll_once)
  poll.start()
  for _ in range(600):
    if manager.current_version == 2:
      break
    poll.join(0.05)
  assert manager.current_version == 2
  assert {s.version: s.state for s in manager.status("ssr")}[1] == "UNLOADING"
  # the held version still answers; new requests already go to version 2
  sig = held.signature("serving_default")
  out = held.run(sig, {"examples": np.array(toy_examples(2), dtype=object)})
  assert out["click_prob"].shape == (2,)
  assert _predict(core).model_spec.version.value == 2
  manager.release(held)
  poll.join(30)
  assert not poll.is_alive()
  assert [(s.version, s.state) for s in manager.status("ssr")] == [(2, "AVAILABLE"), (1, "END")]
  manager.stop()
