"""Learning rates of `ssr_tf train`: batch-size scaling, warm-up and decay.

Every rate the optimizers get is built here (:func:`learning_rates`). For a configured
rate r, the global batch B and the reference batch B_ref
(``distribution.lr_reference_batch_size``, else ``data.batch_size``):

  scaled rate  r' = r * rule(B / B_ref); rule: 1 (none), the ratio (linear), its square root
  warm-up      w(step) = r + (r' - r) min(step / warmup_steps, 1) when
               ``distribution.lr_warmup_steps`` > 0 and r' != r; else w(step) = r'
  decay        lr(step) = w(step) * f(min(step / total_steps, 1)), f(0) = 1, f(1) = final:
               cosine f(u) = final + (1 - final)(1 + cos(pi u)) / 2,
               linear f(u) = 1 - (1 - final) u

The decay is :class:`DecayedLearningRate`, not Keras' ``CosineDecay`` /
``PolynomialDecay``: computed inside the compiled train step, those round differently
(by an ulp at some steps), which changes the trained weights, and ``CosineDecay``'s own
warm-up starts its decay when the warm-up ends, another curve (docs/design.md, Training,
"Learning-rate schedules").
"""
from __future__ import annotations

import math

import tensorflow as tf

from ssr_tf.config import LR_DECAYS as DECAYS
from ssr_tf.config import DistributionConfig, ExperimentConfig

_schedules = tf.keras.optimizers.schedules


def lr_factor(dist: DistributionConfig, global_batch: int, data_batch: int) -> float:
  """rule(global_batch / reference): 1 (none), the ratio (linear) or its square root (sqrt)."""
  ratio = global_batch / float(dist.lr_reference_batch_size or data_batch)
  return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[dist.lr_scaling]


@tf.keras.utils.register_keras_serializable(package="ssr_tf")
class WarmupLearningRate(_schedules.LearningRateSchedule):
  """Linear ramp from `initial` to `target` over `warmup_steps` steps, then `target`."""

  def __init__(self, initial: float, target: float, warmup_steps: int):
    super().__init__()
    self.initial = float(initial)
    self.target = float(target)
    self.warmup_steps = int(warmup_steps)

  def __call__(self, step):
    frac = tf.minimum(tf.cast(step, tf.float32) / float(max(self.warmup_steps, 1)), 1.0)
    return self.initial + (self.target - self.initial) * frac

  def get_config(self):
    return {"initial": self.initial, "target": self.target, "warmup_steps": self.warmup_steps}


def learning_rate(dist: DistributionConfig, base_lr: float, global_batch: int, data_batch: int):
  """(the scaled rate: a float, or a warm-up schedule; the scale factor)."""
  factor = lr_factor(dist, global_batch, data_batch)
  if dist.lr_warmup_steps and factor != 1.0:
    return WarmupLearningRate(base_lr, base_lr * factor, dist.lr_warmup_steps), factor
  return base_lr * factor, factor


@tf.keras.utils.register_keras_serializable(package="ssr_tf")
class DecayedLearningRate(_schedules.LearningRateSchedule):
  """``base(step) * f(step / total_steps)``; f is cosine or linear from 1 to `final`.

  `base` is a float or another schedule (the warm-up).
  """

  def __init__(self, base, total_steps: int, kind: str = "cosine", final: float = 0.0):
    super().__init__()
    if kind not in DECAYS[1:]:
      raise ValueError(f"decay kind must be cosine or linear, got {kind!r}")
    if total_steps < 1:
      raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if isinstance(base, dict):
      base = _schedules.deserialize(base)
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
    base = (_schedules.serialize(self.base)
            if isinstance(self.base, _schedules.LearningRateSchedule) else self.base)
    return {"base": base, "total_steps": self.total_steps, "kind": self.kind,
            "final": self.final}


def with_decay(learning_rate, decay: str, total_steps: int, final: float):
  """`learning_rate` (a float or a schedule) decayed over `total_steps` down to
  `final` x itself; unchanged for decay "none"."""
  if decay == "none":
    return learning_rate
  return DecayedLearningRate(learning_rate, total_steps, decay, final)


def learning_rates(cfg: ExperimentConfig, global_batch: int, steps_per_epoch: int):
  """((dense rate, embedding rate), scale factor): train.learning_rate and
  train.embedding_learning_rate (0: the same), each scaled, warmed up and decayed alike."""
  t = cfg.train
  rates = []
  for base in (t.learning_rate, t.embedding_learning_rate or t.learning_rate):
    lr, factor = learning_rate(cfg.distribution, base, global_batch, cfg.data.batch_size)
    rates.append(with_decay(lr, t.lr_decay, t.epochs * steps_per_epoch, t.lr_decay_final))
  return tuple(rates), factor
