"""StepTensorBoard writes what stock TensorBoard writes, without per-batch work between;
the callbacks of a training run (best checkpoint, resumable early stopping, run log)."""
import json
import math
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from ssr_tf.bench import hooks
from ssr_tf.callbacks import (BestCheckpoint, ResumableEarlyStopping, RunLog, StepTensorBoard,
                              read_jsonl)

CONFIGS = pathlib.Path(__file__).parents[1] / "configs"


class CountSteps(tf.keras.callbacks.Callback):
  """Any callback with batch hooks makes Keras call every callback's batch hooks."""

  def __init__(self):
    super().__init__()
    self.steps = 0

  def on_train_batch_end(self, batch, logs=None):
    self.steps += 1


def _events(log_dir):
  """({(tag, step): value} of batch_* scalars, number of graph events) in log_dir/train."""
  scalars, graphs = {}, 0
  for path in tf.io.gfile.glob(f"{log_dir}/train/events.out.tfevents.*"):
    for raw in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(raw.numpy())
      graphs += bool(event.graph_def)
      for v in event.summary.value:
        if v.tag.startswith("batch_"):
          scalars[(v.tag, event.step)] = float(tf.make_ndarray(v.tensor))
  return scalars, graphs


def _fit(callback_cls, log_dir):
  tf.keras.utils.set_random_seed(0)
  model = tf.keras.Sequential([tf.keras.layers.Dense(4, activation="relu"),
                               tf.keras.layers.Dense(1)])
  model.compile("adam", "mse", metrics=["mae"])
  x = np.random.default_rng(0).normal(size=(56, 3)).astype("float32")
  counter = CountSteps()
  tb = callback_cls(str(log_dir), update_freq=3)
  model.fit(x, x[:, :1], batch_size=8, epochs=2, shuffle=False, verbose=0,
            callbacks=[counter, tb])
  assert counter.steps == 14
  return _events(log_dir)


def test_same_scalars_and_graph_as_stock_tensorboard(tmp_path):
  stock, stock_graphs = _fit(tf.keras.callbacks.TensorBoard, tmp_path / "stock")
  ours, our_graphs = _fit(StepTensorBoard, tmp_path / "ours")
  assert sorted({step for _, step in stock}) == [3, 6, 9, 12]
  assert ours.keys() == stock.keys()
  np.testing.assert_allclose([ours[k] for k in stock], list(stock.values()), rtol=1e-5)
  assert stock_graphs == our_graphs == 1


def test_skipped_steps_do_no_summary_work(tmp_path, monkeypatch):
  calls = []
  original = tf.keras.callbacks.TensorBoard.on_train_batch_end
  monkeypatch.setattr(tf.keras.callbacks.TensorBoard, "on_train_batch_end",
                      lambda self, batch, logs=None: (calls.append(batch),
                                                      original(self, batch, logs)))
  _fit(StepTensorBoard, tmp_path)
  assert len(calls) == 4          # the steps 3, 6, 9 and 12 of 14


def test_bench_hooks_prints_both_hooks(synth_dir, capsys):
  config = CONFIGS / "demo_ssr_d.yaml"
  assert hooks.main(["--config", str(config), "--data", str(synth_dir), "--steps", "6",
                     "--update_freq", "3"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["logged_metrics"] == 5 and out["batch_size"] == 256 and out["train_step_ms"] > 0
  for name in ("tensorboard_stock", "tensorboard_step"):
    assert set(out[name]) == {"first_batch_ms", "ms_per_batch", "share_of_step"}
    assert out[name]["ms_per_batch"] > 0


@pytest.mark.slow
def test_bench_hooks_times_whole_train_runs(synth_dir, capsys):
  config = CONFIGS / "demo_dnn.yaml"
  assert hooks.main(["--config", str(config), "--data", str(synth_dir), "--steps", "4",
                     "--train_steps", "3", "--repeats", "1"]) == 0
  out = json.loads(capsys.readouterr().out)          # one JSON document: train output kept off
  runs = out["train_runs"]
  assert runs["steps"] == 3 and runs["stock_over_step"] > 0
  for name in ("tensorboard_stock", "tensorboard_step"):
    assert len(runs[name]["runs_s"]) == 1 and runs[name]["median_s"] > 0


def test_bench_hooks_rejects_bad_counts(capsys):
  for argv in (["--steps", "1"], ["--update_freq", "0"], ["--repeats", "0"]):
    with pytest.raises(SystemExit) as exit_info:
      hooks.main(argv)
    assert exit_info.value.code == 2
    assert "need --steps >= 2" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# The callbacks of a training run, driven by hand.


def test_best_checkpoint_saves_on_strict_gains_only():
  saved = []
  best = BestCheckpoint(saved.append, "val_click_auc")
  for epoch, auc in enumerate([0.60, 0.62, 0.62, 0.61, 0.65]):
    best.on_epoch_end(epoch, {"val_click_auc": auc})
  assert saved == [1, 2, 5] and best.best == 0.65 and best.saves == 3
  every = BestCheckpoint(saved.append, "none")          # no validation: every epoch
  every.on_epoch_end(0, {"loss": 1.0})
  assert saved[-1] == 1 and every.best == -math.inf


def _early(aucs, state=None, first_epoch=0):
  """Epochs run by ResumableEarlyStopping (patience 2) over `aucs` from `first_epoch`."""
  early = ResumableEarlyStopping(state, monitor="val_click_auc", mode="max", patience=2)
  early.set_model(tf.keras.Sequential())
  early.on_train_begin()
  for epoch in range(first_epoch, len(aucs)):
    early.on_epoch_end(epoch, {"val_click_auc": aucs[epoch]})
    if early.model.stop_training:
      return epoch, early
  return None, early


def test_early_stopping_keeps_its_patience_across_a_restart():
  aucs = [0.60, 0.63, 0.62, 0.62, 0.70]
  stopped, _ = _early(aucs)
  assert stopped == 3                        # two epochs without a gain after epoch 1
  _, first = _early(aucs[:3])                # killed after epoch 2 ...
  state = json.loads(json.dumps(first.state()))
  assert state == {"wait": 1, "best": 0.63, "best_epoch": 1}
  assert _early(aucs, state, first_epoch=3)[0] == 3    # ... and restarted: the same stop


def test_run_log_writes_history_and_callback_state(tmp_path):
  log = RunLog(tmp_path, {"resume_global_step": 0}, write=True, state_fn=lambda: {"best": 1})
  log.on_epoch_end(0, {"loss": 0.5})
  log.on_epoch_end(1, {"loss": 0.25})
  assert read_jsonl(tmp_path / "history.jsonl") == [{"epoch": 0, "loss": 0.5},
                                                    {"epoch": 1, "loss": 0.25}]
  assert json.loads((tmp_path / "callbacks.json").read_text()) == {"0": {"best": 1},
                                                                   "1": {"best": 1}}
  log.backup(40, 0.1234)
  assert read_jsonl(tmp_path / "progress.jsonl")[0]["seconds"] == 0.123
  with open(tmp_path / "progress.jsonl", "a") as f:
    f.write('{"event": "torn')                              # a kill mid-line
  assert len(read_jsonl(tmp_path / "progress.jsonl")) == 1
  RunLog(tmp_path / "absent", {}, write=False, state_fn=dict).on_epoch_end(0, {"loss": 1.0})
  assert not (tmp_path / "absent").exists()               # not the chief: writes nothing
