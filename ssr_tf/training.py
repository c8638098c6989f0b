"""`ssr_tf train`: Keras training under a tf.distribute strategy, with exact resume.

The model, optimizer, metrics and datasets are built under the strategy of the
``distribution:`` section (ssr_tf/distribute.py); the global batch is split across the
replicas and the learning rate scaled by ``distribution.lr_scaling`` (ssr_tf/schedules.py).
The inputs come from ssr_tf/data.py, the callbacks from ssr_tf/callbacks.py; this module
runs them in order (:func:`train`).

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
* ``config.yaml``, ``record_counts.json``, ``feature_rows.json``: the resolved config, the
  records per training shard, what each embedding row stands for (warm starts check it).
* ``logs/``: TensorBoard (``logs/ics``, ``logs/dynamic_ids`` when those loggers run).
* ``train_state.json``: written last; a completed run is not trained again without
  ``--overwrite``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import shutil
import time
from typing import Optional

import numpy as np
import tensorflow as tf
import yaml

from ssr_tf import data as data_lib
from ssr_tf import distribute
from ssr_tf import optimizers
from ssr_tf import task
from ssr_tf import warm_start
from ssr_tf.callbacks import (BestCheckpoint, CoordinatorValidation, DynamicIdLogger,
                              ICSSparsityLogger, ResumableBackup, ResumableEarlyStopping,
                              RunLog, StepTensorBoard, atomic_write_text, dynamic_id_tables,
                              read_jsonl, resume_point, ssr_layers)
from ssr_tf.config import ExperimentConfig, to_dict
from ssr_tf.data import inputs  # noqa: F401  (re-exported: ssr_tf.bench.distributed)
from ssr_tf.errors import ConfigError, DataError, UserError
from ssr_tf.models.ranker import backbone_flops, backbone_params, build_model
from ssr_tf.schedules import learning_rates

BACKUP_SUBDIR = "backup"
STATE_FILE = "train_state.json"


@dataclasses.dataclass
class Run:
  """What the steps of one :func:`train` call share, filled in as they run.

  Attributes:
    cfg: the experiment.
    strategy: the tf.distribute strategy of ``distribution.strategy``.
    model_dir: train.model_dir.
    chief: whether this process writes the shared files.
    global_batch: records per step over all replicas.
    files, counts: the training shards and the records in each.
    count_cache: record_counts.json on the chief (None elsewhere).
    steps_per_epoch: train.steps_per_epoch, or the global batches in one pass.
    initial_epoch, initial_step: where a restored backup continues ((0, 0) without one).
    warm_start: the checkpoint of train.warm_start_from (None when unset).
    lr_factor: the learning-rate scale factor of the global batch.
    info: the model description (backbone parameters and FLOPs).
  """
  cfg: ExperimentConfig
  strategy: tf.distribute.Strategy
  model_dir: pathlib.Path
  chief: bool
  global_batch: int = 0
  files: list = dataclasses.field(default_factory=list)
  counts: list = dataclasses.field(default_factory=list)
  count_cache: Optional[str] = None
  steps_per_epoch: int = 0
  initial_epoch: int = 0
  initial_step: int = 0
  warm_start: Optional[str] = None
  lr_factor: float = 1.0
  info: dict = dataclasses.field(default_factory=dict)

  @property
  def is_ps(self) -> bool:
    return distribute.is_parameter_server(self.strategy)

  @property
  def replicas(self) -> int:
    return self.strategy.num_replicas_in_sync

  @property
  def backup_dir(self) -> str:
    return str(self.model_dir / BACKUP_SUBDIR)

  @property
  def start_step(self) -> int:
    """The global step this run continues from."""
    return self.initial_epoch * self.steps_per_epoch + self.initial_step


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


# ---------------------------------------------------------------------------------------
# The steps of a run, in the order train() takes them.


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
  for name in ("progress.jsonl", "history.jsonl", "callbacks.json", STATE_FILE):
    try:
      (model_dir / name).unlink()
    except FileNotFoundError:
      pass


# Config keys that cannot change what a resumed run computes: they may differ between a
# run and its resumption (docs/distributed.md, "Resuming").
RESUME_FREE_KEYS = ("train.model_dir", "train.verbose", "train.checkpoint_every_steps",
                    "train.ics_log_every_steps", "train.warm_start_from")


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict) and v:
      out.update(_flat(v, key + "."))
    else:
      out[key] = v
  return out


def config_changes(saved: dict, cfg: ExperimentConfig) -> list[str]:
  """'key: old -> new' for each key of `cfg` that differs from the `saved` config and could
  change the run (all but RESUME_FREE_KEYS)."""
  before = _flat(saved)
  now = _flat(yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False)))
  missing = "(unset)"
  return [f"{k}: {before.get(k, missing)!r} -> {now.get(k, missing)!r}"
          for k in sorted(set(before) | set(now))
          if k not in RESUME_FREE_KEYS and before.get(k, missing) != now.get(k, missing)]


def _check_resume_config(run: Run) -> None:
  """An unfinished run in model_dir resumes only with the config it was started with."""
  path = run.model_dir / "config.yaml"
  if not path.exists():
    return
  changes = config_changes(yaml.safe_load(path.read_text()) or {}, run.cfg)
  if changes:
    raise UserError(f"{run.model_dir} holds an unfinished run started with another config; "
                    f"resuming it would mix two runs. Changed: {'; '.join(changes)}. Rerun "
                    "with its config, pass --overwrite to start afresh, or train into "
                    "another train.model_dir")


def _open_model_dir(run: Run, overwrite: bool) -> Optional[dict]:
  """The state of a completed run in model_dir (None: train). Otherwise clears a previous
  run with `overwrite` (or refuses to resume one with a changed config), creates model_dir
  and writes the resolved config (chief)."""
  state_file = run.model_dir / STATE_FILE
  if overwrite:
    _clear_run(run.model_dir)
  else:
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if state.get("completed"):
      print(f"{run.model_dir}: training already completed ({state['epochs_run']} epochs); "
            "pass --overwrite to train again")
      return state
    _check_resume_config(run)
  run.model_dir.mkdir(parents=True, exist_ok=True)
  if run.chief:
    atomic_write_text(run.model_dir / "config.yaml",
                      yaml.safe_dump(to_dict(run.cfg), sort_keys=False))
  return None


def _size_steps(run: Run) -> None:
  """The global batch, the training shards' record counts and the steps per epoch."""
  cfg = run.cfg
  run.global_batch = distribute.global_batch_size(cfg.distribution, cfg.data.batch_size,
                                                   run.replicas)
  run.files = data_lib.list_files(cfg.data.train, "data.train")
  run.count_cache = str(run.model_dir / "record_counts.json") if run.chief else None
  run.counts = data_lib.count_records(run.files, cfg.data.compression, run.count_cache)
  run.steps_per_epoch = cfg.train.steps_per_epoch or max(
      1, math.ceil(sum(run.counts) / run.global_batch))


