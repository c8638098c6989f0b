"""Distributed training end to end, each in fresh processes (TF's device and cluster set-up
is per process): MirroredStrategy over 2 logical CPUs vs one device, two
MultiWorkerMirrored workers on 127.0.0.1, ParameterServerStrategy with an in-process
cluster and sharded embeddings, and SIGKILL-then-resume.

Tolerances: mirrored vs single device, per-step running loss rtol 1e-5 and final weights
atol 1e-5 (float32 all-reduce order); kill-and-resume vs uninterrupted, final weights
and metrics atol 1e-6 (the resumed run sees the same batches in the same order).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, experiment_yaml
from ssr_tf.features import load_spec
from ssr_tf.training import read_jsonl, resume_point

pytestmark = pytest.mark.slow

SMALL_MODEL = {"name": "ssr", "embedding_dim": 8,
               "backbone": {"mode": "dynamic", "num_layers": 1, "num_views": 4, "view_dim": 8,
                            "impl": "tf"}}


def env(**extra) -> dict:
  out = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
         "PYTHONDONTWRITEBYTECODE": "1"}
  out.pop("TF_CONFIG", None)
  out.update(extra)
  return out


def train_cmd(cfg, *sets) -> list[str]:
  cmd = [sys.executable, "-m", "ssr_tf", "train", "--config", str(cfg)]
  for s in sets:
    cmd += ["--set", s]
  return cmd


TWO_PS = {"strategy": "parameter_server", "local_workers": 2, "local_ps": 2,
          "min_shard_bytes": 1024}           # 1 KiB shards: most tables split over both ps


def train_ok(cfg) -> None:
  """`ssr_tf train --config cfg` in a fresh process; it must succeed."""
  proc = subprocess.run(train_cmd(cfg), capture_output=True, text=True, timeout=600, env=env(),
                        cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]


def last_json(text: str) -> dict:
  return json.loads([l for l in text.splitlines() if l.startswith("{")][-1])


def checkpoint_values(path: str) -> dict:
  """Weights and optimizer state of a checkpoint (metric accumulators left out: their
  per-replica storage differs between strategies)."""
  reader = tf.train.load_checkpoint(path)
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if k.startswith("model/") and "loss_trackers" not in k and "auc_metrics" not in k}


def assert_same_weights(a: str, b: str, atol: float) -> None:
  va, vb = checkpoint_values(a), checkpoint_values(b)
  assert va.keys() == vb.keys() and len(va) > 20
  for k in va:
    np.testing.assert_allclose(va[k], vb[k], atol=atol, rtol=0, err_msg=k)


def free_ports(n: int) -> list[int]:
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


# ---------------------------------------------------------------------------------------

MIRRORED_SCRIPT = r"""
import json, sys
import ssr_tf
import tensorflow as tf
from ssr_tf import data as data_lib, distribute, ops, task, training
from ssr_tf.config import load_config

class Losses(tf.keras.callbacks.Callback):
  def on_train_begin(self, logs=None):
    self.values = []
  def on_train_batch_end(self, batch, logs=None):
    self.values.append(float(logs["loss"]))

out = {}
for name in ("default", "mirrored"):
  cfg = load_config(sys.argv[1], [f"distribution.strategy={name}",
                                  "distribution.num_logical_cpu_devices=2",
                                  f"train.model_dir={sys.argv[2]}/{name}"])
  rec = Losses()
  state = training.train(cfg, overwrite=True, callbacks=[rec])
  out[name] = {"losses": rec.values, "checkpoint": state["checkpoint"],
               "distribution": state["distribution"]}

# The fused op (impl: auto) under the strategy: op types of one traced replica step.
strategy = distribute.make_strategy(cfg.distribution)
with strategy.scope():
  spec, model = task.build(cfg)
features = next(iter(data_lib.make_dataset(cfg.data.train, spec, 8, training=False)))[0]

@tf.function
def step(f):
  def replica(x):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(model(x, training=True)["click_prob"])
    return tape.gradient(loss, model.trainable_variables)
  return strategy.run(replica, args=(f,))

