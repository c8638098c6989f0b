"""Baseline backbones: hand-computed parameter counts, block math, config errors, and a few
training steps + SavedModel export for each."""
import numpy as np
import pytest
import tensorflow as tf

from ssr_tf.config import ModelConfig
from ssr_tf.errors import ConfigError
from ssr_tf.models import registry

F, DIM = 7, 8          # fields, embedding width of the hand-computed cases
D = F * DIM            # 56, the flattened input


def _build(name: str, backbone: dict):
  layer = registry.build_backbone(ModelConfig(name=name, embedding_dim=DIM, backbone=backbone), F)
  out = layer(tf.random.stateless_normal([4, F, DIM], seed=[1, 2]))
  params = sum(int(np.prod(v.shape)) for v in layer.trainable_variables)
  return layer, out, params


# (name, backbone, hand-computed parameter count, output width)
CASES = [
    # MLP 56->16->8 (+biases) + first-order w (56), FM has no parameters.
    ("deepfm", {"hidden_units": [16, 8]}, (56 * 16 + 16) + (16 * 8 + 8) + 56, 8 + 2),
    # 2 full-rank crosses (56x56 + 56 each) + deep 56->16.
    ("dcnv2", {"num_cross_layers": 2, "hidden_units": [16]},
     2 * (56 * 56 + 56) + (56 * 16 + 16), 16),
    # parallel low-rank r=4: U 56x4, V 4x56 + bias 56, per cross; output concat(56, 16).
    ("dcnv2", {"num_cross_layers": 2, "structure": "parallel", "projection_dim": 4,
               "hidden_units": [16]}, 2 * (56 * 4 + 4 * 56 + 56) + (56 * 16 + 16), 56 + 16),
    # per layer: Q, K, V (d_in x h k, no bias) + output proj (h k x h k) + W_res (d_in x h k);
    # h k = 8, d_in = 8 then 8.
    ("autoint", {"num_layers": 2, "num_heads": 2, "head_dim": 4},
     2 * (3 * 8 * 8 + 8 * 8 + 8 * 8), F * 8),
    # 3 experts 56->16, 2 gates 56->3, 2 towers 16->8.
    ("mmoe", {"num_experts": 3, "expert_units": [16], "tower_units": [8]},
     3 * (56 * 16 + 16) + 2 * (56 * 3 + 3) + 2 * (16 * 8 + 8), 8),
    # tokenizers: sum_t |G_t| dim D + T D; per block: T (D kD + kD + kD D + D) + 2 LN (2 D).
    ("rankmixer", {"num_tokens": 4, "token_dim": 16, "num_layers": 2, "ffn_mult": 2},
     (56 * 16 + 4 * 16) + 2 * (4 * (16 * 32 + 32 + 32 * 16 + 16) + 4 * 16), 16),
    # layer 0 (n=7 -> 5): Y 7x2, LN(14) 28, MLP 14->8, out 8->3*8, LC 2x7, residual 5x7, LN 16;
    # layer 1 (n=5 -> 5): Y 5x2, LN(10) 20, MLP 10->8, out 8->24, LC 2x5, LN 16; top 40->4.
    ("wukong", {"num_layers": 2, "num_fm_embeddings": 3, "num_lc_embeddings": 2, "fm_rank": 2,
                "fmb_units": [8], "hidden_units": [4]},
     (14 + 28 + (14 * 8 + 8) + (8 * 24 + 24) + 14 + 35 + 16)
     + (10 + 20 + (10 * 8 + 8) + (8 * 24 + 24) + 10 + 16) + (40 * 4 + 4), 4),
]


