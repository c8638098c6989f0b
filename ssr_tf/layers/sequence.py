"""Target attention over a behaviour history (DIN, Zhou et al., KDD 2018).

Each history item gets a scalar weight from a small MLP over the item and the candidate
(the target); the weighted items are summed. As in DIN the weights are not normalised
by default (no softmax), so the pooled vector keeps the intensity of the user's interest;
``softmax=True`` normalises them over the present items, so the pooled vector is a
weighted mean whose scale does not grow with the history's length.
"""
from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="ssr_tf")
class TargetAttention(tf.keras.layers.Layer):
  """DIN's local activation unit: ``out = sum_l m_l * MLP([h_l, t, h_l - t, h_l * t]) * h_l``
  (``softmax``: the weights ``softmax_l(MLP(...))`` over the present positions instead).

  ``h_l`` is the embedding of history position l, ``t`` the target's, ``m_l`` 1 for a
  present item and 0 for padding (its weight is exactly 0). The MLP has ``units`` hidden
  layers with ``activation`` (sigmoid, as DIN's published code) and a linear scalar output.

  Args:
    units: hidden layer sizes of the attention MLP.
    activation: activation of the hidden layers.
    softmax: normalise the weights over the present items (a history with no present
      item pools to 0).

  Call arguments:
    history: ``[batch, L, d]`` per-position embeddings.
    target: ``[batch, d]`` target embedding.
    mask: ``[batch, L]`` bool or 0/1, True for present items; None: all present.

  Returns ``[batch, d]``; :meth:`weights_of` gives the ``[batch, L]`` weights.
  """

  def __init__(self, units: Sequence[int] = (80, 40), activation: str = "sigmoid",
               softmax: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.units = [int(u) for u in units]
    self.activation = activation
    self.softmax = bool(softmax)
    self.hidden = [tf.keras.layers.Dense(u, activation=activation, name=f"hidden_{i}")
                   for i, u in enumerate(self.units)]
    self.score = tf.keras.layers.Dense(1, name="score")

  def build(self, input_shape):
    d = int(input_shape[-1])
    shape = tf.TensorShape([None, None, 4 * d])
    for layer in [*self.hidden, self.score]:
      with tf.name_scope(layer.name):
        layer.build(shape)
      shape = layer.compute_output_shape(shape)
    super().build(input_shape)

  def weights_of(self, history: tf.Tensor, target: tf.Tensor,
                 mask: Optional[tf.Tensor] = None) -> tf.Tensor:
    """``[batch, L]`` attention weights, 0 at masked positions."""
    t = tf.broadcast_to(target[:, None, :], tf.shape(history))          # [batch, L, d]
    x = tf.concat([history, t, history - t, history * t], axis=-1)     # [batch, L, 4d]
    for layer in self.hidden:
      x = layer(x)                                                     # [batch, L, units]
    w = tf.squeeze(self.score(x), -1)                                  # [batch, L]
    if mask is None:
      return tf.nn.softmax(w, axis=-1) if self.softmax else w
    present = tf.cast(mask, tf.bool)
    if self.softmax:
      w = tf.nn.softmax(tf.where(present, w, w.dtype.min), axis=-1)
    return tf.where(present, w, tf.zeros_like(w))

  def call(self, history: tf.Tensor, target: tf.Tensor,
           mask: Optional[tf.Tensor] = None) -> tf.Tensor:
    w = self.weights_of(history, target, mask)
    return tf.einsum("bl,bld->bd", w, history)                         # [batch, d]

  def compute_mask(self, inputs, mask=None):
    return None

  def get_config(self):
    return {**super().get_config(), "units": self.units, "activation": self.activation,
            "softmax": self.softmax}
