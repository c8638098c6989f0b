"""Training callbacks and the run files they write.

Measurement: ICS sparsity per SSR layer (Figure 5), dynamic-id table use, and a
TensorBoard callback whose batch hook costs nothing on the steps it does not write.

sparsity_l = mean_{batch, view, dim} [h_l == 0];  magnitude_l = mean |h_l| over nonzeros,
where h_l = ICS_l(x_l W_l^proj) is SSR layer l's filtered view tensor on a fixed probe batch.

A run of `ssr_tf train` (ssr_tf/training.py): the best checkpoint by validation click AUC,
early stopping and backups that survive a restart, exact parameter-server validation on
the chief, and the run log (``progress.jsonl``, ``history.jsonl``, ``callbacks.json``),
written with the file helpers below (JSON to a temporary file then renamed; JSON lines
flushed and synced).
"""
from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import shutil
import threading
import time
from typing import Callable, Optional

import tensorflow as tf

from ssr_tf.layers.ssr import SSRLayer


def ssr_layers(model: tf.keras.Model) -> list[SSRLayer]:
  """The model's SSR layers in creation (= forward) order."""
  return [m for m in model.submodules if isinstance(m, SSRLayer)]


def filter_stage(model: tf.keras.Model, features: dict) -> list[tuple[tf.Tensor, tf.Tensor]]:
  """Each SSR layer's input x ``[batch, d_in]`` and filter output h ``[batch, views,
  filtered_dim]`` for `features`.

  Runs the model eagerly once (inference mode) while each layer's ``filter_views`` is
  wrapped to record its argument and result, so residual wiring and memories in between
  are exactly what the model computes. Returns [] for models without SSR layers.
  """
  layers = ssr_layers(model)
  if not layers:
    return []
  recorded: dict[int, tuple[tf.Tensor, tf.Tensor]] = {}

  def recorder(i: int, layer: SSRLayer):
    original = type(layer).filter_views.__get__(layer)

    def wrapped(x, training=None):
      h = original(x, training=training)
      recorded[i] = (x, h)
      return h
    return wrapped

  for i, layer in enumerate(layers):
    object.__setattr__(layer, "filter_views", recorder(i, layer))
  try:
    model(features, training=False)
  finally:
    for layer in layers:
      object.__delattr__(layer, "filter_views")
  return [recorded[i] for i in sorted(recorded)]


def filtered_views(model: tf.keras.Model, features: dict) -> list[tf.Tensor]:
  """Each SSR layer's filter output h ``[batch, views, filtered_dim]`` (filter_stage)."""
  return [h for _, h in filter_stage(model, features)]


def sparsity_stats(views: list[tf.Tensor]) -> list[dict[str, float]]:
  """[{"sparsity": share of zeros, "magnitude": mean |h| over nonzeros}] per layer."""
  out = []
  for h in views:
    h = tf.cast(h, tf.float32)
    nonzero = tf.cast(tf.not_equal(h, 0.0), tf.float32)
    count = tf.maximum(tf.reduce_sum(nonzero), 1.0)
    out.append({"sparsity": float(1.0 - tf.reduce_mean(nonzero)),
                "magnitude": float(tf.reduce_sum(tf.abs(h)) / count)})
  return out


class ICSSparsityLogger(tf.keras.callbacks.Callback):
  """Logs ``ics/sparsity/layer_<l>`` and ``ics/magnitude/layer_<l>`` to TensorBoard.

  Every `every_n_steps` training steps (and at each epoch end) the model scores the fixed
  `probe` feature batch eagerly and records the share of exact zeros in each SSR layer's
  filtered views and their mean nonzero magnitude. Does nothing for models without SSR
  layers. A probe of 1024 rows costs about one inference step.

  Example:
    >>> features = next(iter(train_ds))[0]
    >>> cb = ICSSparsityLogger(model_dir + "/logs/ics", features, every_n_steps=100)

  Args:
    log_dir: TensorBoard folder (a writer of its own; e.g. model_dir/logs/ics).
    probe: one batch of model inputs (feature dict), e.g. the first training batch.
    every_n_steps: training steps between measurements (>= 1).
    max_probe_rows: rows of `probe` used (bounds the cost).
  """

  def __init__(self, log_dir: str, probe: dict, every_n_steps: int = 100,
               max_probe_rows: int = 1024):
    super().__init__()
    if every_n_steps < 1:
      raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
    self.log_dir = log_dir
    self.probe = {k: v[:max_probe_rows] for k, v in probe.items()}
    self.every_n_steps = int(every_n_steps)
    self.step = 0
    self.history: list[tuple[int, list[dict[str, float]]]] = []
    self._writer: Optional[tf.summary.SummaryWriter] = None

  def _measure(self) -> None:
    stats = sparsity_stats(filtered_views(self.model, self.probe))
    if not stats:
      return
    if self._writer is None:
      self._writer = tf.summary.create_file_writer(self.log_dir)
    # record_if(True): Keras' TensorBoard callback, when present, gates every summary
    # written during fit() on its own update_freq; these points follow every_n_steps.
    with self._writer.as_default(), tf.summary.record_if(True):
      for l, s in enumerate(stats):
        tf.summary.scalar(f"ics/sparsity/layer_{l}", s["sparsity"], step=self.step)
        tf.summary.scalar(f"ics/magnitude/layer_{l}", s["magnitude"], step=self.step)
    self._writer.flush()
    self.history.append((self.step, stats))

  def on_train_begin(self, logs=None):
    opt = getattr(self.model, "optimizer", None)
    if opt is not None and hasattr(opt, "iterations"):
      self.step = int(opt.iterations.numpy())     # resumed runs continue the step axis
    if not self.history:
      self._measure()

  def on_train_batch_end(self, batch, logs=None):
    self.step += 1
    if self.step % self.every_n_steps == 0:
      self._measure()

  def on_epoch_end(self, epoch, logs=None):
    if self.step % self.every_n_steps:
      self._measure()

  def on_train_end(self, logs=None):
    if self._writer is not None:     # kept open: fit() may be called again (chunked epochs)
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