@pytest.mark.parametrize("name,backbone,want_params,width", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_param_count_matches_hand_formula(name, backbone, want_params, width):
  layer, out, params = _build(name, backbone)
  assert params == want_params
  outs = out.values() if isinstance(out, dict) else [out]
  for o in outs:
    assert o.shape == (4, width)
    assert np.all(np.isfinite(o.numpy()))
  assert layer.flops_per_example(F, DIM) > 0
  cfg = layer.get_config()
  assert cfg["name"] and all(cfg[k] == v for k, v in backbone.items())
  # Keras-serializable: the config rebuilds the same layer, with the same weights' shapes.
  again = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
  assert type(again) is type(layer) and again.get_config() == cfg
  again(tf.zeros([1, F, DIM]))
  assert [v.shape for v in again.trainable_variables] == \
      [v.shape for v in layer.trainable_variables]


@pytest.mark.parametrize("name", ["dnn", "deepfm", "dcnv2", "autoint", "mmoe", "rankmixer",
                                  "wukong"])
def test_layer_defaults_are_the_config_dataclass_defaults(name):
  import dataclasses
  entry = registry.get(name)
  layer_cls = type(registry.build_backbone(ModelConfig(name=name, embedding_dim=DIM), 16))
  kwargs = {"tasks": ["click", "pay"]} if name == "mmoe" else {}
  cfg = layer_cls(**kwargs).get_config()              # every setting left out
  assert {k: cfg[k] for k in (f.name for f in dataclasses.fields(entry.config_cls))} == \
      dataclasses.asdict(entry.config_cls())


def test_flops_hand_formula_dcnv2_and_deepfm():
  dcn, _, _ = _build("dcnv2", {"num_cross_layers": 2, "hidden_units": [16]})
  # per cross 2 d^2 (matmul) + 4 d (bias, *x0, +x, ...); deep 2 d 16 + 16.
  assert dcn.flops_per_example(F, DIM) == 2 * (2 * D * D + 4 * D) + (2 * D * 16 + 16)
  fm, _, _ = _build("deepfm", {"hidden_units": [16]})
  assert fm.flops_per_example(F, DIM) == (2 * D * 16 + 16) + (3 * D + 2 * DIM) + 2 * D


def test_dcnv2_uses_tfrs_cross():
  import tensorflow_recommenders as tfrs
  layer, _, _ = _build("dcnv2", {"num_cross_layers": 3, "projection_dim": 4, "hidden_units": []})
  assert len(layer.cross) == 3 and all(isinstance(c, tfrs.layers.dcn.Cross) for c in layer.cross)


def test_fm_second_order_equals_pairwise_dot_products():
  from ssr_tf.models.deepfm import fm_second_order
  e = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
  want = [sum(e[b, i] @ e[b, j] for i in range(5) for j in range(i + 1, 5)) for b in range(3)]
  np.testing.assert_allclose(fm_second_order(tf.constant(e)).numpy()[:, 0], want, rtol=1e-5)


def test_rankmixer_token_mix_is_the_head_transpose():
  from ssr_tf.models.rankmixer import token_groups, token_mix
  x = np.arange(2 * 4 * 8, dtype=np.float32).reshape(2, 4, 8)   # T=4 tokens of D=8, H=4
  y = token_mix(tf.constant(x), 4).numpy()
  # new token h = concat over tokens t of x[t, 2h:2h+2]
  for h in range(4):
    np.testing.assert_array_equal(y[:, h], np.concatenate([x[:, t, 2 * h:2 * h + 2]
                                                           for t in range(4)], axis=-1))
  assert [list(g) for g in token_groups(7, 3)] == [[0, 1, 2], [3, 4], [5, 6]]


def test_wukong_low_rank_fm_equals_x_xt_y():
  from ssr_tf.models.wukong import WukongLayer
  layer = WukongLayer(num_fm_embeddings=2, num_lc_embeddings=3, fm_rank=2, fmb_units=[],
                      activation="relu")
  x = tf.random.stateless_normal([2, 5, 4], seed=[3, 4])
  layer(x)
  y = layer.fm_proj.numpy()
  xn = x.numpy()
  want = np.einsum("bnd,bmd,mk->bnk", xn, xn, y)        # (X X^T) Y
  got = tf.einsum("bnd,bdk->bnk", x, tf.einsum("bnd,nk->bdk", x, y)).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_mmoe_gates_are_per_task():
  layer, out, _ = _build("mmoe", {"num_experts": 2, "expert_units": [8], "tower_units": []})
  assert set(out) == {"click", "pay"}
  x = tf.random.stateless_normal([4, F, DIM], seed=[5, 6])
  with tf.GradientTape() as tape:
    click = tf.reduce_sum(layer(x)["click"])
  grads = tape.gradient(click, [layer.gates["click"].kernel, layer.gates["pay"].kernel])
  assert grads[0] is not None and grads[1] is None      # click loss never touches pay's gate
  # A click-only data set: one gate and tower, nothing that no loss would train.
  click_only = registry.build_backbone(
      ModelConfig(name="mmoe", embedding_dim=DIM, backbone={"num_experts": 2, "expert_units": [8],
                                                            "tower_units": [4]}), F, ("click",))
  assert set(click_only(x)) == {"click"} and set(click_only.gates) == {"click"}
  assert not [v.name for v in click_only.trainable_variables if "pay" in v.name]
  assert click_only.flops_per_example(F, DIM) < registry.build_backbone(
      ModelConfig(name="mmoe", embedding_dim=DIM, backbone={"num_experts": 2, "expert_units": [8],
                                                            "tower_units": [4]}), F
  ).flops_per_example(F, DIM)


@pytest.mark.parametrize("name,backbone,key", [
    ("dcnv2", {"structure": "diagonal"}, "model.backbone.structure"),
    ("autoint", {"num_heads": 0}, "model.backbone.num_heads"),
    ("rankmixer", {"num_tokens": 3, "token_dim": 16}, "model.backbone.token_dim"),
    ("rankmixer", {"num_tokens": 8, "token_dim": 16}, "model.backbone.num_tokens"),
    ("mmoe", {"expert_units": []}, "model.backbone.expert_units"),
    ("wukong", {"fm_rank": 0}, "model.backbone.fm_rank"),
    ("deepfm", {"dropout": 1.5}, "model.backbone.dropout"),
    ("deepfm", {"hidden_unit": [4]}, "model.backbone.hidden_unit"),
    ("dnn", {"hidden_units": [4, 0]}, "model.backbone.hidden_units"),
])
def test_config_errors_name_the_key(name, backbone, key):
  with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
    registry.build_backbone(ModelConfig(name=name, embedding_dim=DIM, backbone=backbone), F)


SMALL = {
    "deepfm": {"hidden_units": [16, 8]},
    "dcnv2": {"num_cross_layers": 2, "projection_dim": 8, "hidden_units": [16]},
    "autoint": {"num_layers": 1, "num_heads": 2, "head_dim": 4, "hidden_units": [8]},
    "mmoe": {"num_experts": 2, "expert_units": [16], "tower_units": [8]},
    "rankmixer": {"num_tokens": 4, "token_dim": 16, "num_layers": 1},
    "wukong": {"num_layers": 1, "num_fm_embeddings": 4, "num_lc_embeddings": 4, "fm_rank": 4,
               "fmb_units": [16], "hidden_units": [8]},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMALL))
