"""Fused ssr_tf ops vs the composed-TF references: forward, gradients, training.

ICS: x0 = relu(z); x_{t+1} = relu(x_t - alpha_t mean(x_t)); y = gamma x_T (ics_tf is the reference).
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import ssr_tf  # noqa: F401
import tensorflow as tf

from ssr_tf import ops
from ssr_tf.layers.ics import ICS, ics_tf

pytestmark = pytest.mark.skipif(not ops.is_available(),
                                reason=f"ssr_tf op library not built: {ops.load_error()}")

TOL = dict(rtol=1e-5, atol=1e-5)


def _ics_inputs(b: int, v: int, d: int, t: int, seed: int):
  rng = np.random.default_rng(seed)
  z = rng.standard_normal((b, v, d)).astype(np.float32)
  alpha = rng.uniform(0.05, 0.8, (v, t)).astype(np.float32)
  gamma = rng.uniform(0.5, 1.5, (v, d)).astype(np.float32)
  dy = rng.standard_normal((b, v, d)).astype(np.float32)
  return z, alpha, gamma, dy


def _value_and_grads(fn, inputs, dy):
  ts = [tf.constant(x) for x in inputs]
  with tf.GradientTape() as tape:
    tape.watch(ts)
    y = fn(*ts)
  return y.numpy(), [g.numpy() for g in tape.gradient(y, ts, output_gradients=tf.constant(dy))]


def _rel_close(got: np.ndarray, want: np.ndarray, name: str = "", tol: float = 1e-5) -> None:
  """|got - want| <= tol * max(1, |want|_inf): 1e-5 relative to the tensor's scale."""
  scale = max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
  np.testing.assert_allclose(got, want, rtol=0, atol=tol * scale, err_msg=name)


SHAPES = [  # (B, V, D, T): D off multiples of 8/32, V = 1, B = 1, T in {1, 2, 5}
    (1, 1, 1, 1), (1, 8, 128, 5), (3, 1, 7, 2), (5, 3, 13, 5), (2, 4, 33, 1),
    (17, 8, 100, 5), (64, 3, 9, 2), (4, 2, 257, 5), (130, 5, 31, 1)]


@pytest.mark.parametrize("b,v,d,t", SHAPES)
def test_ics_forward_and_grads_match_tf(b, v, d, t):
  z, alpha, gamma, dy = _ics_inputs(b, v, d, t, seed=b * 1000 + d)
  y1, g1 = _value_and_grads(ops.ics, (z, alpha, gamma), dy)
  y2, g2 = _value_and_grads(ics_tf, (z, alpha, gamma), dy)
  np.testing.assert_allclose(y1, y2, **TOL)
  for name, a, e in zip(("dz", "dalpha", "dgamma"), g1, g2):
    _rel_close(a, e, name)


def test_ics_all_negative_rows_give_zero_output_and_grads():
  z, alpha, gamma, dy = _ics_inputs(6, 3, 20, 5, seed=1)
  z[1] = -np.abs(z[1]) - 0.1          # every view of row 1
  z[4, 2] = -1.0                      # one view of row 4
  y, (dz, dalpha, dgamma) = _value_and_grads(ops.ics, (z, alpha, gamma), dy)
  assert not y[1].any() and not y[4, 2].any() and not dz[1].any() and not dz[4, 2].any()
  y2, g2 = _value_and_grads(ics_tf, (z, alpha, gamma), dy)
  np.testing.assert_allclose(y, y2, **TOL)
  for a, e in zip((dz, dalpha, dgamma), g2):
    _rel_close(a, e)


def test_ics_ties_at_the_threshold_follow_relu_semantics():
  # Integers with D = 8 and alpha = 1 make every mean exact, so entries equal to the mean sit
  # exactly on the threshold: relu(0) = 0 and its gradient is 0 (TF's convention).
  z = np.array([[[1, 1, 2, 2, 3, 3, 4, 0], [2, 2, 2, 2, 2, 2, 2, 2]]], np.float32)  # [1, 2, 8]
  alpha = np.ones((2, 2), np.float32)
  gamma = np.ones((2, 8), np.float32)
  dy = np.arange(16, dtype=np.float32).reshape(1, 2, 8) + 1
  y1, g1 = _value_and_grads(ops.ics, (z, alpha, gamma), dy)
  y2, g2 = _value_and_grads(ics_tf, (z, alpha, gamma), dy)
  np.testing.assert_array_equal(y1, y2)
  assert not y1[0, 1].any()                      # all-equal view dies in round one
  np.testing.assert_array_equal(y1[0, 0], [0, 0, 0, 0, 0.5, 0.5, 1.5, 0])  # mu 2, then 0.5
  for a, e in zip(g1, g2):
    np.testing.assert_allclose(a, e, **TOL)


