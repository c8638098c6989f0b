"""Hot reload under concurrent load, and SIGTERM draining, of `ssr_tf serve` (subprocess)."""
import os
import threading
import time

import ssr_tf  # noqa: F401
import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from ssr_tf.serving.client import RankingClient
from ssr_tf.serving.process import ServerProcess
from ssr_tf.serving.toy_model import build_toy_model, toy_examples

pytestmark = pytest.mark.slow


def _request(examples) -> predict_pb2.PredictRequest:
  req = predict_pb2.PredictRequest()
  req.model_spec.name = "ssr"
  req.inputs["examples"].CopyFrom(tf.make_tensor_proto(examples, dtype=tf.string))
  return req


def _reference(path, examples):
  fn = tf.saved_model.load(path).signatures["serving_default"]
  return fn(examples=tf.constant(examples))["click_prob"].numpy()


def test_hot_reload_under_load_loses_no_request(tmp_path):
  base, staging = str(tmp_path / "models"), str(tmp_path / "staging")
  build_toy_model(base, version=1, seed=0)
  build_toy_model(staging, version=2, seed=1)        # published later by a rename
  batches = [toy_examples(16 + 8 * i, seed=i) for i in range(4)]
  ref = {v: [_reference(os.path.join(d, str(v)), b) for b in batches]
         for v, d in ((1, base), (2, staging))}
  srv = ServerProcess(base, ["--file_system_poll_wait_seconds=0.2", "--num_batch_threads=2"])
  with srv:
    channel = grpc.insecure_channel(srv.target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    stop = threading.Event()
    results: list[list] = [[] for _ in batches]      # per thread: (version, click_prob)
    errors: list[str] = []

    def load(i):
      req = _request(batches[i])
      for _ in range(5000):                           # bounded even if stop never comes
        if stop.is_set():
          return
        try:
          resp = stub.Predict(req, timeout=30)
          results[i].append((resp.model_spec.version.value,
                             tf.make_ndarray(resp.outputs["click_prob"])))
        except grpc.RpcError as e:
          errors.append(f"{e.code().name}: {e.details()}")

    threads = [threading.Thread(target=load, args=(i,)) for i in range(len(batches))]
    for t in threads:
      t.start()
    time.sleep(1.0)
    os.rename(os.path.join(staging, "2"), os.path.join(base, "2"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(
        r and r[-1][0] == 2 for r in results):
      time.sleep(0.1)
    time.sleep(0.5)
    stop.set()
    for t in threads:
      t.join(timeout=60)
    channel.close()
    with RankingClient(srv.target) as c:
      for _ in range(100):                            # the old version unloads once idle
        if c.status() == [(2, "AVAILABLE"), (1, "END")]:
          break
        time.sleep(0.1)
      assert c.status() == [(2, "AVAILABLE"), (1, "END")]
  assert not errors, errors[:5]
  for i, res in enumerate(results):
    versions = [v for v, _ in res]
    assert 1 in versions and versions[-1] == 2, (i, versions[:3], versions[-3:])
    first2 = versions.index(2)
    assert all(v == 2 for v in versions[first2:]), "a thread went back to version 1"
    for v, got in res:
      np.testing.assert_allclose(got, ref[v][i], rtol=1e-6)
  log = srv.log()
  assert "Successfully loaded servable version {name: ssr version: 2}" in log
  assert "Done unloading servable version {name: ssr version: 1}" in log
  assert srv.returncode == 0


def test_sigterm_drains_in_flight_requests(tmp_path):
  base = str(tmp_path)
  build_toy_model(base, version=1, seed=0)
  exs = [toy_examples(10, seed=i) for i in range(6)]
  want = [_reference(os.path.join(base, "1"), e) for e in exs]
  # A long batch timeout keeps the requests queued in the server when SIGTERM arrives.
  srv = ServerProcess(base, ["--batch_timeout_micros=2000000", "--max_batch_size=100000",
                             "--file_system_poll_wait_seconds=0"])
  srv.start()
  srv.wait_available()
  channel = grpc.insecure_channel(srv.target)
  stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
  t0 = time.monotonic()
  futures = [stub.Predict.future(_request(e), timeout=30) for e in exs]
  time.sleep(0.6)
  srv.terminate()
  time.sleep(0.4)
  assert not any(f.done() for f in futures), "requests finished before SIGTERM: test too slow"
  with pytest.raises(grpc.RpcError) as late:       # new calls are refused while draining
    stub.Predict(_request(exs[0]), timeout=10)
  assert late.value.code() == grpc.StatusCode.UNAVAILABLE
  for f, w in zip(futures, want):
    np.testing.assert_allclose(tf.make_ndarray(f.result().outputs["click_prob"]), w, rtol=1e-6)
  assert time.monotonic() - t0 >= 1.9                  # they waited for the batch, not killed
  assert srv.proc.wait(timeout=60) == 0
  channel.close()
  srv.stop()
  log = srv.log()
  assert "Received SIGTERM" in log and "Server stopped" in log
