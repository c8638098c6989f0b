"""Learning rates (ssr_tf/schedules.py): the decay curve, composition with warm-up,
serialization, config errors, the rates `ssr_tf train` builds, and a training run that
ends at the configured final rate."""
import json
import math

import numpy as np
import pytest
import tensorflow as tf

from ssr_tf import cli
from ssr_tf.config import DistributionConfig, ExperimentConfig, TrainConfig, load_config
from ssr_tf.errors import ConfigError
from ssr_tf.schedules import DecayedLearningRate, WarmupLearningRate, learning_rates, with_decay


@pytest.mark.parametrize("kind, expect", [
    ("cosine", lambda u, f: f + (1 - f) * 0.5 * (1 + math.cos(math.pi * u))),
    ("linear", lambda u, f: 1 - (1 - f) * u),
])
def test_decay_curve(kind, expect):
  s = with_decay(0.01, kind, 100, 0.1)
  for step in (0, 1, 25, 50, 99, 100, 250):
    u = min(step / 100, 1.0)
    assert float(s(step)) == pytest.approx(0.01 * expect(u, 0.1), rel=1e-6), step
  assert float(s(0)) == pytest.approx(0.01) and float(s(100)) == pytest.approx(0.001)
  values = [float(s(t)) for t in range(0, 101, 5)]
  assert all(a >= b for a, b in zip(values, values[1:]))      # never rises


def test_composes_with_warmup_and_round_trips():
  warm = WarmupLearningRate(0.001, 0.004, warmup_steps=10)
  s = DecayedLearningRate(warm, total_steps=40, kind="linear", final=0.0)
  assert float(s(5)) == pytest.approx(float(warm(5)) * (1 - 5 / 40))
  assert float(s(40)) == 0.0
  again = DecayedLearningRate.from_config(
      json.loads(json.dumps(tf.keras.optimizers.schedules.serialize(s)["config"])))
  assert [float(again(t)) for t in (0, 7, 20, 39)] == pytest.approx(
      [float(s(t)) for t in (0, 7, 20, 39)])
  assert with_decay(0.003, "none", 10, 0.0) == 0.003
  with pytest.raises(ValueError, match="cosine or linear"):
    with_decay(0.003, "step", 10, 0.0)


def test_learning_rates_of_a_run():
  # 4 replicas x 256 at a rate tuned for 256 (linear scaling, 10 warm-up steps); the
  # tables at their own rate; cosine to 0.5 x over 2 epochs of 50 steps.
  cfg = ExperimentConfig(
      train=TrainConfig(learning_rate=1e-3, embedding_learning_rate=0.01, epochs=2,
                        lr_decay="cosine", lr_decay_final=0.5),
      distribution=DistributionConfig(per_replica_batch_size=256, lr_scaling="linear",
                                      lr_warmup_steps=10))
  cfg.data.batch_size = 256
  (dense, table), factor = learning_rates(cfg, global_batch=1024, steps_per_epoch=50)
  assert factor == 4.0
  for rate, base in ((dense, 1e-3), (table, 0.01)):
    f = lambda t: 0.5 + 0.5 * 0.5 * (1 + math.cos(math.pi * min(t / 100, 1)))  # noqa: E731
    want = [base * (1 + 3 * min(t / 10, 1)) * f(t) for t in (0, 5, 10, 50, 100, 150)]
    np.testing.assert_allclose([float(rate(t)) for t in (0, 5, 10, 50, 100, 150)], want,
                               rtol=1e-6)
  (dense, table), factor = learning_rates(ExperimentConfig(), 1024, 10)
  assert (dense, table, factor) == (1e-3, 1e-3, 1.0)            # defaults: constant rate


def test_bad_decay_config_names_the_key(tmp_path):
  p = tmp_path / "c.yaml"
  p.write_text("train: {lr_decay: exponential}\n")
  with pytest.raises(ConfigError, match="'train.lr_decay'.*cosine"):
    load_config(str(p)).validate()
  p.write_text("train: {lr_decay: cosine, lr_decay_final: 1.5}\n")
  with pytest.raises(ConfigError, match="'train.lr_decay_final'"):
    load_config(str(p)).validate()


def test_training_ends_at_the_final_rate(tmp_path, make_config):
  cfg_path = make_config(train={"epochs": 2, "steps_per_epoch": 3, "learning_rate": 0.004,
                                "lr_decay": "cosine", "lr_decay_final": 0.25,
                                "early_stopping_patience": 0, "ics_log_every_steps": 0})
  seen = []

  class Probe(tf.keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
      seen.append(float(self.model.optimizer.learning_rate))   # the rate this step used

  from ssr_tf import training
  state = training.train(load_config(str(cfg_path)), callbacks=[Probe()])
  assert state["completed"] and state["optimizer_iterations"] == 6
  want = [0.004 * (0.25 + 0.75 * 0.5 * (1 + math.cos(math.pi * t / 6))) for t in range(6)]
  np.testing.assert_allclose(seen, want, rtol=1e-5)
  assert cli.main(["evaluate", "--config", str(cfg_path)]) == 0
