"""Training callbacks: ICS sparsity per SSR layer (Figure 5), and a TensorBoard callback
whose batch hook costs nothing on the steps it does not write.

sparsity_l = mean_{batch, view, dim} [h_l == 0];  magnitude_l = mean |h_l| over nonzeros,
where h_l = ICS_l(x_l W_l^proj) is SSR layer l's filtered view tensor on a fixed probe batch.
"""
from __future__ import annotations

from typing import Optional

import tensorflow as tf

from ssr_tf.layers.ssr import SSRLayer


def ssr_layers(model: tf.keras.Model) -> list[SSRLayer]:
  """The model's SSR layers in creation (= forward) order."""
  return [m for m in model.submodules if isinstance(m, SSRLayer)]


def filtered_views(model: tf.keras.Model, features: dict) -> list[tf.Tensor]:
  """Each SSR layer's filter output h ``[batch, views, filtered_dim]`` for `features`.

  Runs the model eagerly once (inference mode) while each layer's ``filter_views`` is
  wrapped to record its result, so residual wiring and memories in between are exactly
  what the model computes. Returns [] for models without SSR layers.
  """
  layers = ssr_layers(model)
  if not layers:
    return []
  recorded: dict[int, tf.Tensor] = {}

  def recorder(i: int, layer: SSRLayer):
    original = type(layer).filter_views.__get__(layer)

    def wrapped(x, training=None):
      h = original(x, training=training)
      recorded[i] = h
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
    self.last: dict[str, dict[str, float]] = {}

  def _write(self) -> None:
    tables = dynamic_id_tables(self.model)
    if not tables:
      return
    if self._writer is None:
      self._writer = tf.summary.create_file_writer(self.log_dir)
    step = int(self.model.optimizer.iterations.numpy())
    with self._writer.as_default(), tf.summary.record_if(True):
      for name, table in tables.items():
        stats = {k: float(v.numpy()) for k, v in table.stats().items()}
        for k, v in stats.items():
          tf.summary.scalar(f"dynamic_ids/{name}/{k}", v, step=step)
        self.last[name] = stats
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
