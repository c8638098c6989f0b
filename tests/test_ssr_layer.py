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
  # LayerNorm per view (scale 1, offset 0 at init): each view's output has zero mean and
  # variance var(z) / (var(z) + 1e-3), z the activated fusion output: just below 1.
  per_view = y.numpy().reshape(3, 4, 8)
  np.testing.assert_allclose(per_view.mean(-1), 0, atol=1e-4)
  x = tf.constant(np.random.default_rng(4).normal(size=(3, 20)), tf.float32)
  per_view = layer(x).numpy().reshape(3, 4, 8)
  z = layer.activation(block_fusion_tf(layer.filter_views(x), layer.fusion_kernel,
                                       layer.fusion_bias)).numpy()
  want = z.var(-1) / (z.var(-1) + 1e-3)
  np.testing.assert_allclose(per_view.var(-1), want, rtol=1e-3)
  assert np.all(per_view.var(-1) < 1.0) and np.all(per_view.var(-1) > 0.5)   # eps shrinks it


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
  again = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
  assert again.get_config() == layer.get_config()
  with pytest.raises(ValueError, match="mode"):
    SSRLayer("sparse", 2, 4)
  with pytest.raises(ValueError, match="expanded_dim"):
    SSRLayer("dynamic", 2, view_dim=8, expanded_dim=8)
  with pytest.raises(ValueError, match="filter"):
    SSRLayer("dynamic", 2, 4, filter="lasso")


def test_left_out_arguments_take_the_backbone_config_defaults(monkeypatch):
  import dataclasses
  from ssr_tf.models.ssr import SSRBackboneConfig
  cfg = SSRLayer("dynamic", 2, 4).get_config()
  fields = {f.name: f for f in dataclasses.fields(SSRBackboneConfig)}
  for key in ("ics_iters", "alpha_init", "use_gamma", "impl", "filter", "filter_rate"):
    assert cfg[key] == fields[key].default, key
  assert cfg["activation"] == fields["activation"].default == "gelu"
  assert cfg["expanded_dim"] == 2 * 4 and fields["expanded_dim"].default is None
  assert cfg["impl"] == "auto"
  # The dataclass is the only place they are written: change it and the layer follows.
  monkeypatch.setattr(fields["ics_iters"], "default", 3)
  monkeypatch.setattr(fields["impl"], "default", "tf")
  layer = SSRLayer("dynamic", 2, 4)
  assert layer.ics_iters == 3 and layer.impl == "tf"


# Hand-computed backbone sizes (the paper counts the backbone only, not the embeddings).
F, DIM = 7, 8          # fields, embedding width
D = F * DIM            # 56, the flattened input of layer 0
B, DV = 4, 8           # views, view width: each layer outputs B * DV = 32
E, T = 2 * DV, 5       # SSR-D: d_v* (default 2 d_v), ICS rounds (default)


def _ssr_backbone(mode: str):
  from ssr_tf.config import ModelConfig
  from ssr_tf.models import registry
  backbone = {"mode": mode, "num_layers": 2, "num_views": B, "view_dim": DV, "impl": "tf"}
  layer = registry.build_backbone(ModelConfig(name="ssr", embedding_dim=DIM, backbone=backbone), F)
  assert layer(tf.zeros([2, F, DIM])).shape == (2, B * DV)
  params = sum(int(np.prod(v.shape)) for v in layer.trainable_variables)
  return layer, params


def test_ssr_d_params_and_flops_match_hand_formula():
  layer, params = _ssr_backbone("dynamic")
  # Per layer: W^proj d_in x (b d_v*), alpha b x T, gamma b x d_v*, V_i b x d_v* x d_v,
  # bias b x d_v, LayerNorm scale + offset 2 b d_v; d_in = 56, then b d_v = 32.
  per_layer = lambda d_in: d_in * B * E + B * T + B * E + B * E * DV + B * DV + 2 * B * DV
  assert params == per_layer(56) + per_layer(32) == 4276 + 2740
  # FLOPs (multiply-add = 2): projection 2 d_in b d_v*; ICS ~(2 + 4 T) per element of the
  # b d_v* filtered view (mean, scale, subtract, ReLU per round; gamma and the sum);
  # fusion 2 b d_v* d_v + bias b d_v; GELU + LayerNorm ~8 per output.
  flops = lambda d_in: (2 * d_in * B * E + B * E * (2 + 4 * T) + 2 * B * E * DV + B * DV
                        + 8 * B * DV)
  assert layer.flops_per_example(F, DIM) == flops(56) + flops(32) == 9888 + 6816


def test_ssr_s_params_and_flops_match_hand_formula():
  layer, params = _ssr_backbone("static")
  # The gather is a fixed index set (non-trainable): only V_i b x d_v x d_v, bias and
  # LayerNorm per layer, independent of the input width.
  assert params == 2 * (B * DV * DV + B * DV + 2 * B * DV) == 2 * 352
  assert [int(np.prod(v.shape)) for v in layer.non_trainable_variables] == [B * DV] * 2
  # Zero-FLOP gather; fusion 2 b d_v^2 + bias; GELU + LayerNorm ~8 per output.
  assert layer.flops_per_example(F, DIM) == 2 * (2 * B * DV * DV + B * DV + 8 * B * DV) == 2 * 800


