"""Shared fixtures: a tiny synthetic data set and an experiment config pointing at it."""
import os
import pathlib

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

import ssr_tf  # noqa: E402,F401

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "public"


_WRITTEN: dict[str, pathlib.Path] = {}   # data sets written once per test run


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> pathlib.Path:
  """3,000 synthetic rows (train/valid/test shards, spec, vocab), written once per test run."""
  if "synth" not in _WRITTEN:
    from ssr_tf import synth
    out = tmp_path_factory.mktemp("synth")
    synth.write(synth.SynthConfig(rows=3000, seed=3, shards=2, noise_fields=3), str(out))
    _WRITTEN["synth"] = out
  return _WRITTEN["synth"]


def experiment_yaml(tmp_path: pathlib.Path, data_dir: pathlib.Path, **sections) -> pathlib.Path:
  """Writes a small experiment config over `data_dir`; `sections` override top-level keys."""
  import yaml
  cfg = {
      "data": {"spec": str(data_dir / "spec.yaml"), "train": str(data_dir / "train/*"),
               "valid": str(data_dir / "valid/*"), "test": str(data_dir / "test/*"),
               "batch_size": 256, "deterministic": True},
      "model": {"name": "ssr", "embedding_dim": 8,
                "backbone": {"mode": "dynamic", "num_layers": 2, "num_views": 4,
                             "view_dim": 8, "impl": "tf"}},
      "train": {"model_dir": str(tmp_path / "model"), "epochs": 1, "verbose": 0},
  }
  for key, value in sections.items():
    cfg[key] = {**cfg.get(key, {}), **value}
  path = tmp_path / "experiment.yaml"
  path.write_text(yaml.safe_dump(cfg))
  return path


@pytest.fixture
def make_config(tmp_path, synth_dir):
  def make(**sections):
    return experiment_yaml(tmp_path, synth_dir, **sections)
  return make


# Loads an export in a fresh interpreter that never imports ssr_tf (as TF Serving would)
# and prints serving_default's outputs on the first N records of a shard.
RELOAD = r"""
import json, sys
import tensorflow as tf
assert "ssr_tf" not in sys.modules
m = tf.saved_model.load(sys.argv[1])
recs = [r.numpy() for r in tf.data.TFRecordDataset(sys.argv[2]).take(int(sys.argv[3]))]
out = m.signatures["serving_default"](examples=tf.constant(recs))
assert "ssr_tf" not in sys.modules
print(json.dumps({k: v.numpy().tolist() for k, v in out.items()}))
"""


def assert_export_matches(export_dir, shard: str, keras_model, rows: int,
                          keys=("click_prob", "pay_prob")) -> dict:
  """Scores `rows` records of `shard` with the export in a subprocess without ssr_tf and
  with `keras_model` here; asserts they agree to 1e-5 and returns the served outputs."""
  import json
  import subprocess
  import sys

  import numpy as np
  import tensorflow as tf

  from ssr_tf import data as data_lib
  proc = subprocess.run([sys.executable, "-c", RELOAD, str(export_dir), shard, str(rows)],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  served = json.loads(proc.stdout.strip().splitlines()[-1])
  recs = tf.constant([r.numpy() for r in tf.data.TFRecordDataset(shard).take(rows)])
  want = keras_model(data_lib.parse_features(recs, keras_model.spec), training=False)
  for key in keys:
    np.testing.assert_allclose(served[key], want[key].numpy(), atol=1e-5)
  return served


def grpc_predict(target: str, records: list[bytes], model: str = "ssr"):
  """serving_default Predict of serialized `records` against a server at `target`."""
  import grpc
  import tensorflow as tf
  from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
  channel = grpc.insecure_channel(target)
  req = predict_pb2.PredictRequest()
  req.model_spec.name = model
  req.inputs["examples"].CopyFrom(tf.make_tensor_proto(records, dtype=tf.string))
  try:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(req, timeout=60)
  finally:
    channel.close()


def saved_model_ops(export_dir: str) -> set[str]:
  """Op types in an export's graphs and functions (calls of library functions excluded)."""
  from tensorflow.core.protobuf import saved_model_pb2
  sm = saved_model_pb2.SavedModel()
  with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
    sm.ParseFromString(f.read())
  ops = set()
  for mg in sm.meta_graphs:
    ops.update(n.op for n in mg.graph_def.node)
    for fn in mg.graph_def.library.function:
      ops.update(n.op for n in fn.node_def)
    ops -= {fn.signature.name for fn in mg.graph_def.library.function}
  return ops


def custom_ops(export_dir: str) -> list[str]:
  """The export's op types that stock TensorFlow (hence TF Serving) lacks."""
  import tensorflow as tf
  return sorted(op for op in saved_model_ops(export_dir) if not hasattr(tf.raw_ops, op))
