"""The private tf-keras attributes and methods ssr_tf relies on (docs/design.md, "Private
Keras internals we rely on"): each exists and behaves as ssr_tf uses it, so a tf-keras
upgrade that changes one fails here, by name, before anything trains wrongly."""
import numpy as np
import tensorflow as tf

from ssr_tf.callbacks import resume_point

legacy = tf.keras.optimizers.legacy


def _model() -> tf.keras.Model:
  tf.keras.utils.set_random_seed(0)
  model = tf.keras.Sequential([tf.keras.layers.Dense(2, input_shape=(3,))])
  model.compile(optimizer=legacy.Adam(), loss="mse")
  return model


# ---------------------------------------------------------------------------------------
# Callbacks (ssr_tf/callbacks.py).


def test_backup_and_restore_training_state(tmp_path):
  """ResumableBackup: `_training_state`, its `_ckpt_saved_epoch` / `_ckpt_saved_batch`
  variables and `back_up(epoch, batch)`, `_current_epoch`; resume_point reads the
  checkpoint they write (BACKUP/chief, keys ckpt_saved_{epoch,batch})."""
  model = _model()
  cb = tf.keras.callbacks.BackupAndRestore(str(tmp_path), save_freq=5, delete_checkpoint=False)
  cb.set_model(model)
  cb.on_train_begin()
  cb.on_epoch_begin(3)
  assert cb._current_epoch == 3                       # pylint: disable=protected-access
  state = cb._training_state                          # pylint: disable=protected-access
  for var in (state._ckpt_saved_epoch, state._ckpt_saved_batch):  # pylint: disable=protected-access
    assert isinstance(var, tf.Variable) and var.dtype == tf.int64
  state._ckpt_saved_epoch.assign(3)                   # pylint: disable=protected-access
  state._ckpt_saved_batch.assign(4)                   # pylint: disable=protected-access
  state.back_up(epoch=3, batch=4)
  assert (tmp_path / "chief").is_dir()
  assert resume_point(str(tmp_path), steps_per_epoch=10) == (3, 5)
  assert resume_point(str(tmp_path), steps_per_epoch=5) == (4, 0)   # the epoch's last step


def test_tensorboard_batch_hook_state(tmp_path):
  """StepTensorBoard: `_train_step` (the model's train counter), `_should_trace`,
  `_should_write_train_graph` and `_write_keras_model_train_graph()`."""
  model = _model()
  cb = tf.keras.callbacks.TensorBoard(str(tmp_path), update_freq=3)
  cb.set_model(model)
  cb.on_train_begin()
  assert cb._train_step is model._train_counter      # pylint: disable=protected-access
  assert int(tf.keras.backend.get_value(cb._train_step)) == 0  # pylint: disable=protected-access
  assert cb._should_trace is False                    # pylint: disable=protected-access
  assert cb._should_write_train_graph is True         # pylint: disable=protected-access
  assert callable(cb._write_keras_model_train_graph)  # pylint: disable=protected-access
  cb.on_train_end()                                   # pops the writer on_train_begin pushed
  model.fit(np.ones((6, 3)), np.ones((6, 2)), batch_size=2, verbose=0)
  assert int(tf.keras.backend.get_value(cb._train_step)) == 3  # pylint: disable=protected-access


def test_early_stopping_counters():
  """ResumableEarlyStopping saves and restores `wait`, `best`, `best_epoch` (public names,
  undocumented state) across a restart."""
  cb = tf.keras.callbacks.EarlyStopping(monitor="val_click_auc", mode="max", patience=2)
  cb.set_model(_model())
  cb.on_train_begin()
  cb.on_epoch_end(0, {"val_click_auc": 0.7})
  cb.on_epoch_end(1, {"val_click_auc": 0.6})
  assert (cb.wait, cb.best, cb.best_epoch) == (1, 0.7, 0)


# ---------------------------------------------------------------------------------------
# The model (ssr_tf/models/ranker.py).


class _Reporting(tf.keras.layers.Layer):
  def call(self, x):
    self.add_metric(tf.reduce_mean(x), name="usage")
    return x


def test_layer_metrics_are_found_through_flatten_layers():
  """RankingModel.metrics: `Model._flatten_layers()` reaches nested layers and
  `Layer._metrics` holds what a layer reports through add_metric."""
  inner = _Reporting()
  model = tf.keras.Sequential([tf.keras.Sequential([inner])])
  model(tf.ones([2, 3]))
  assert inner in list(model._flatten_layers())       # pylint: disable=protected-access
  names = [m.name for m in inner._metrics]            # pylint: disable=protected-access
  assert names == ["usage"]


# ---------------------------------------------------------------------------------------
# Optimizers (ssr_tf/optimizers.py, ssr_tf/distribute.py).