graph = step.get_concrete_function(features).graph.as_graph_def()
types = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
out["op_types"] = sorted(t for t in types if t.startswith("Ssr"))
out["fused_available"] = ops.is_available()
print("RESULT " + json.dumps(out))
"""


def test_mirrored_two_logical_cpus_matches_single_device(tmp_path, synth_dir):
  model = {**SMALL_MODEL, "backbone": {**SMALL_MODEL["backbone"], "impl": "auto"}}
  cfg = experiment_yaml(tmp_path, synth_dir, model=model, data={"valid": ""},
                        train={"epochs": 1, "steps_per_epoch": 6, "learning_rate": 0.01})
  proc = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(cfg), str(tmp_path)],
                        capture_output=True, text=True, timeout=600, env=env(), cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT ", 1)[1])
  single, mirrored = out["default"], out["mirrored"]
  assert mirrored["distribution"]["replicas"] == 2
  assert [d[-5:] for d in mirrored["distribution"]["devices"]] == ["CPU:0", "CPU:1"]
  assert mirrored["distribution"]["per_replica_batch"] == 128
  # Same global batches -> same loss trajectory and weights.
  assert len(single["losses"]) == len(mirrored["losses"]) == 6
  np.testing.assert_allclose(mirrored["losses"], single["losses"], rtol=1e-5)
  assert_same_weights(single["checkpoint"], mirrored["checkpoint"], atol=1e-5)
  # Embedding gradients crossed the all-reduce as IndexedSlices (no densified tables).
  sparse = mirrored["distribution"]["sparse_gradients"]
  spec = load_spec(str(synth_dir / "spec.yaml"))
  tables = [f for f in spec.features if not (f.type == "numeric" and f.transform == "dense")]
  after = {k: v for k, v in sparse.items() if k.endswith("@after")}
  assert len(after) == len(tables) and set(after.values()) == {"IndexedSlices"}
  if out["fused_available"]:
    assert {"SsrIcs", "SsrIcsGrad", "SsrBlockFusion", "SsrBlockFusionGrad"} <= set(out["op_types"])
  else:
    assert out["op_types"] == []          # impl=auto fell back to pure TF


def test_multi_worker_mirrored_two_processes(tmp_path, synth_dir):
  cfg = experiment_yaml(tmp_path, synth_dir, model=SMALL_MODEL, data={"valid": ""},
                        train={"epochs": 1, "steps_per_epoch": 5, "checkpoint_every_steps": 2},
                        distribution={"strategy": "multi_worker_mirrored"})
  cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
  procs = []
  for i in range(2):
    tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
    procs.append(subprocess.Popen(train_cmd(cfg), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env(TF_CONFIG=tf_config), cwd=REPO))
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=600))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  results = [last_json(out) for out, _ in outs]
  assert [r["task"] for r in results] == ["worker:0", "worker:1"]
  assert results[0]["optimizer_iterations"] == results[1]["optimizer_iterations"] == 5
  assert results[0]["weights_sha256"] == results[1]["weights_sha256"]   # bitwise equal
  state = json.loads((tmp_path / "model" / "train_state.json").read_text())
  assert state["distribution"]["replicas"] == 2 and state["distribution"]["global_batch"] == 256
  assert state["distribution"]["per_replica_batch"] == 128
  assert sorted(os.listdir(tmp_path / "model")) == sorted(
      ["callbacks.json", "ckpt", "config.yaml", "feature_rows.json", "history.jsonl", "logs",
       "progress.jsonl",
       "record_counts.json", "train_state.json"])      # no worker temp dirs, no backup left


def test_parameter_server_shards_embedding_tables(tmp_path, synth_dir):
  train_ok(experiment_yaml(tmp_path, synth_dir, model=SMALL_MODEL,
                           train={"epochs": 1, "steps_per_epoch": 6}, distribution=TWO_PS))
  state = json.loads((tmp_path / "model" / "train_state.json").read_text())
  dist = state["distribution"]
  assert dist["workers"] == 2 and dist["ps"] == 2 and state["optimizer_iterations"] == 6
  assert 0.0 < state["history"]["val_click_auc"][0] <= 1.0      # chief-side validation ran
  spec = load_spec(str(synth_dir / "spec.yaml"))
  shards = dist["embedding_shards"]
  split = 0
  for f in spec.features:
    if f.type == "numeric" and f.transform == "dense":
      assert shards[f.name]["shards"] == 1                     # not an embedding table
      continue
    rows = f.table_size()
    # 8 floats = 32 bytes a row: a 1 KiB shard holds 32 rows; at most one shard per ps.
    want = 1 if rows <= 32 else 2
    assert shards[f.name]["shards"] == want, (f.name, rows, shards[f.name])
    assert sum(shards[f.name]["rows"]) == rows
    if want == 2:
      split += 1
      assert {d.split("/")[1] + d.split("/")[3] for d in shards[f.name]["devices"]} == {
          "job:pstask:0", "job:pstask:1"}
  assert split >= 4
  assert set(dist["sparse_gradients"].values()) == {"IndexedSlices"}


def test_kill_and_resume(tmp_path, synth_dir):
  """SIGKILL after a backup, rerun the same command: resumes at the backed-up step with
  the same optimizer state and input position, and ends where an uninterrupted run ends."""
  epochs, steps = 2, 6
  cfg = experiment_yaml(tmp_path, synth_dir, model=SMALL_MODEL,
                        train={"epochs": epochs, "steps_per_epoch": steps,
                               "checkpoint_every_steps": 2, "early_stopping_patience": 0})
  killed_dir, ref_dir = tmp_path / "killed", tmp_path / "ref"
  ref = subprocess.Popen(train_cmd(cfg, f"train.model_dir={ref_dir}"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO)
  victim = subprocess.Popen(train_cmd(cfg, f"train.model_dir={killed_dir}"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(),
                            cwd=REPO)
  progress = killed_dir / "progress.jsonl"
  deadline = time.time() + 500
  while time.time() < deadline and victim.poll() is None:
    if any(e["event"] == "backup" for e in read_jsonl(progress)):
      victim.send_signal(signal.SIGKILL)
      break
    time.sleep(0.01)
  victim.wait(timeout=60)
  assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed"
  assert not (killed_dir / "train_state.json").exists()
  saved = resume_point(str(killed_dir / "backup"), steps)
  resume_step = saved[0] * steps + saved[1]
  assert 0 < resume_step < epochs * steps

  again = subprocess.run(train_cmd(cfg, f"train.model_dir={killed_dir}"), capture_output=True,
                         text=True, timeout=600, env=env(), cwd=REPO)
  assert again.returncode == 0, again.stderr[-3000:]
  ref_out, ref_err = ref.communicate(timeout=600)
  assert ref.returncode == 0, ref_err[-3000:]

  starts = [e for e in read_jsonl(progress) if e["event"] == "start"]
  assert len(starts) == 2 and starts[0]["resume_global_step"] == 0
  start = starts[1]
  # Resumed at the backed-up step, with the optimizer's step counter restored ...
  assert start["resume_global_step"] == resume_step
  assert start["optimizer_iterations"] == resume_step
  # ... and the input stream positioned after exactly the records that step had trained
  # on (bound: 0 records re-trained or skipped; test_distributed.py checks the batches).
  assert start["records_skipped"] == resume_step * 256
  ends = [e for e in read_jsonl(progress) if e["event"] == "end"]
  assert ends[-1]["optimizer_iterations"] == epochs * steps       # no step run twice

  resumed = json.loads((killed_dir / "train_state.json").read_text())
  reference = json.loads((ref_dir / "train_state.json").read_text())
  assert resumed["resumed_from_step"] == resume_step and resumed["epochs_run"] == epochs
  for key in ("val_click_auc", "val_loss"):
    np.testing.assert_allclose(resumed["history"][key], reference["history"][key], atol=1e-6)
  assert_same_weights(resumed["checkpoint"], reference["checkpoint"], atol=1e-6)
  assert not (killed_dir / "backup").exists()          # removed once completed


def test_parameter_server_run_warm_starts_from_a_single_device_run(tmp_path, synth_dir):
  """Embedding tables sharded over two parameter servers take their values from an
  unsharded checkpoint (a learning rate of 1e-12 keeps them where they were loaded)."""
  first = tmp_path / "day1"
  first.mkdir()
  train_ok(experiment_yaml(first, synth_dir, model=SMALL_MODEL,
                           train={"epochs": 1, "steps_per_epoch": 4}))
  second = tmp_path / "day2"
  second.mkdir()
  train_ok(experiment_yaml(second, synth_dir, model=SMALL_MODEL,
                           train={"epochs": 1, "steps_per_epoch": 2, "learning_rate": 1e-12,
                                  "warm_start_from": str(first / "model")},
                           distribution=TWO_PS))
  state = json.loads((second / "model" / "train_state.json").read_text())
  assert state["warm_started_from"].startswith(str(first / "model" / "ckpt"))
  assert any(s["shards"] == 2 for s in state["distribution"]["embedding_shards"].values())
  before = checkpoint_values(state["warm_started_from"])
  after = checkpoint_values(state["checkpoint"])
  weights = [k for k in before if "/optimizer/" not in k]
  assert len(weights) > 20
  for k in weights:
    np.testing.assert_allclose(after[k], before[k], atol=1e-9, err_msg=k)