def _compiled_model(run: Run, spec) -> tf.keras.Model:
  """The model, compiled with its optimizers and learning rates under the strategy."""
  cfg = run.cfg
  rates, run.lr_factor = learning_rates(cfg, run.global_batch, run.steps_per_epoch)
  with run.strategy.scope(), distribute.variable_names():
    model = build_model(spec, cfg.model, cfg.train.seed)
    optimizer = optimizers.make_optimizer(
        cfg, model, *rates, distributed=cfg.distribution.strategy != "default")
    model.compile(optimizer=optimizer,
                  steps_per_execution=cfg.distribution.steps_per_execution)
  run.info = describe(model, cfg)
  print(json.dumps({"backbone": run.info, "distribution": distribute.describe(run.strategy)}))
  return model


def _start_point(run: Run, spec, model: tf.keras.Model, feature_rows: dict) -> None:
  """Where training starts: the step a backup continues at, else (a fresh run) the
  weights of train.warm_start_from when set. Writes feature_rows.json (chief)."""
  data_lib.check_records(run.files, spec, "data.train", run.cfg.data.compression)
  run.initial_epoch, run.initial_step = resume_point(run.backup_dir, run.steps_per_epoch)
  if run.chief:
    atomic_write_text(run.model_dir / warm_start.FEATURE_ROWS_FILE, json.dumps(feature_rows))
  if run.warm_start and run.start_step == 0:   # (a resumed run's newer weights: its backup)
    with run.strategy.scope():
      loaded = warm_start.load_weights(model, run.warm_start, "train.warm_start_from")
    print(json.dumps({"warm_start": run.warm_start, "weights": loaded}))