def test_sparse_update_hooks_are_called():
  """Keras calls `_resource_apply_sparse_duplicate_indices` for IndexedSlices (duplicates
  unsummed), whose OptimizerV2 default sums them before `_resource_apply_sparse` (LazyAdam,
  Adagrad and Ftrl rely on it); LazyAdam overrides `_resource_apply_sparse` /
  `_resource_apply_dense`."""
  calls = []

  class Spy(legacy.Adam):
    def _resource_apply_sparse_duplicate_indices(self, grad, handle, indices, **kwargs):
      calls.append(("sparse", indices.numpy().tolist()))
      return super()._resource_apply_sparse_duplicate_indices(grad, handle, indices, **kwargs)

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
      calls.append(("summed", indices.numpy().tolist(), grad.numpy().tolist()))
      return super()._resource_apply_sparse(grad, var, indices, apply_state)

    def _resource_apply_dense(self, grad, var, apply_state=None):
      calls.append(("dense", None))
      return super()._resource_apply_dense(grad, var, apply_state)

  table = tf.Variable(tf.zeros([4, 2]))
  grad = tf.IndexedSlices(tf.ones([3, 2]), tf.constant([1, 1, 3]), tf.constant([4, 2]))
  Spy().apply_gradients([(grad, table)])
  Spy().apply_gradients([(tf.ones([4, 2]), table)])
  assert calls == [("sparse", [1, 1, 3]), ("summed", [1, 3], [[2.0, 2.0], [1.0, 1.0]]),
                   ("dense", None)]
  for cls in (legacy.Adam, legacy.Adagrad, legacy.Ftrl):
    assert callable(getattr(cls, "_resource_apply_sparse"))


def test_adam_apply_state_and_scatter_update():
  """LazyAdam reads Adam's per-step coefficients from `_fallback_apply_state(device,
  dtype)` and writes rows with `_resource_scatter_update`."""
  opt = legacy.Adam(learning_rate=0.1, beta_1=0.8, beta_2=0.9, epsilon=1e-6)
  var = tf.Variable(tf.zeros([3, 2]))
  opt._create_all_weights([var])                      # pylint: disable=protected-access
  coef = opt._fallback_apply_state(var.device, var.dtype.base_dtype)  # pylint: disable=protected-access
  for key in ("lr", "epsilon", "beta_1_t", "beta_2_t", "one_minus_beta_1_t",
              "one_minus_beta_2_t"):
    assert key in coef, key
  np.testing.assert_allclose(float(coef["one_minus_beta_1_t"]), 0.2, rtol=1e-6)
  # lr folds in the bias correction of step 1: 0.1 * sqrt(1 - 0.9) / (1 - 0.8).
  np.testing.assert_allclose(float(coef["lr"]), 0.1 * np.sqrt(0.1) / 0.2, rtol=1e-5)
  opt._resource_scatter_update(var, tf.constant([2]), tf.ones([1, 2]))  # pylint: disable=protected-access
  np.testing.assert_array_equal(var.numpy(), [[0, 0], [0, 0], [1, 1]])


def test_slots_hyperparameters_and_aggregation_hook():
  """reset_rows: `_create_all_weights([var])` creates a table's slots, Adagrad's and Ftrl's
  `_initial_accumulator_value`; RankingOptimizer.learning_rate: `_get_hyper("learning_rate")`
  returns the schedule itself; DistributedGradients: `_aggregate_gradients`."""
  var = tf.Variable(tf.zeros([3, 2]))
  adam = legacy.Adam()
  adam._create_all_weights([var])                     # pylint: disable=protected-access
  assert adam.get_slot(var, "m").shape == (3, 2) and adam.get_slot_names() == ["m", "v"]
  assert legacy.Adagrad(initial_accumulator_value=0.3)._initial_accumulator_value == 0.3  # pylint: disable=protected-access
  assert legacy.Ftrl(initial_accumulator_value=0.2)._initial_accumulator_value == 0.2  # pylint: disable=protected-access
  schedule = tf.keras.optimizers.schedules.CosineDecay(0.1, 10)
  assert legacy.Adam(schedule)._get_hyper("learning_rate") is schedule  # pylint: disable=protected-access
  assert float(legacy.Adam(0.25)._get_hyper("learning_rate")) == 0.25  # pylint: disable=protected-access
  assert callable(legacy.Adam._aggregate_gradients)   # pylint: disable=protected-access


# ---------------------------------------------------------------------------------------
# Warm start (ssr_tf/warm_start.py).


def test_trackable_children_name_the_optimizer():
  """warm_start.load_weights: `Model._trackable_children()` maps attribute names to the
  model's tracked children, the compiled optimizer under "optimizer"."""
  model = _model()
  model.optimizer.apply_gradients(zip([tf.zeros_like(v) for v in model.trainable_variables],
                                      model.trainable_variables))
  children = model._trackable_children()              # pylint: disable=protected-access
  assert children["optimizer"] is model.optimizer
  assert any(child is model.layers[0] for child in children.values())
