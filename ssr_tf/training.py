"""`ssr_tf train`: Keras training with resume, early stopping and TensorBoard.

Checkpoints: ``model_dir/backup`` (BackupAndRestore, every `checkpoint_every_steps` steps
and each epoch, so a killed run restarted by the same command resumes at the same step
with the same optimizer state) and ``model_dir/ckpt`` (the best weights by validation
click AUC, what evaluate and export read).
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import time

import tensorflow as tf

from ssr_tf import data as data_lib
from ssr_tf import task
from ssr_tf.config import ExperimentConfig, save_config
from ssr_tf.errors import DataError
from ssr_tf.models.ranker import backbone_flops, backbone_params


def make_optimizer(cfg: ExperimentConfig) -> tf.keras.optimizers.Optimizer:
  if cfg.train.optimizer == "adagrad":
    return tf.keras.optimizers.Adagrad(cfg.train.learning_rate)
  return tf.keras.optimizers.Adam(cfg.train.learning_rate)


class BestCheckpoint(tf.keras.callbacks.Callback):
  """Saves the weights to model_dir/ckpt whenever `monitor` improves (or every epoch when
  there is no validation data)."""

  def __init__(self, manager: tf.train.CheckpointManager, monitor: str = "val_click_auc"):
    super().__init__()
    self.manager = manager
    self.monitor = monitor
    self.best = -math.inf

  def on_epoch_end(self, epoch, logs=None):
    value = (logs or {}).get(self.monitor)
    if value is None or value > self.best:
      self.best = value if value is not None else self.best
      self.manager.save(checkpoint_number=epoch + 1)


def datasets(cfg: ExperimentConfig, spec, input_context=None):
  d = cfg.data
  common = dict(shuffle_buffer=d.shuffle_buffer, seed=cfg.train.seed,
                deterministic=d.deterministic, compression=d.compression,
                cycle_length=d.cycle_length, input_context=input_context)
  train_ds = data_lib.make_dataset(d.train, spec, d.batch_size, training=True,
                                   key="data.train", **common)
  valid_ds = None
  if d.valid:
    valid_ds = data_lib.make_dataset(d.valid, spec, d.batch_size, training=False,
                                     key="data.valid", **common)
  return train_ds, valid_ds


def describe(model, cfg: ExperimentConfig) -> dict:
  return {"model": cfg.model.name, "backbone_params": backbone_params(model),
          "backbone_flops_per_example": backbone_flops(model),
          "num_fields": len(model.spec.features), "embedding_dim": cfg.model.embedding_dim}


def train(cfg: ExperimentConfig, overwrite: bool = False) -> dict:
  """Trains (or resumes) the experiment; returns the history and model description."""
  tf.keras.utils.set_random_seed(cfg.train.seed)
  model_dir = pathlib.Path(cfg.train.model_dir)
  state_file = model_dir / "train_state.json"
  if state_file.exists() and not overwrite:
    state = json.loads(state_file.read_text())
    if state.get("completed"):
      print(f"{model_dir}: training already completed ({state['epochs_run']} epochs); "
            "pass --overwrite to train again")
      return state
  model_dir.mkdir(parents=True, exist_ok=True)
  save_config(cfg, str(model_dir / "config.yaml"))
  spec, model = task.build(cfg)
  info = describe(model, cfg)
  print(json.dumps({"backbone": info}))
  train_ds, valid_ds = datasets(cfg, spec)
  optimizer = make_optimizer(cfg)
  model.compile(optimizer=optimizer)
  manager = task.checkpoint_manager(model, str(model_dir))
  callbacks = [
      tf.keras.callbacks.BackupAndRestore(str(model_dir / "backup"),
                                          save_freq=cfg.train.checkpoint_every_steps,
                                          delete_checkpoint=True),
      BestCheckpoint(manager, "val_click_auc" if valid_ds is not None else "none"),
      tf.keras.callbacks.TensorBoard(str(model_dir / "logs"), update_freq=100),
  ]
  if valid_ds is not None and cfg.train.early_stopping_patience > 0:
    callbacks.append(tf.keras.callbacks.EarlyStopping(
        monitor="val_click_auc", mode="max", patience=cfg.train.early_stopping_patience))
  start = time.time()

  def fit():
    return model.fit(train_ds, validation_data=valid_ds, epochs=cfg.train.epochs,
                     steps_per_epoch=cfg.train.steps_per_epoch or None,
                     callbacks=callbacks, verbose=cfg.train.verbose)

  try:
    history = task.data_errors(fit)
  except DataError as e:
    bad = None
    for pattern, key in ((cfg.data.train, "data.train"), (cfg.data.valid, "data.valid")):
      if pattern and bad is None:
        bad = data_lib.find_corrupt_shard(data_lib.list_files(pattern, key),
                                          cfg.data.compression)
    raise DataError(f"{bad}: {e}" if bad else str(e)) from None
  if not manager.latest_checkpoint:
    manager.save()
  hist = {k: [float(x) for x in v] for k, v in history.history.items()}
  state = {"completed": True, "epochs_run": len(next(iter(hist.values()), [])),
           "seconds": round(time.time() - start, 1), "history": hist, "backbone": info,
           "checkpoint": manager.latest_checkpoint}
  state_file.write_text(json.dumps(state, indent=2))
  return state


def main(argv: list[str], prog: str = "ssr_tf train") -> int:
  p = task.config_parser(prog, "Train a ranking model from an experiment config.")
  p.add_argument("--overwrite", action="store_true",
                 help="train again even if model_dir holds a completed run")
  args = p.parse_args(argv)
  cfg = task.config_from_args(args)
  state = train(cfg, overwrite=args.overwrite)
  last = {k: v[-1] for k, v in state.get("history", {}).items()}
  print(json.dumps({"model_dir": cfg.train.model_dir, "epochs_run": state["epochs_run"],
                    "seconds": state.get("seconds"), "final": last,
                    "checkpoint": state.get("checkpoint")}))
  return 0
