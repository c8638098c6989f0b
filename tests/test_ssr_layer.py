"""SSR layer: static gather == 0/1 selection matrices, block-diagonal fusion, save/load."""
import numpy as np
import pytest
import tensorflow as tf

from ssr_tf.layers.ssr import SSRLayer, block_fusion_tf, static_indices, topk_ste


def test_static_indices_unique_within_view_and_reproducible():
  idx = static_indices(50, num_views=16, view_dim=20, seed=7)
  assert idx.shape == (16, 20)
  for row in idx:
    assert len(set(row.tolist())) == 20
    assert row.min() >= 0 and row.max() < 50
  np.testing.assert_array_equal(idx, static_indices(50, 16, 20, seed=7))
  assert not np.array_equal(idx, static_indices(50, 16, 20, seed=8))
  assert len({tuple(r) for r in idx}) > 1            # views drawn independently
  with pytest.raises(ValueError, match="view_dim"):
    static_indices(10, 2, 11, seed=0)


def test_static_filter_equals_selection_matrices():
  layer = SSRLayer("static", num_views=3, view_dim=5, seed=1)
  x = tf.random.normal([4, 12], seed=2)
  layer(x)
  h = layer.filter_views(x).numpy()
  for i, cols in enumerate(layer.indices.numpy()):
    m = np.zeros([12, 5])
    m[cols, np.arange(5)] = 1.0                     # each column one-hot
    np.testing.assert_allclose(h[:, i], x.numpy() @ m, rtol=1e-6)


def test_block_fusion_equals_dense_block_diagonal():
  rng = np.random.default_rng(0)
  h = rng.normal(size=(6, 3, 4)).astype(np.float32)
  k = rng.normal(size=(3, 4, 5)).astype(np.float32)
  b = rng.normal(size=(3, 5)).astype(np.float32)
  dense = np.zeros([12, 15], np.float32)
  for v in range(3):
    dense[v * 4:(v + 1) * 4, v * 5:(v + 1) * 5] = k[v]
  want = (h.reshape(6, 12) @ dense + b.reshape(15)).reshape(6, 3, 5)
  np.testing.assert_allclose(block_fusion_tf(h, k, b).numpy(), want, rtol=1e-5, atol=1e-5)


def test_dynamic_layer_shapes_weights_and_views_differ():
  layer = SSRLayer("dynamic", num_views=4, view_dim=8, seed=0)
  y = layer(tf.random.normal([3, 20]))
  assert y.shape == (3, 32)
  assert layer.proj_kernel.shape == (20, 4, 16)
  assert layer.fusion_kernel.shape == (4, 16, 8)
  assert layer.alpha.shape == (4, 5) and layer.gamma.shape == (4, 16)
  k = layer.proj_kernel.numpy()
  assert not np.allclose(k[:, 0], k[:, 1])          # no two views start identical
  # LayerNorm per view: each view's output has ~zero mean, unit variance.
  per_view = y.numpy().reshape(3, 4, 8)
  np.testing.assert_allclose(per_view.mean(-1), 0, atol=1e-4)


def test_dynamic_is_projection_then_ics_then_fusion():
  from ssr_tf.layers.ics import ics_tf
  layer = SSRLayer("dynamic", num_views=2, view_dim=3, expanded_dim=5, seed=0,
                   activation="linear")
  x = tf.random.normal([4, 6], seed=3)
  y = layer(x)
  z = np.einsum("bd,dve->bve", x.numpy(), layer.proj_kernel.numpy())
  h = ics_tf(tf.constant(z), layer.alpha, layer.gamma).numpy()
  f = np.einsum("bve,veo->bvo", h, layer.fusion_kernel.numpy()) + layer.fusion_bias.numpy()
  f = (f - f.mean(-1, keepdims=True)) / np.sqrt(f.var(-1, keepdims=True) + 1e-3)
  np.testing.assert_allclose(y.numpy(), f.reshape(4, 6), rtol=1e-4, atol=1e-4)


def test_indices_survive_checkpoint_and_savedmodel(tmp_path):
  inp = tf.keras.Input([30])
  model = tf.keras.Model(inp, SSRLayer("static", num_views=4, view_dim=6, seed=11)(inp))
  x = np.random.default_rng(0).normal(size=(5, 30)).astype(np.float32)
  want = model(x).numpy()
  model.save(str(tmp_path / "sm"))
  loaded = tf.keras.models.load_model(str(tmp_path / "sm"))
  np.testing.assert_allclose(loaded(x).numpy(), want, rtol=1e-6)
  idx = [w for w in loaded.weights if "indices" in w.name][0].numpy()
  np.testing.assert_array_equal(idx, static_indices(30, 4, 6, seed=11))


def test_config_round_trip_and_bad_args():
  layer = SSRLayer("dynamic", num_views=2, view_dim=4, expanded_dim=9, seed=3)
  assert SSRLayer.from_config(layer.get_config()).get_config() == layer.get_config()
  with pytest.raises(ValueError, match="mode"):
    SSRLayer("sparse")
  with pytest.raises(ValueError, match="expanded_dim"):
    SSRLayer("dynamic", view_dim=8, expanded_dim=8)


def test_topk_ste_keeps_exactly_k_and_passes_gradient_straight_through():
  z = tf.Variable(np.random.default_rng(0).normal(size=(3, 2, 10)).astype(np.float32))
  with tf.GradientTape() as tape:
    y = topk_ste(z, 4)
    loss = tf.reduce_sum(y * 3.0)
  assert (np.count_nonzero(y.numpy(), axis=-1) == 4).all()
  np.testing.assert_allclose(tape.gradient(loss, z).numpy(), 3.0)