class StepTensorBoard(tf.keras.callbacks.TensorBoard):
  """Keras TensorBoard that does its batch-level work only on the steps it writes.

  Stock TensorBoard, once any other callback has batch hooks (ours do: backups every N
  steps, ICS logging), calls tf.summary.scalar for every log entry on every batch and lets
  its record_if (train step % update_freq == 0) drop all but every update_freq-th: about
  1.7 ms a batch for the demo's five training metrics on a 2-core CPU, a tenth of an SSR-D
  demo step (`ssr_tf bench hooks`). Here the hook returns at once on the steps record_if
  would drop, so the written scalars are the same.
  The train graph is written at the first epoch end instead of after the first batch, so
  its one-off cost stays out of Keras's check of the first batches' hook time (the
  "on_train_batch_end is slow" warning). Profiling and write_steps_per_second keep the
  stock per-batch path.
  """

  def on_train_batch_end(self, batch, logs=None):
    if self._should_trace or self.write_steps_per_second:
      super().on_train_batch_end(batch, logs)
    elif (self.update_freq != "epoch" and isinstance(logs, dict)
          and int(tf.keras.backend.get_value(self._train_step)) % self.update_freq == 0):
      graph_pending, self._should_write_train_graph = self._should_write_train_graph, False
      super().on_train_batch_end(batch, logs)
      self._should_write_train_graph = graph_pending

  def on_epoch_end(self, epoch, logs=None):
    if self._should_write_train_graph:
      self._write_keras_model_train_graph()
      self._should_write_train_graph = False
    super().on_epoch_end(epoch, logs)

  def release(self) -> None:
    """After a fit that raised (Keras then skips on_train_end): pops the summary writer
    Keras made the thread's default, so later tf.functions of this process (an export, say)
    do not capture it."""
    while self._prev_summary_state:          # pylint: disable=protected-access
      self._pop_writer()                     # pylint: disable=protected-access
    self._close_writers()                    # pylint: disable=protected-access


def dynamic_id_tables(model: tf.keras.Model) -> dict:
  """{feature: DynamicIdTable} of the model's dynamic-id features ({} if none)."""
  return dict(getattr(getattr(model, "embedding", None), "id_tables", {}) or {})


class DynamicIdLogger(tf.keras.callbacks.Callback):
  """Logs ``dynamic_ids/<feature>/{occupancy,admissions,evictions}`` to TensorBoard every
  `every_n_steps` steps and at each epoch end: the share of the feature's rows taken, and
  the ids admitted and evicted so far (reads three scalars per feature)."""

  def __init__(self, log_dir: str, every_n_steps: int = 100):
    super().__init__()
    self.log_dir = log_dir
    self.every_n_steps = max(int(every_n_steps), 1)
    self._writer: Optional[tf.summary.SummaryWriter] = None

  def _write(self) -> None:
    tables = dynamic_id_tables(self.model)
    if not tables:
      return
    if self._writer is None:
      self._writer = tf.summary.create_file_writer(self.log_dir)
    step = int(self.model.optimizer.iterations.numpy())
    with self._writer.as_default(), tf.summary.record_if(True):
      for name, table in tables.items():
        for k, v in table.stats().items():
          tf.summary.scalar(f"dynamic_ids/{name}/{k}", float(v.numpy()), step=step)
    self._writer.flush()

  def on_train_batch_end(self, batch, logs=None):
    if int(self.model.optimizer.iterations.numpy()) % self.every_n_steps == 0:
      self._write()

  def on_epoch_end(self, epoch, logs=None):
    self._write()

  def on_train_end(self, logs=None):
    if self._writer is not None:
      self._writer.close()
      self._writer = None


# ---------------------------------------------------------------------------------------
# Run files.


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
  """The records of a JSON-lines file ([] when absent); a torn line is skipped."""
  if not path.exists():
    return []
  out = []
  for line in path.read_text().splitlines():
    try:
      out.append(json.loads(line))
    except ValueError:
      continue
  return out


# ---------------------------------------------------------------------------------------
# The callbacks of a training run (ssr_tf.training.train).


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
