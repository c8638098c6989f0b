"""Learning-rate decay over the whole run (`train.lr_decay`).

lr(step) = base(step) * f(min(step / total_steps, 1)), with f(0) = 1 and f(1) = final:
cosine f(u) = final + (1 - final)(1 + cos(pi u)) / 2, linear f(u) = 1 - (1 - final) u.
`base` is the configured rate: a float, or another schedule (e.g. the distributed warm-up).
"""
from __future__ import annotations

import math

import tensorflow as tf

from ssr_tf.config import LR_DECAYS as DECAYS


@tf.keras.utils.register_keras_serializable(package="ssr_tf")
class DecayedLearningRate(tf.keras.optimizers.schedules.LearningRateSchedule):
  """``base(step) * f(step / total_steps)``; f is cosine or linear from 1 to `final`."""

  def __init__(self, base, total_steps: int, kind: str = "cosine", final: float = 0.0):
    super().__init__()
    if kind not in DECAYS[1:]:
      raise ValueError(f"decay kind must be cosine or linear, got {kind!r}")
    if total_steps < 1:
      raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if isinstance(base, dict):
      base = tf.keras.optimizers.schedules.deserialize(base)
    self.base = base
    self.total_steps = int(total_steps)
    self.kind = kind
    self.final = float(final)

  def factor(self, step) -> tf.Tensor:
    """f(step / total_steps), clipped at the end of the run."""
    u = tf.minimum(tf.cast(step, tf.float32) / float(self.total_steps), 1.0)
    if self.kind == "cosine":
      return self.final + (1.0 - self.final) * 0.5 * (1.0 + tf.cos(math.pi * u))
    return 1.0 - (1.0 - self.final) * u

  def __call__(self, step):
    base = self.base(step) if callable(self.base) else tf.constant(self.base, tf.float32)
    return tf.cast(base, tf.float32) * self.factor(step)

  def get_config(self):
    base = (tf.keras.optimizers.schedules.serialize(self.base)
            if isinstance(self.base, tf.keras.optimizers.schedules.LearningRateSchedule)
            else self.base)
    return {"base": base, "total_steps": self.total_steps, "kind": self.kind,
            "final": self.final}


def with_decay(learning_rate, decay: str, total_steps: int, final: float):
  """`learning_rate` unchanged for decay "none", else wrapped in DecayedLearningRate."""
  if decay == "none":
    return learning_rate
  return DecayedLearningRate(learning_rate, total_steps, decay, final)