def _run_inputs(run: Run, spec):
  """(train input, validation input for fit, chief-side validation callback or None).

  Training reads an endless stream positioned at the step the backup resumes from. With
  parameter servers the validation split is scored on the chief (CoordinatorValidation)
  instead of by fit."""
  cfg = run.cfg
  train_in, valid_in = data_lib.inputs(cfg, spec, run.strategy, run.global_batch,
                                       run.start_step, run.counts, run.count_cache)
  if not (run.is_ps and valid_in is not None):
    return train_in, valid_in, None
  eval_model = build_model(spec, cfg.model, cfg.train.seed)
  eval_model.compile(optimizer=tf.keras.optimizers.Adam())
  validation = CoordinatorValidation(eval_model, valid_in, str(run.model_dir / ".eval_tmp"),
                                     distribute.coordinator(run.strategy))
  return train_in, None, validation


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


def _callbacks(run: Run, model: tf.keras.Model, save_best, validation, train_in, valid_in,
               extra: Optional[list]):
  """(callbacks in fit's order, the BestCheckpoint among them, the ICS logger or None).

  Early stopping and the best checkpoint continue from the state callbacks.json saved
  for the epoch before the resume point. Order matters: at an epoch end, the best
  checkpoint and the logs are written before the backup that moves the resume point
  past this epoch.
  """
  cfg, model_dir = run.cfg, run.model_dir
  saved = {}
  if run.start_step and (model_dir / "callbacks.json").exists():
    saved = json.loads((model_dir / "callbacks.json").read_text())
  resumed = saved.get(str(run.initial_epoch - 1), {})
  has_valid = valid_in is not None or validation is not None
  best = BestCheckpoint(save_best, "val_click_auc" if has_valid else "none",
                        resumed.get("best_checkpoint", -math.inf))
  early = None
  if has_valid and cfg.train.early_stopping_patience > 0:
    early = ResumableEarlyStopping(resumed.get("early_stopping"), monitor="val_click_auc",
                                   mode="max", patience=cfg.train.early_stopping_patience)

  def callback_state() -> dict:
    out = {"best_checkpoint": best.best}
    if early is not None:
      out["early_stopping"] = early.state()
    return out

  records_per_step = run.global_batch if not run.is_ps else cfg.data.batch_size
  log = RunLog(model_dir, {
      "resume_epoch": run.initial_epoch, "resume_step_in_epoch": run.initial_step,
      "resume_global_step": run.start_step, "steps_per_epoch": run.steps_per_epoch,
      "global_batch": run.global_batch, "records_skipped": run.start_step * records_per_step,
      "strategy": cfg.distribution.strategy, "replicas": run.replicas},
      run.chief, callback_state)
  backup = ResumableBackup(run.backup_dir, cfg.train.checkpoint_every_steps,
                           run.steps_per_epoch, coordinator=distribute.coordinator(run.strategy),
                           on_backup=log.backup, on_restored=log.restored)
  cbs = [validation] if validation else []
  cbs += [best] + ([early] if early else []) + [log, backup]
  cbs.append(StepTensorBoard(str(model_dir / "logs"), update_freq="epoch" if run.is_ps else 100))
  if run.chief and dynamic_id_tables(model):
    cbs.append(DynamicIdLogger(str(model_dir / "logs" / "dynamic_ids")))
  ics_logger = _ics_logger(cfg, model, model_dir, train_in, valid_in) if run.chief else None
  cbs += ([ics_logger] if ics_logger else []) + list(extra or [])
  return cbs, best, ics_logger