def test_ics_negative_alpha_and_t_greater_than_dim():
  z, alpha, gamma, dy = _ics_inputs(3, 2, 5, 5, seed=3)
  alpha[0] = -0.3
  y1, g1 = _value_and_grads(ops.ics, (z, alpha, gamma), dy)
  y2, g2 = _value_and_grads(ics_tf, (z, alpha, gamma), dy)
  np.testing.assert_allclose(y1, y2, **TOL)
  for a, e in zip(g1, g2):
    _rel_close(a, e)


def test_ics_compute_gradient():
  z, alpha, gamma, _ = _ics_inputs(2, 2, 6, 2, seed=7)
  z = np.where(np.abs(z) < 0.05, 0.3, z)          # keep the finite differences off the kinks
  for i, arg in enumerate((z, alpha, gamma)):
    def f(x, i=i):
      args = [tf.constant(z), tf.constant(alpha), tf.constant(gamma)]
      args[i] = x
      return ops.ics(*args)
    theo, num = tf.test.compute_gradient(f, [tf.constant(arg)], delta=1e-3)
    np.testing.assert_allclose(theo[0], num[0], atol=5e-3, rtol=5e-3)


def test_dynamic_view_and_block_fusion_compute_gradient():
  rng = np.random.default_rng(11)
  x = rng.standard_normal((3, 4)).astype(np.float32)
  w = rng.standard_normal((4, 2, 5)).astype(np.float32) / 2
  alpha = np.full((2, 2), 0.3, np.float32)
  gamma = rng.uniform(0.5, 1.5, (2, 5)).astype(np.float32)
  for single_op in (False, True):
    f = lambda x, w, a, g, s=single_op: ops.dynamic_view(x, w, a, g, single_op=s)
    theo, num = tf.test.compute_gradient(f, [tf.constant(v) for v in (x, w, alpha, gamma)],
                                         delta=1e-3)
    for t, n in zip(theo, num):
      np.testing.assert_allclose(t, n, atol=1e-2, rtol=1e-2)
  h = rng.standard_normal((3, 2, 4)).astype(np.float32)
  k = rng.standard_normal((2, 4, 3)).astype(np.float32)
  b = rng.standard_normal((2, 3)).astype(np.float32)
  theo, num = tf.test.compute_gradient(ops.block_fusion, [tf.constant(v) for v in (h, k, b)],
                                       delta=1e-2)
  for t, n in zip(theo, num):
    np.testing.assert_allclose(t, n, atol=5e-3, rtol=5e-3)


def _dynamic_ref(x, w, alpha, gamma):
  d_in, v, e = w.shape
  z = tf.reshape(tf.matmul(x, tf.reshape(w, [d_in, v * e])), [-1, v, e])
  return ics_tf(z, alpha, gamma)


@pytest.mark.parametrize("single_op", [False, True])
@pytest.mark.parametrize("b,d_in,v,e,t", [(1, 5, 1, 7, 1), (9, 16, 3, 33, 2), (70, 24, 8, 20, 5),
                                          (300, 7, 2, 12, 5)])
def test_dynamic_view_matches_matmul_then_ics(b, d_in, v, e, t, single_op):
  rng = np.random.default_rng(b + e)
  x = rng.standard_normal((b, d_in)).astype(np.float32)
  w = (rng.standard_normal((d_in, v, e)) / np.sqrt(d_in)).astype(np.float32)
  _, alpha, gamma, dy = _ics_inputs(b, v, e, t, seed=b)
  fused = lambda *args: ops.dynamic_view(*args, single_op=single_op)
  y1, g1 = _value_and_grads(fused, (x, w, alpha, gamma), dy)
  y2, g2 = _value_and_grads(_dynamic_ref, (x, w, alpha, gamma), dy)
  _rel_close(y1, y2)
  for name, a, r in zip(("dx", "dW", "dalpha", "dgamma"), g1, g2):
    _rel_close(a, r, name)


