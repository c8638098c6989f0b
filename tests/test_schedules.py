"""train.lr_decay: the decay curve, composition with warm-up, serialization, config
errors, and a training run that ends at the configured final rate."""
import json
import math

import numpy as np
import pytest
import tensorflow as tf

from ssr_tf import cli
from ssr_tf.config import load_config
from ssr_tf.distribute import WarmupLearningRate
from ssr_tf.errors import ConfigError
from ssr_tf.schedules import DecayedLearningRate, with_decay


@pytest.mark.parametrize("kind, expect", [
    ("cosine", lambda u, f: f + (1 - f) * 0.5 * (1 + math.cos(math.pi * u))),
    ("linear", lambda u, f: 1 - (1 - f) * u),
])
def test_decay_curve(kind, expect):
  s = DecayedLearningRate(0.01, total_steps=100, kind=kind, final=0.1)
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
