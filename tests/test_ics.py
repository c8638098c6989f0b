"""ICS against a NumPy transcription of Algorithm 1, forward and backward."""
import numpy as np
import pytest
import tensorflow as tf

from ssr_tf.layers.ics import ICS, ics_tf


def ics_numpy(z, alpha, gamma):
  """Algorithm 1, per row and view; returns y and the states needed for the backward."""
  x = np.maximum(z, 0.0)
  states = []
  for t in range(alpha.shape[1]):
    mu = x.mean(axis=-1, keepdims=True)
    u = x - alpha[None, :, t, None] * mu
    states.append((x, mu, u))
    x = np.maximum(u, 0.0)
  return gamma[None] * x, x, states


def ics_numpy_grad(z, alpha, gamma, dy):
  """Hand-derived backward of Algorithm 1 (ReLU'(0) = 0, as TF)."""
  _, x_last, states = ics_numpy(z, alpha, gamma)
  d = z.shape[-1]
  dgamma = (dy * x_last).sum(0)
  dx = dy * gamma[None]
  dalpha = np.zeros_like(alpha)
  for t in reversed(range(alpha.shape[1])):
    _, mu, u = states[t]
    du = dx * (u > 0)
    dalpha[:, t] = (-(du * mu)).sum(axis=(0, 2))
    dmu = -alpha[None, :, t, None] * du.sum(-1, keepdims=True)
    dx = du + dmu / d
  dz = dx * (z > 0)
  return dz, dalpha, dgamma


CASES = [
    ("random", (5, 3, 16), 5),
    ("odd_dim_T1", (4, 2, 13), 1),
    ("T2_single_view", (3, 1, 7), 2),
    ("batch1", (1, 4, 33), 5),
]


def _inputs(shape, T, kind, seed=0):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=shape).astype(np.float64)
  if kind == "all_negative":
    z = -np.abs(z) - 0.1
  if kind == "ties":
    z = np.round(z * 2) / 2            # many equal values
  alpha = rng.uniform(0.05, 0.6, size=(shape[1], T))
  gamma = rng.uniform(0.5, 1.5, size=(shape[1], shape[2]))
  return z, alpha, gamma


@pytest.mark.parametrize("name,shape,T", CASES + [("all_negative", (3, 2, 9), 5),
                                                  ("ties", (6, 3, 10), 5)])
def test_forward_and_gradients_match_numpy(name, shape, T):
  z, alpha, gamma = _inputs(shape, T, name)
  dy = np.random.default_rng(1).normal(size=shape)
  zt, at, gt = (tf.Variable(v) for v in (z, alpha, gamma))
  with tf.GradientTape() as tape:
    y = ics_tf(zt, at, gt)
    loss = tf.reduce_sum(y * dy)
  grads = tape.gradient(loss, [zt, at, gt])
  y_np = ics_numpy(z, alpha, gamma)[0]
  np.testing.assert_allclose(y.numpy(), y_np, rtol=1e-10, atol=1e-12)
  for got, want in zip(grads, ics_numpy_grad(z, alpha, gamma, dy)):
    np.testing.assert_allclose(tf.convert_to_tensor(got).numpy(), want, rtol=1e-9, atol=1e-10)
  if name == "all_negative":
    assert not y.numpy().any()


def test_hand_computed_example():
  # One view, dims [4, 2, 0, -1]; x0 = [4, 2, 0, 0], mu = 1.5, alpha = 1 -> [2.5, .5, 0, 0]
  # T=2: mu = .75 -> [1.75, 0, 0, 0]; gamma = 2 -> [3.5, 0, 0, 0].
  y = ics_tf(tf.constant([[[4., 2., 0., -1.]]]), tf.constant([[1.0, 1.0]]),
             tf.fill([1, 4], 2.0))
  np.testing.assert_allclose(y.numpy(), [[[3.5, 0, 0, 0]]])


def test_layer_weights_init_and_config():
  layer = ICS(num_iters=5, alpha_init=0.1)
  y = layer(tf.random.normal([2, 3, 8]))
  assert y.shape == (2, 3, 8)
  assert layer.alpha.shape == (3, 5) and np.allclose(layer.alpha.numpy(), 0.1)
  assert layer.gamma.shape == (3, 8) and np.allclose(layer.gamma.numpy(), 1.0)
  clone = ICS.from_config(layer.get_config())
  assert clone.get_config() == layer.get_config()
  with pytest.raises(ValueError, match="num_iters"):
    ICS(num_iters=0)


def test_energy_never_increases():
  z = tf.random.normal([64, 4, 32], seed=1)
  x = tf.nn.relu(z)
  y = ics_tf(z, tf.fill([4, 5], 0.1), tf.ones([4, 32]))
  assert np.all(tf.reduce_sum(y, -1).numpy() <= tf.reduce_sum(x, -1).numpy() + 1e-6)
