"""Gradients of the ssr_tf ops, registered with `tf.RegisterGradient` (imported by the loader).

SsrIcs:          (dz, dalpha, dgamma) = SsrIcsGrad(z, alpha, gamma, mu, dy)
SsrDynamicView:  dz as above on the saved z and mu; dx = dz W^T; dW = x^T dz
The means mu are saved state, not differentiated (their incoming gradient is ignored).
SsrBlockFusion:  (dh, dkernel, dbias) = SsrBlockFusionGrad(h, kernel, dout)
"""
from __future__ import annotations

import tensorflow as tf

from ssr_tf.ops import ssr_ops


@tf.RegisterGradient("SsrIcs")
def _ics_grad(op: tf.Operation, dy: tf.Tensor, _dmu: tf.Tensor | None) -> list[tf.Tensor]:
  z, alpha, gamma = op.inputs
  if dy is None:
    dy = tf.zeros_like(z)
  dz, dalpha, dgamma = ssr_ops.op_library().ssr_ics_grad(
      z=z, alpha=alpha, gamma=gamma, mu=op.outputs[1], dy=dy)
  return [dz, dalpha, dgamma]


@tf.RegisterGradient("SsrDynamicView")
def _dynamic_view_grad(op: tf.Operation, dy: tf.Tensor, dz_direct: tf.Tensor | None,
                       _dmu: tf.Tensor | None) -> list[tf.Tensor]:
  x, w, alpha, gamma = op.inputs
  z, mu = op.outputs[1], op.outputs[2]
  if dy is None:
    dy = tf.zeros_like(z)
  dz, dalpha, dgamma = ssr_ops.op_library().ssr_ics_grad(z=z, alpha=alpha, gamma=gamma, mu=mu,
                                                         dy=dy)
  if dz_direct is not None:
    dz = dz + dz_direct
  d_in = tf.shape(w)[0]
  cols = tf.shape(w)[1] * tf.shape(w)[2]
  dz2 = tf.reshape(dz, [-1, cols])                                   # [batch, V*E]
  w2 = tf.reshape(w, [d_in, cols])                                   # [d_in, V*E]
  dx = tf.matmul(dz2, w2, transpose_b=True)                          # [batch, d_in]
  dw = tf.reshape(tf.matmul(x, dz2, transpose_a=True), tf.shape(w))  # [d_in, V, E]
  return [dx, dw, dalpha, dgamma]


@tf.RegisterGradient("SsrBlockFusion")
def _block_fusion_grad(op: tf.Operation, dout: tf.Tensor) -> list[tf.Tensor]:
  h, kernel, _ = op.inputs
  dh, dkernel, dbias = ssr_ops.op_library().ssr_block_fusion_grad(h=h, kernel=kernel, dout=dout)
  return [dh, dkernel, dbias]
