"""`ssr_tf train`: Keras training under a tf.distribute strategy, with exact resume.

The model, optimizer, metrics and datasets are built under the strategy of the
``distribution:`` section (ssr_tf/distribute.py); the global batch is split across the
replicas and the learning rate scaled by ``distribution.lr_scaling``.

Files under ``model_dir`` (JSON written to a temporary file and renamed; TF checkpoints
write their data files before the index that names them, so a kill never leaves a
half-written checkpoint behind the index):

* ``backup/``: model, optimizer, epoch and step (BackupAndRestore) every
  ``checkpoint_every_steps`` steps and at each epoch end. A killed run restarted by the
  same command restores it and continues at the next step, reading the training stream
  from the matching record (ssr_tf.data.train_stream). Deleted once training completes.
* ``ckpt/``: the best weights by validation click AUC (what evaluate and export read).
* ``progress.jsonl``: start / backup / end events with the step counters (for checks).
* ``history.jsonl`` and ``callbacks.json``: per-epoch metrics and early-stopping state, so
  a resumed run reports every epoch and keeps its patience.
* ``train_state.json``: written last; a completed run is not trained again without
  ``--overwrite``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pathlib
import shutil
import threading
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
import yaml

from ssr_tf import data as data_lib
from ssr_tf import distribute
from ssr_tf import optimizers
from ssr_tf import schedules
from ssr_tf import task
from ssr_tf import warm_start
from ssr_tf.callbacks import (DynamicIdLogger, ICSSparsityLogger, StepTensorBoard,
                              dynamic_id_tables, ssr_layers)
from ssr_tf.config import ExperimentConfig, to_dict
from ssr_tf.errors import ConfigError, DataError, UserError
from ssr_tf.models.ranker import backbone_flops, backbone_params, build_model

BACKUP_SUBDIR = "backup"


def atomic_write_text(path: pathlib.Path | str, text: str) -> None:
  """Writes `text` to a temporary file beside `path`, then renames it over `path`."""
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def append_jsonl(path: pathlib.Path, record: dict) -> None:
  """Appends one JSON line (flushed and synced; a reader skips a torn last line)."""
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())


def read_jsonl(path: pathlib.Path) -> list[dict]:
  if not path.exists():
    return []
  out = []
  for line in path.read_text().splitlines():
    try:
      out.append(json.loads(line))
    except ValueError:
      continue
  return out


class BestCheckpoint(tf.keras.callbacks.Callback):
  """Saves the weights whenever `monitor` improves (or every epoch when there is no
  validation data) through `save(checkpoint_number)`."""

  def __init__(self, save: Callable[[int], None], monitor: str = "val_click_auc",
               best: float = -math.inf):
    super().__init__()
    self.save = save
    self.monitor = monitor
    self.best = best
    self.saves = 0

  def on_epoch_end(self, epoch, logs=None):
    value = (logs or {}).get(self.monitor)
    if value is None or value > self.best:
      self.best = value if value is not None else self.best
      self.save(epoch + 1)
      self.saves += 1


class ResumableEarlyStopping(tf.keras.callbacks.EarlyStopping):
  """EarlyStopping whose wait/best counters survive a restart (`state` from callbacks.json)."""

  def __init__(self, state: Optional[dict] = None, **kwargs):
    super().__init__(**kwargs)
    self._resume_state = state

  def on_train_begin(self, logs=None):
    super().on_train_begin(logs)
    if self._resume_state:
      self.wait = int(self._resume_state["wait"])
      self.best = float(self._resume_state["best"])
      self.best_epoch = int(self._resume_state.get("best_epoch", 0))

  def state(self) -> dict:
    return {"wait": int(self.wait), "best": float(self.best), "best_epoch": int(self.best_epoch)}


class ResumableBackup(tf.keras.callbacks.BackupAndRestore):
  """BackupAndRestore that backs up every `every_steps` steps and at each epoch end,
  counting steps (not callback calls, which differ with steps_per_execution), recording
  the last step done, and, with parameter servers, after the in-flight steps finish.

  Keras restores the backup in on_train_begin and continues at the step after the one
  recorded; `on_backup(global_step, seconds)` is called after each backup.
  """

  def __init__(self, backup_dir: str, every_steps: int, steps_per_epoch: int,
               coordinator=None, on_backup: Optional[Callable[[int, float], None]] = None,
               on_restored: Optional[Callable[[], None]] = None):
    super().__init__(backup_dir, save_freq=every_steps, delete_checkpoint=False)
    self.every_steps = every_steps
    self.steps_per_epoch = steps_per_epoch
    self.coordinator = coordinator
    self.on_backup = on_backup
    self.on_restored = on_restored
    self._done_in_epoch = 0
    self._since_backup = 0

  def on_train_begin(self, logs=None):
    super().on_train_begin(logs)          # restores the backup, if any
    if self.on_restored:
      self.on_restored()

  def on_epoch_begin(self, epoch, logs=None):
    super().on_epoch_begin(epoch, logs)
    self._done_in_epoch = None

  def on_train_batch_begin(self, batch, logs=None):
    if self._done_in_epoch is None:       # first call of the epoch: resume offset
      self._done_in_epoch = int(batch)

  def on_train_batch_end(self, batch, logs=None):
    # `batch` is the index of the last step this call ran.
    batch = int(batch)
    ran = batch + 1 - self._done_in_epoch
    self._done_in_epoch = batch + 1
    self._since_backup += ran
    if self._since_backup >= self.every_steps and batch + 1 < self.steps_per_epoch:
      self._save(self._current_epoch, batch)

  def on_epoch_end(self, epoch, logs=None):
    self._save(epoch, self.steps_per_epoch - 1)

  def _save(self, epoch: int, batch: int) -> None:
    epoch, batch = int(epoch), int(batch)
    if self.coordinator is not None:
      self.coordinator.join()             # no step in flight while the state is read
    self._since_backup = 0
    state = self._training_state
    state._ckpt_saved_epoch.assign(epoch)   # pylint: disable=protected-access
    state._ckpt_saved_batch.assign(batch)   # pylint: disable=protected-access
    start = time.perf_counter()
    state.back_up(epoch=epoch, batch=batch)
    seconds = time.perf_counter() - start
    if self.on_backup:
      self.on_backup(epoch * self.steps_per_epoch + batch + 1, seconds)


class CoordinatorValidation(tf.keras.callbacks.Callback):
  """parameter_server validation on the chief, exact: after each epoch the trained
  weights are copied (through a checkpoint: sharded tables are saved whole) into a
  single-device copy of the model, which evaluates the whole validation split and adds
  ``val_*`` to the epoch logs. (Keras's own evaluation under parameter servers either
  visits records a varying number of times or, exactly, refuses models whose metrics are
  not compiled metrics, as the ranker's are not.)"""

  def __init__(self, eval_model: tf.keras.Model, dataset: tf.data.Dataset, tmp_dir: str,
               coordinator=None):
    super().__init__()
    self.eval_model = eval_model
    self.dataset = dataset
    self.tmp_dir = tmp_dir
    self.coordinator = coordinator

  def on_epoch_end(self, epoch, logs=None):
    if self.coordinator is not None:
      self.coordinator.join()
    path = tf.train.Checkpoint(model=self.model).write(os.path.join(self.tmp_dir, "weights"))
    results: dict = {}

    def evaluate() -> None:
      # A fresh thread is outside fit's strategy scope, so the copy runs on this host.
      tf.train.Checkpoint(model=self.eval_model).read(path).expect_partial()
      results.update(self.eval_model.evaluate(self.dataset, verbose=0, return_dict=True))

    worker = threading.Thread(target=evaluate, name="ssr_tf_validation")
    worker.start()
    worker.join()
    shutil.rmtree(self.tmp_dir, ignore_errors=True)
    if not results:
      raise RuntimeError("parameter-server validation on the chief failed (see the log)")
    if logs is not None:
      logs.update({f"val_{k}": float(v) for k, v in results.items()})


def resume_point(backup_dir: str, steps_per_epoch: int) -> tuple[int, int]:
  """(epoch, step in epoch) a run restoring `backup_dir` continues at, as Keras computes
  it from the saved epoch and batch; (0, 0) without a backup."""
  latest = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
  if not latest:
    return 0, 0
  reader = tf.train.load_checkpoint(latest)
  epoch = int(reader.get_tensor("ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"))
  batch = int(reader.get_tensor("ckpt_saved_batch/.ATTRIBUTES/VARIABLE_VALUE"))
  if batch < 0:
    return max(epoch, 0), 0
  if batch >= steps_per_epoch - 1:
    return epoch + 1, 0
  return epoch, batch + 1


class RunLog(tf.keras.callbacks.Callback):
  """Chief-only bookkeeping: progress events, per-epoch history, callback state."""

  def __init__(self, model_dir: pathlib.Path, start: dict, write: bool,
               state_fn: Callable[[], dict]):
    super().__init__()
    self.dir = model_dir
    self.start = start
    self.write = write
    self.state_fn = state_fn

  def event(self, record: dict) -> None:
    if self.write:
      append_jsonl(self.dir / "progress.jsonl", {"time": round(time.time(), 3), **record})

  def backup(self, global_step: int, seconds: float) -> None:
    """Called by ResumableBackup after each backup (its cost grows with the tables:
    model, optimizer slots and dynamic-id maps; see README, Scale)."""
    logging.info("ssr_tf: backup at step %d took %.2f s", global_step, seconds)
    self.event({"event": "backup", "global_step": global_step,
                "seconds": round(seconds, 3)})

  def restored(self) -> None:
    """Called by ResumableBackup once the backup (if any) is restored."""
    self.event({"event": "start", **self.start,
                "optimizer_iterations": int(self.model.optimizer.iterations.numpy())})

  def on_epoch_end(self, epoch, logs=None):
    if not self.write:
      return
    append_jsonl(self.dir / "history.jsonl",
                 {"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}})
    path = self.dir / "callbacks.json"
    states = json.loads(path.read_text()) if path.exists() else {}
    states[str(epoch)] = self.state_fn()
    atomic_write_text(path, json.dumps(states))

  def on_train_end(self, logs=None):
    self.event({"event": "end",
                "optimizer_iterations": int(self.model.optimizer.iterations.numpy())})


def datasets(cfg: ExperimentConfig, spec, input_context=None):
  """The finite (train, valid) datasets of one input pipeline (benchmarks, notebooks)."""
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


def weights_digest(model: tf.keras.Model) -> str:
  """SHA-256 of the trainable weights' bytes (equal on every worker of a synchronous run)."""
  h = hashlib.sha256()
  for v in sorted(model.trainable_variables, key=lambda v: v.name):
    h.update(v.name.encode())
    h.update(np.ascontiguousarray(v.numpy()).tobytes())
  return h.hexdigest()


def describe(model, cfg: ExperimentConfig) -> dict:
  return {"model": cfg.model.name, "backbone_params": backbone_params(model),
          "backbone_flops_per_example": backbone_flops(model),
          "num_fields": len(model.spec.features), "embedding_dim": cfg.model.embedding_dim}


def validation_batch_size(records: int, global_batch: int, replicas: int) -> int:
  """The validation batch: `global_batch`, or the nearest smaller multiple of `replicas`
  whose last batch still gives every replica at least one record (the ranker's
  per-replica mean losses are NaN on an empty batch)."""
  batch = global_batch
  while replicas > 1 and batch > replicas and 0 < records % batch < replicas:
    batch -= replicas
  return batch


def inputs(cfg: ExperimentConfig, spec, strategy, global_batch: int, start_step: int,
            counts: list[int], count_cache: Optional[str]):
  """(train input, validation input) for `fit` under `strategy`.

  Training: synchronous strategies get a ``distribute_datasets_from_function`` input, so
  each input pipeline (one per worker) reads its own shards and parses its own batches;
  parameter servers get a DatasetCreator (one stream per worker). Validation: the whole
  split in global batches, which Keras splits across the replicas (auto-sharding off:
  with multi_worker_mirrored every worker evaluates every batch, so no worker runs out
  of data early and sees an empty batch; metric values are unaffected).
  """
  d = cfg.data
  common = dict(shuffle_buffer=d.shuffle_buffer, seed=cfg.train.seed,
                deterministic=d.deterministic, compression=d.compression,
                cycle_length=d.cycle_length)
  is_ps = distribute.is_parameter_server(strategy)

  def train_fn(ctx: Optional[tf.distribute.InputContext] = None) -> tf.data.Dataset:
    batch = ctx.get_per_replica_batch_size(global_batch) if ctx else global_batch
    return data_lib.train_stream(d.train, spec, batch, key="data.train", input_context=ctx,
                                 start_step=0 if is_ps else start_step, counts=counts,
                                 count_cache=count_cache, per_worker_seed=is_ps, check=False,
                                 **common)

  valid = None
  if d.valid:
    valid_files = data_lib.list_files(d.valid, "data.valid")
    data_lib.check_records(valid_files, spec, "data.valid", d.compression)
    records = sum(data_lib.count_records(valid_files, d.compression, count_cache))
    batch = validation_batch_size(records, global_batch, strategy.num_replicas_in_sync)
    valid = data_lib.make_dataset(d.valid, spec, batch, training=False, key="data.valid",
                                  check=False, **common)
  if cfg.distribution.strategy == "default":
    return train_fn(), valid
  if is_ps:
    return tf.keras.utils.experimental.DatasetCreator(train_fn, distribute.input_options()), valid
  return strategy.distribute_datasets_from_function(train_fn, distribute.input_options()), valid


def _best_checkpoint_writer(model: tf.keras.Model, model_dir: pathlib.Path, strategy,
                            chief: bool):
  """(manager of model_dir/ckpt, save(number), whether a checkpoint existed before).

  Every worker saves (reading synchronised variables is collective, and the first save
  creates a variable), through the same calls; only the chief's copy stays.
  """
  ckpt = tf.train.Checkpoint(model=model)
  manager = tf.train.CheckpointManager(ckpt, str(model_dir / task.CKPT_SUBDIR), max_to_keep=2)
  had_checkpoint = manager.latest_checkpoint is not None     # same answer on every worker
  own_dir = distribute.worker_dir(str(model_dir / task.CKPT_SUBDIR), strategy)
  writer = manager if chief else tf.train.CheckpointManager(ckpt, own_dir, max_to_keep=1)

  def save(number: int) -> None:
    writer.save(checkpoint_number=number)
    if not chief:
      shutil.rmtree(os.path.dirname(own_dir), ignore_errors=True)

  return manager, save, had_checkpoint


def _warm_start_checkpoint(cfg: ExperimentConfig, model_dir: pathlib.Path,
                           feature_rows: dict[str, str]) -> Optional[str]:
  """train.warm_start_from as a checkpoint prefix (None when unset). It must lie outside
  model_dir (--overwrite clears model_dir, and a run never starts from its own output), and
  its run's embedding rows must mean what `feature_rows` (this run's digests) say."""
  if not cfg.train.warm_start_from:
    return None
  key = "train.warm_start_from"
  path = task.checkpoint_path(cfg.train.warm_start_from, key)
  if pathlib.Path(path).resolve().is_relative_to(model_dir.resolve()):
    raise UserError(f"config key '{key}': {path} lies inside this run's train.model_dir "
                    f"({model_dir}); train the new run into another model_dir")
  warm_start.check_feature_rows(feature_rows, path, key)
  return path


def _clear_run(model_dir: pathlib.Path) -> None:
  """--overwrite: forget a previous run (backup, checkpoints, logs, state)."""
  for name in (BACKUP_SUBDIR, task.CKPT_SUBDIR):
    shutil.rmtree(model_dir / name, ignore_errors=True)
  for name in ("progress.jsonl", "history.jsonl", "callbacks.json", "train_state.json"):
    try:
      (model_dir / name).unlink()
    except FileNotFoundError:
      pass


def _merged_history(model_dir: pathlib.Path, fallback: dict, epochs_done: int) -> dict:
  """Per-epoch metrics over all runs of this model_dir (a later run's epoch wins)."""
  by_epoch = {}
  for rec in read_jsonl(model_dir / "history.jsonl"):
    by_epoch[int(rec.pop("epoch"))] = rec
  if not by_epoch:
    return fallback
  hist: dict[str, list[float]] = {}
  for epoch in sorted(e for e in by_epoch if e < epochs_done):
    for k, v in by_epoch[epoch].items():
      hist.setdefault(k, []).append(float(v))
  return hist


def _ics_logger(cfg: ExperimentConfig, model: tf.keras.Model, model_dir: pathlib.Path,
                train_in, valid_in) -> Optional[ICSSparsityLogger]:
  """The Figure 5 logger (ICS sparsity per SSR layer to model_dir/logs/ics), or None when
  off, when the model has no SSR layers, or under a distribution strategy (the probe is
  scored eagerly outside the strategy)."""
  every = cfg.train.ics_log_every_steps
  if not every or cfg.distribution.strategy != "default" or not ssr_layers(model):
    return None
  features, _ = next(iter(valid_in if valid_in is not None else train_in))
  return ICSSparsityLogger(str(model_dir / "logs" / "ics"), features, every)


def learning_rates(cfg: ExperimentConfig, global_batch: int, steps_per_epoch: int):
  """((dense rate, embedding rate), scale factor): train.learning_rate and
  train.embedding_learning_rate (0: the same), each scaled, warmed up and decayed alike."""
  t = cfg.train
  rates = []
  for base in (t.learning_rate, t.embedding_learning_rate or t.learning_rate):
    lr, factor = distribute.learning_rate(cfg.distribution, base, global_batch,
                                          cfg.data.batch_size)
    rates.append(schedules.with_decay(lr, t.lr_decay, t.epochs * steps_per_epoch,
                                      t.lr_decay_final))
  return tuple(rates), factor


def check_dynamic_ids(spec, dist) -> None:
  """Dynamic-id features train under the default strategy only: their id map is host
  state that each training step updates before the lookup, so synchronous replicas would
  race on it and parameter-server workers would assign rows asynchronously."""
  dynamic = [f.name for f in spec.features if f.dynamic is not None]
  if dynamic and dist.strategy != "default":
    raise ConfigError(f"config key 'distribution.strategy': feature(s) {dynamic} use dynamic "
                      f"ids, which train under strategy 'default' only, not "
                      f"{dist.strategy!r}; give them hash_buckets or a vocabulary to train "
                      "them distributed")


def train(cfg: ExperimentConfig, overwrite: bool = False,
          callbacks: Optional[list] = None) -> dict:
  """Trains (or resumes) the experiment; returns the history and model description.

  `callbacks` are extra Keras callbacks (tests, notebooks). On a parameter-server worker
  or ps task (TF_CONFIG) this runs the task's server and does not return.
  """
  dist = cfg.distribution
  distribute.configure_devices(dist)
  if distribute.serve_if_server_task(dist):
    return {"completed": True, "server": True}
  strategy = distribute.make_strategy(dist)
  tf.keras.utils.set_random_seed(cfg.train.seed)
  chief = distribute.is_chief(strategy)
  model_dir = pathlib.Path(cfg.train.model_dir)
  state_file = model_dir / "train_state.json"
  spec = task.build_spec(cfg)
  check_dynamic_ids(spec, dist)
  feature_rows = warm_start.feature_rows(spec)      # reads the vocabularies once
  warm = _warm_start_checkpoint(cfg, model_dir, feature_rows)   # before --overwrite clears
  if overwrite:
    _clear_run(model_dir)
  elif state_file.exists():
    state = json.loads(state_file.read_text())
    if state.get("completed"):
      print(f"{model_dir}: training already completed ({state['epochs_run']} epochs); "
            "pass --overwrite to train again")
      return state
  model_dir.mkdir(parents=True, exist_ok=True)
  if chief:
    atomic_write_text(model_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))

  is_ps = distribute.is_parameter_server(strategy)
  replicas = strategy.num_replicas_in_sync
  global_batch = distribute.global_batch_size(dist, cfg.data.batch_size, replicas)
  files = data_lib.list_files(cfg.data.train, "data.train")
  count_cache = str(model_dir / "record_counts.json") if chief else None
  counts = data_lib.count_records(files, cfg.data.compression, count_cache)
  steps_per_epoch = cfg.train.steps_per_epoch or max(1, math.ceil(sum(counts) / global_batch))
  lr, lr_factor = learning_rates(cfg, global_batch, steps_per_epoch)
  with strategy.scope(), distribute.variable_names():
    model = build_model(spec, cfg.model)
    optimizer = optimizers.make_optimizer(cfg, model, *lr,
                                          distributed=dist.strategy != "default")
    model.compile(optimizer=optimizer, steps_per_execution=dist.steps_per_execution)
  info = describe(model, cfg)
  print(json.dumps({"backbone": info, "distribution": distribute.describe(strategy)}))

  # Training data: an endless stream positioned at the step the backup resumes from.
  data_lib.check_records(files, spec, "data.train", cfg.data.compression)
  backup_dir = str(model_dir / BACKUP_SUBDIR)
  initial_epoch, initial_step = resume_point(backup_dir, steps_per_epoch)
  start_step = initial_epoch * steps_per_epoch + initial_step
  if chief:
    atomic_write_text(model_dir / warm_start.FEATURE_ROWS_FILE, json.dumps(feature_rows))
  if warm and start_step == 0:    # (a resumed run takes its newer weights from its backup)
    with strategy.scope():
      loaded = warm_start.load_weights(model, warm, "train.warm_start_from")
    print(json.dumps({"warm_start": warm, "weights": loaded}))
  train_in, valid_in = inputs(cfg, spec, strategy, global_batch, start_step, counts,
                               count_cache)
  validation = None
  if is_ps and valid_in is not None:
    eval_model = build_model(spec, cfg.model)
    eval_model.compile(optimizer=tf.keras.optimizers.Adam())
    validation = CoordinatorValidation(eval_model, valid_in, str(model_dir / ".eval_tmp"),
                                       distribute.coordinator(strategy))
    valid_in = None

  manager, save_best, had_checkpoint = _best_checkpoint_writer(model, model_dir, strategy,
                                                               chief)

  saved_states = {}
  if start_step and (model_dir / "callbacks.json").exists():
    saved_states = json.loads((model_dir / "callbacks.json").read_text())
  resumed = saved_states.get(str(initial_epoch - 1), {})
  has_valid = valid_in is not None or validation is not None
  monitor = "val_click_auc" if has_valid else "none"
  best = BestCheckpoint(save_best, monitor, resumed.get("best_checkpoint", -math.inf))
  early = None
  if has_valid and cfg.train.early_stopping_patience > 0:
    early = ResumableEarlyStopping(resumed.get("early_stopping"), monitor="val_click_auc",
                                   mode="max", patience=cfg.train.early_stopping_patience)

  def callback_state() -> dict:
    out = {"best_checkpoint": best.best}
    if early is not None:
      out["early_stopping"] = early.state()
    return out

  records_per_step = global_batch if not is_ps else cfg.data.batch_size
  log = RunLog(model_dir, {
      "resume_epoch": initial_epoch, "resume_step_in_epoch": initial_step,
      "resume_global_step": start_step, "steps_per_epoch": steps_per_epoch,
      "global_batch": global_batch, "records_skipped": start_step * records_per_step,
      "strategy": dist.strategy, "replicas": replicas}, chief, callback_state)
  backup = ResumableBackup(backup_dir, cfg.train.checkpoint_every_steps, steps_per_epoch,
                           coordinator=distribute.coordinator(strategy),
                           on_backup=log.backup,
                           on_restored=log.restored)
  # Order matters: at an epoch end, the best checkpoint and the logs are written before
  # the backup that moves the resume point past this epoch.
  cbs = ([validation] if validation else []) + [best] + ([early] if early else []) + [log, backup]
  cbs.append(StepTensorBoard(str(model_dir / "logs"), update_freq="epoch" if is_ps else 100))
  if chief and dynamic_id_tables(model):
    cbs.append(DynamicIdLogger(str(model_dir / "logs" / "dynamic_ids")))
  ics_logger = _ics_logger(cfg, model, model_dir, train_in, valid_in) if chief else None
  cbs += ([ics_logger] if ics_logger else []) + list(callbacks or [])
  verbose = 2 if is_ps and cfg.train.verbose == 1 else cfg.train.verbose
  start = time.time()

  def fit():
    return model.fit(train_in, validation_data=valid_in, epochs=cfg.train.epochs,
                     steps_per_epoch=steps_per_epoch, callbacks=cbs, verbose=verbose)

  try:
    history = task.data_errors(fit)
  except DataError as e:
    bad = None
    for pattern, key in ((cfg.data.train, "data.train"), (cfg.data.valid, "data.valid")):
      if pattern and bad is None:
        bad = data_lib.find_corrupt_shard(data_lib.list_files(pattern, key),
                                          cfg.data.compression)
    raise DataError(f"{bad}: {e}" if bad else str(e)) from None
  if ics_logger is not None:
    ics_logger.close()
  if not had_checkpoint and not best.saves:
    save_best(cfg.train.epochs)
  epochs_done = initial_epoch + len(next(iter(history.history.values()), []))
  hist = {k: [float(x) for x in v] for k, v in history.history.items()}
  hist = _merged_history(model_dir, hist, epochs_done) if chief else hist
  state = {"completed": True, "epochs_run": len(next(iter(hist.values()), [])),
           "seconds": round(time.time() - start, 1), "history": hist, "backbone": info,
           "checkpoint": manager.latest_checkpoint if chief else None,
           "steps_per_epoch": steps_per_epoch, "resumed_from_step": start_step,
           "warm_started_from": warm,
           "optimizer_iterations": int(model.optimizer.iterations.numpy()),
           "weights_sha256": weights_digest(model),
           "distribution": {**distribute.describe(strategy), "global_batch": global_batch,
                            "per_replica_batch": global_batch // replicas,
                            "learning_rate_factor": lr_factor,
                            "embedding_shards": distribute.shard_report(model),
                            "sparse_gradients": dict(getattr(optimizer, "sparse_report", {}))}}
  if chief:
    atomic_write_text(state_file, json.dumps(state, indent=2))
    shutil.rmtree(backup_dir, ignore_errors=True)   # only once the state says "completed"
  return state


def main(argv: list[str], prog: str = "ssr_tf train") -> int:
  p = task.config_parser(prog, "Train a ranking model from an experiment config.")
  p.add_argument("--overwrite", action="store_true",
                 help="train again from scratch even if model_dir holds a run")
  args = p.parse_args(argv)
  cfg = task.config_from_args(args)
  state = train(cfg, overwrite=args.overwrite)
  if state.get("server"):
    return 0
  last = {k: v[-1] for k, v in state.get("history", {}).items()}
  print(json.dumps({"model_dir": cfg.train.model_dir, "epochs_run": state["epochs_run"],
                    "seconds": state.get("seconds"), "final": last,
                    "checkpoint": state.get("checkpoint"),
                    "task": state.get("distribution", {}).get("task"),
                    "optimizer_iterations": state.get("optimizer_iterations"),
                    "weights_sha256": state.get("weights_sha256")}))
  return 0