def _fit(run: Run, model: tf.keras.Model, train_in, valid_in, cbs: list):
  """model.fit over the epochs left; a corrupt record becomes a DataError naming its shard."""
  cfg = run.cfg
  verbose = 2 if run.is_ps and cfg.train.verbose == 1 else cfg.train.verbose

  def fit():
    return model.fit(train_in, validation_data=valid_in, epochs=cfg.train.epochs,
                     steps_per_epoch=run.steps_per_epoch, callbacks=cbs, verbose=verbose)

  try:
    return task.data_errors(fit)
  except BaseException as e:
    for cb in cbs:
      if hasattr(cb, "release"):         # StepTensorBoard: Keras skipped on_train_end
        cb.release()
    if not isinstance(e, DataError):
      raise
    bad = None
    for pattern, key in ((cfg.data.train, "data.train"), (cfg.data.valid, "data.valid")):
      if pattern and bad is None:
        bad = data_lib.find_corrupt_shard(data_lib.list_files(pattern, key),
                                          cfg.data.compression)
    raise DataError(f"{bad}: {e}" if bad else str(e)) from None


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


def _final_state(run: Run, model: tf.keras.Model, history, manager, seconds: float) -> dict:
  """train_state.json: history over every run of model_dir, checkpoint, counters, digest."""
  epochs_done = run.initial_epoch + len(next(iter(history.history.values()), []))
  hist = {k: [float(x) for x in v] for k, v in history.history.items()}
  hist = _merged_history(run.model_dir, hist, epochs_done) if run.chief else hist
  return {"completed": True, "epochs_run": len(next(iter(hist.values()), [])),
          "seconds": round(seconds, 1), "history": hist, "backbone": run.info,
          "checkpoint": manager.latest_checkpoint if run.chief else None,
          "steps_per_epoch": run.steps_per_epoch, "resumed_from_step": run.start_step,
          "warm_started_from": run.warm_start,
          "optimizer_iterations": int(model.optimizer.iterations.numpy()),
          "weights_sha256": weights_digest(model),
          "distribution": {**distribute.describe(run.strategy),
                           "global_batch": run.global_batch,
                           "per_replica_batch": run.global_batch // run.replicas,
                           "learning_rate_factor": run.lr_factor,
                           "embedding_shards": distribute.shard_report(model),
                           "sparse_gradients": dict(getattr(model.optimizer, "sparse_report",
                                                            {}))}}


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
  run = Run(cfg, strategy, pathlib.Path(cfg.train.model_dir), distribute.is_chief(strategy))
  spec = task.build_spec(cfg)
  check_dynamic_ids(spec, dist)                         # refused before anything is written
  feature_rows = warm_start.feature_rows(spec)          # reads the vocabularies once
  run.warm_start = _warm_start_checkpoint(cfg, run.model_dir, feature_rows)  # before clearing
  completed = _open_model_dir(run, overwrite)
  if completed is not None:
    return completed
  _size_steps(run)
  model = _compiled_model(run, spec)
  _start_point(run, spec, model, feature_rows)
  train_in, valid_in, validation = _run_inputs(run, spec)
  manager, save_best, had_checkpoint = _best_checkpoint_writer(model, run.model_dir, strategy,
                                                               run.chief)
  cbs, best, ics_logger = _callbacks(run, model, save_best, validation, train_in, valid_in,
                                     callbacks)
  start = time.time()
  history = _fit(run, model, train_in, valid_in, cbs)
  if ics_logger is not None:
    ics_logger.close()
  if not had_checkpoint and not best.saves:
    save_best(cfg.train.epochs)
  state = _final_state(run, model, history, manager, time.time() - start)
  if run.chief:
    atomic_write_text(run.model_dir / STATE_FILE, json.dumps(state, indent=2))
    shutil.rmtree(run.backup_dir, ignore_errors=True)   # only once the state says "completed"
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