@pytest.mark.parametrize("b,v,e,o", [(1, 1, 3, 2), (7, 3, 13, 5), (600, 8, 32, 16), (40, 2, 0, 3)])
def test_block_fusion_matches_einsum(b, v, e, o):
  rng = np.random.default_rng(b)
  h = rng.standard_normal((b, v, e)).astype(np.float32)
  k = rng.standard_normal((v, e, o)).astype(np.float32)
  bias = rng.standard_normal((v, o)).astype(np.float32)
  dy = rng.standard_normal((b, v, o)).astype(np.float32)
  ref = lambda h, k, bias: tf.einsum("bve,veo->bvo", h, k) + bias[None]
  y1, g1 = _value_and_grads(ops.block_fusion, (h, k, bias), dy)
  y2, g2 = _value_and_grads(ref, (h, k, bias), dy)
  _rel_close(y1, y2)
  for a, r in zip(g1, g2):
    _rel_close(a, r)


def test_shape_inference_and_bad_shapes():
  fn = tf.function(ops.ics, input_signature=[tf.TensorSpec([None, 3, 5]), tf.TensorSpec([3, 2]),
                                             tf.TensorSpec([3, 5])])
  assert fn.get_concrete_function().structured_outputs.shape.as_list() == [None, 3, 5]
  for single_op in (False, True):
    dv = tf.function(lambda *a, s=single_op: ops.dynamic_view(*a, single_op=s), input_signature=[
        tf.TensorSpec([None, 4]), tf.TensorSpec([4, 3, 5]), tf.TensorSpec([3, 2]),
        tf.TensorSpec([3, 5])])
    assert dv.get_concrete_function().structured_outputs.shape.as_list() == [None, 3, 5]
  with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="gamma"):
    ops.ics(tf.zeros([2, 3, 5]), tf.zeros([3, 2]), tf.zeros([3, 4]))
  with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
    ops.block_fusion(tf.zeros([2, 3, 5]), tf.zeros([3, 4, 2]), tf.zeros([3, 2]))


def _train_losses(impl: str, steps: int = 5) -> list[float]:
  tf.keras.utils.set_random_seed(123)
  model = tf.keras.Sequential([
      tf.keras.layers.Dense(4 * 24, input_shape=(10,)),
      tf.keras.layers.Reshape((4, 24)),
      ICS(num_iters=5, alpha_init=0.3, impl=impl),
      tf.keras.layers.Flatten(),
      tf.keras.layers.Dense(1)])
  opt = tf.keras.optimizers.SGD(0.05)
  rng = np.random.default_rng(0)
  x = tf.constant(rng.standard_normal((64, 10)).astype(np.float32))
  y = tf.constant(rng.standard_normal((64, 1)).astype(np.float32))
  losses = []
  for _ in range(steps):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.square(model(x) - y))
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    losses.append(float(loss))
  return losses


def test_training_fused_and_tf_give_the_same_losses():
  fused, ref = _train_losses("fused"), _train_losses("tf")
  np.testing.assert_allclose(fused, ref, rtol=1e-4, atol=1e-4)
  assert fused[-1] < fused[0]


def test_ssr_layer_training_fused_and_tf_give_the_same_losses():
  ssr = pytest.importorskip("ssr_tf.layers.ssr", reason="SSRLayer not in this tree yet")
  rng = np.random.default_rng(1)
  x = tf.constant(rng.standard_normal((48, 20)).astype(np.float32))
  target = tf.constant(rng.standard_normal((48, 1)).astype(np.float32))
  runs = {}
  for impl in ("fused", "tf"):
    tf.keras.utils.set_random_seed(5)
    layer = ssr.SSRLayer("dynamic", num_views=4, view_dim=6, expanded_dim=12, impl=impl, seed=5)
    head = tf.keras.layers.Dense(1)
    opt = tf.keras.optimizers.SGD(0.05)
    losses = []
    for _ in range(4):
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(head(layer(x, training=True)) - target))
      variables = layer.trainable_variables + head.trainable_variables
      opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
      losses.append(float(loss))
    runs[impl] = losses
  np.testing.assert_allclose(runs["fused"], runs["tf"], rtol=1e-4, atol=1e-4)


def test_missing_library_reports_instead_of_raising(tmp_path):
  code = ("from ssr_tf import ops; assert not ops.is_available(); "
          "e = ops.load_error(); assert 'nope.so' in e and 'make ops' in e, e; print('ok')")
  env = {**os.environ, "SSR_TF_OPS_LIB": str(tmp_path / "nope.so"), "TF_CPP_MIN_LOG_LEVEL": "3"}
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120, check=False)
  assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