def test_topk_ste_keeps_exactly_k_and_passes_gradient_straight_through():
  z = tf.Variable(np.random.default_rng(0).normal(size=(3, 2, 10)).astype(np.float32))
  with tf.GradientTape() as tape:
    y = topk_ste(z, 4)
    loss = tf.reduce_sum(y * 3.0)
  assert (np.count_nonzero(y.numpy(), axis=-1) == 4).all()
  np.testing.assert_allclose(tape.gradient(loss, z).numpy(), 3.0)


@pytest.mark.parametrize("backbone,key", [
    ({"mode": "static", "filter": "topk"}, "filter"),              # SSR-S has no filter stage
    ({"mode": "static", "filter_rate": 0.2}, "filter_rate"),
    ({"mode": "static", "expanded_dim": 64}, "expanded_dim"),
    ({"mode": "static", "ics_iters": 2}, "ics_iters"),
    ({"mode": "static", "view_dim": D + 1}, "view_dim"),          # gathers > the 56 input dims
    ({"mode": "dynamic", "filter": "ics", "filter_rate": 0.2}, "filter_rate"),
    ({"mode": "dynamic", "filter": "none", "alpha_init": 0.5}, "alpha_init"),
    ({"mode": "dynamic", "expanded_dim": 32}, "expanded_dim"),     # must exceed view_dim
    ({"impl": "cuda"}, "impl"),
    ({"layer_norm": "batch"}, "layer_norm"),
    ({"dropout": 1.5}, "dropout"),
    ({"tower_units": [0]}, "tower_units"),
])
def test_meaningless_or_bad_settings_name_the_key(backbone, key):
  from ssr_tf.config import ModelConfig
  from ssr_tf.errors import ConfigError
  from ssr_tf.models import registry
  with pytest.raises(ConfigError, match=rf"'model\.backbone\.{key}'"):
    registry.build_backbone(ModelConfig(name="ssr", embedding_dim=DIM, backbone=backbone), F)


def test_static_at_the_input_width_and_filter_defaults_written_out_are_accepted():
  from ssr_tf.config import ModelConfig
  from ssr_tf.models import registry
  backbone = {"mode": "static", "num_layers": 1, "num_views": 2, "view_dim": D, "filter": "ics",
              "filter_rate": 0.5, "impl": "tf"}
  layer = registry.build_backbone(ModelConfig(name="ssr", embedding_dim=DIM, backbone=backbone), F)
  assert layer(tf.zeros([1, F, DIM])).shape == (1, 2 * D)


@pytest.mark.parametrize("variant", ["view", "view_plain", "view_block"])
def test_layer_norm_variants_equal_numpy(variant):
  x = np.random.default_rng(1).normal(size=(5, 12)).astype(np.float32)
  layer = SSRLayer("static", num_views=3, view_dim=4, seed=0, impl="tf", layer_norm=variant)
  y = layer(x).numpy().reshape(5, 3, 4)
  h = x[:, layer.indices.numpy()]                                   # [batch, views, 4]
  z = np.einsum("bve,veo->bvo", h, layer.fusion_kernel.numpy()) + layer.fusion_bias.numpy()
  z = tf.nn.gelu(z).numpy()
  axes = (0, 2) if variant == "view_block" else (2,)
  want = (z - z.mean(axis=axes, keepdims=True)) / np.sqrt(z.var(axis=axes, keepdims=True) + 1e-3)
  np.testing.assert_allclose(y, want, atol=1e-4)
  names = {w.name.split("/")[-1].split(":")[0] for w in layer.weights}
  assert ("ln_scale" in names) == (variant != "view_plain")
  assert SSRLayer.from_config(layer.get_config()).layer_norm == variant


def test_tower_and_dropout_sit_between_the_ssr_layers_and_the_heads():
  from ssr_tf.config import ModelConfig
  from ssr_tf.models import registry
  from ssr_tf.models.dnn import mlp_flops
  backbone = {"mode": "dynamic", "num_layers": 2, "num_views": B, "view_dim": DV, "impl": "tf",
              "tower_units": [16, 8], "dropout": 0.5}
  layer = registry.build_backbone(ModelConfig(name="ssr", embedding_dim=DIM, backbone=backbone), F)
  x = tf.random.normal([6, F, DIM], seed=0)
  assert layer(x).shape == (6, 8)
  np.testing.assert_array_equal(layer(x, training=False).numpy(), layer(x).numpy())
  assert not np.array_equal(layer(x, training=True).numpy(), layer(x).numpy())
  plain, _ = _ssr_backbone("dynamic")
  assert layer.flops_per_example(F, DIM) == plain.flops_per_example(F, DIM) + mlp_flops(
      B * DV, [16, 8])
