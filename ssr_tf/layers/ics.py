"""Iterative Competitive Sparse (ICS), Algorithm 1 of the SSR paper.

x0 = ReLU(z);  for t < T: mu_t = mean_d(x_t);  x_{t+1} = ReLU(x_t - alpha_t * mu_t);  y = gamma * x_T
"""
from __future__ import annotations

import tensorflow as tf

from ssr_tf.layers import _impl


def ics_tf(z: tf.Tensor, alpha: tf.Tensor, gamma: tf.Tensor) -> tf.Tensor:
  """Composed-TF ICS, the reference every fused kernel is checked against.

  Args:
    z: [batch, views, dim] pre-activations.
    alpha: [views, T] extinction rates.
    gamma: [views, dim] recovery scales.
  Returns:
    [batch, views, dim] sparse outputs.
  """
  x = tf.nn.relu(z)                                     # [batch, views, dim]
  for t in range(alpha.shape[-1]):
    mu = tf.reduce_mean(x, axis=-1, keepdims=True)      # [batch, views, 1]
    x = tf.nn.relu(x - alpha[:, t][None, :, None] * mu)
  return gamma[None] * x


@tf.keras.utils.register_keras_serializable(package="ssr_tf")
class ICS(tf.keras.layers.Layer):
  """ICS over the last axis of ``[batch, views, dim]``, one alpha row and gamma row per view.

  Example:
    >>> y = ICS(num_iters=5)(tf.random.normal([4, 8, 64]))   # [4, 8, 64], mostly zeros

  Args:
    num_iters: T, competition rounds.
    alpha_init: initial extinction rate of every round (paper: 0.1).
    use_gamma: learn the recovery scale gamma (init 1); False fixes gamma = 1 (Table 5 C).
    impl: "tf" (composed ops), "fused" (custom op, fails if missing) or "auto".
  """

  def __init__(self, num_iters: int = 5, alpha_init: float = 0.1, use_gamma: bool = True,
               impl: str = "auto", **kwargs):
    super().__init__(**kwargs)
    if num_iters < 1:
      raise ValueError(f"num_iters must be >= 1, got {num_iters}")
    self.num_iters = int(num_iters)
    self.alpha_init = float(alpha_init)
    self.use_gamma = bool(use_gamma)
    self.impl = _impl.check(impl)

  def build(self, input_shape):
    if len(input_shape) != 3:
      raise ValueError(f"ICS expects [batch, views, dim], got {input_shape}")
    views, dim = int(input_shape[1]), int(input_shape[2])
    self.alpha = self.add_weight(
        "alpha", shape=[views, self.num_iters],
        initializer=tf.keras.initializers.Constant(self.alpha_init))
    self.gamma = self.add_weight("gamma", shape=[views, dim], initializer="ones",
                                 trainable=self.use_gamma)
    super().build(input_shape)

  def call(self, z):
    z = tf.cast(z, self.compute_dtype)
    if _impl.use_fused(self.impl):
      from ssr_tf import ops  # pylint: disable=import-outside-toplevel
      return ops.ics(z, self.alpha, self.gamma)
    return ics_tf(z, self.alpha, self.gamma)

  def get_config(self):
    return {**super().get_config(), "num_iters": self.num_iters, "alpha_init": self.alpha_init,
            "use_gamma": self.use_gamma, "impl": self.impl}