def test_trains_and_exports(tmp_path, synth_dir, name):
  from ssr_tf import data as data_lib
  from ssr_tf.export import export_saved_model
  from ssr_tf.features import load_spec
  from ssr_tf.models.ranker import build_model
  spec = load_spec(str(synth_dir / "spec.yaml"))
  tf.keras.utils.set_random_seed(0)
  model = build_model(spec, ModelConfig(name=name, embedding_dim=8, pay_mode="esmm",
                                        backbone=SMALL[name]))
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
  ds = data_lib.make_dataset(str(synth_dir / "train/*"), spec, 128, training=False)
  before = [v.numpy().copy() for v in model.backbone.trainable_variables]
  hist = model.fit(ds.take(3), epochs=1, verbose=0)
  assert np.isfinite(hist.history["loss"][-1])
  after = model.backbone.trainable_variables
  assert all(not np.array_equal(a, b.numpy()) for a, b in zip(before, after) if a.ndim > 1)
  path = export_saved_model(model, spec, str(tmp_path / "export"))
  recs = tf.constant([r.numpy() for r in tf.data.TFRecordDataset(
      sorted((synth_dir / "test").glob("*"))[0]).take(16)])
  served = tf.saved_model.load(path).signatures["serving_default"](examples=recs)
  want = model(data_lib.parse_features(recs, spec), training=False)
  for key in ("click_prob", "pay_prob"):
    np.testing.assert_allclose(served[key].numpy(), want[key].numpy(), atol=1e-5)
