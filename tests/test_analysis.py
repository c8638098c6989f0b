"""`ssr_tf analyze` statistics on hand-made weights, the ICS TensorBoard callback, and the
command end to end on a freshly trained SSR-D."""
import json

import numpy as np
import pytest
import tensorflow as tf

from ssr_tf import analysis
from ssr_tf.callbacks import ICSSparsityLogger, filtered_views, ssr_layers
from ssr_tf.config import ModelConfig
from ssr_tf.features import load_spec
from ssr_tf.models.ranker import build_model

TINY_SSR = {"mode": "dynamic", "num_layers": 2, "num_views": 4, "view_dim": 8, "impl": "tf",
            "seed": 0}


def test_weight_sparsity_hand_computed():
  # 100 input dims; dims 0..3 (the top 4%) carry weight 1, the others 1e-4 (near zero).
  w = np.full((100, 10), 1e-4)
  w[:4] = 1.0
  s = analysis.weight_sparsity(w)
  assert s["near_zero_share"] == pytest.approx(0.96)
  want = 40.0 / (40.0 + 96 * 10 * 1e-8)
  assert s["top_dims_power_share"] == pytest.approx(want)
  assert s["dims_for_80pct_power"] == pytest.approx(0.04)


def test_view_similarity_identical_and_orthogonal_views(synth_dir):
  spec = load_spec(str(synth_dir / "spec.yaml"))
  model = build_model(spec, ModelConfig(name="ssr", embedding_dim=8, backbone=TINY_SSR))
  layer = ssr_layers(model)[0]
  w = np.zeros(layer.proj_kernel.shape, np.float32)          # [d_in, 4 views, 16]
  w[0, 0, 0] = w[0, 1, 0] = 2.0                              # views 0 and 1 identical
  w[1, 2, 3] = 1.0                                           # view 2 orthogonal to them
  w[2, 3, 5] = -1.0
  layer.proj_kernel.assign(w)
  c = analysis.view_similarity(model)[0]
  assert c.shape == (4, 4)
  assert c[0, 1] == pytest.approx(1.0) and c[0, 2] == 0.0 and c[2, 3] == 0.0
  np.testing.assert_allclose(np.diag(c), 1.0, rtol=1e-6)


def test_filtered_views_match_the_layers_own_filter(synth_dir):
  from ssr_tf import data as data_lib
  spec = load_spec(str(synth_dir / "spec.yaml"))
  model = build_model(spec, ModelConfig(name="ssr", embedding_dim=8, backbone=TINY_SSR))
  features = next(iter(data_lib.make_dataset(str(synth_dir / "valid/*"), spec, 64,
                                             training=False)))[0]
  views = filtered_views(model, features)
  assert [tuple(v.shape) for v in views] == [(64, 4, 16), (64, 4, 16)]
  x0 = tf.reshape(model.embedding(features), [64, -1])
  np.testing.assert_allclose(views[0].numpy(), ssr_layers(model)[0].filter_views(x0).numpy(),
                             rtol=1e-5, atol=1e-6)
  assert "filter_views" not in vars(ssr_layers(model)[0])       # the wrapper is removed


def test_ics_logger_writes_tensorboard_scalars(tmp_path, synth_dir):
  from ssr_tf import data as data_lib
  spec = load_spec(str(synth_dir / "spec.yaml"))
  tf.keras.utils.set_random_seed(0)
  model = build_model(spec, ModelConfig(name="ssr", embedding_dim=8, backbone=TINY_SSR))
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
  ds = data_lib.make_dataset(str(synth_dir / "train/*"), spec, 128, training=False).take(4)
  probe = next(iter(ds))[0]
  cb = ICSSparsityLogger(str(tmp_path / "ics"), probe, every_n_steps=2)
  model.fit(ds, epochs=1, verbose=0, callbacks=[cb])
  assert [step for step, _ in cb.history] == [0, 2, 4]
  curves = analysis.read_ics_curves(tmp_path / "ics")
  assert set(curves) == {f"ics/{k}/layer_{l}" for k in ("sparsity", "magnitude") for l in (0, 1)}
  assert [s for s, _ in curves["ics/sparsity/layer_0"]] == [0, 2, 4]
  assert all(0.0 < v < 1.0 for _, v in curves["ics/sparsity/layer_1"])
  with pytest.raises(ValueError, match="every_n_steps"):
    ICSSparsityLogger(str(tmp_path), probe, every_n_steps=0)


@pytest.mark.slow
def test_analyze_command_end_to_end(tmp_path, synth_dir, capsys):
  pytest.importorskip("matplotlib")
  from ssr_tf import cli
  from ssr_tf.bench import quality
  splits = quality.load_splits(synth_dir)
  proto = quality.Protocol(epochs=1, batch_size=256, embedding_dim=8, train_eval_rows=200)
  model_dir = tmp_path / "m"
  quality.run_one(splits, {"name": "ssr", "backbone": TINY_SSR}, proto, 0, save_dir=model_dir,
                  log=lambda s: None, ics_log_every=2)
  import tensorflow as tf
  assert cli.main(["analyze", "--checkpoint", tf.train.latest_checkpoint(str(model_dir / "ckpt")),
                   "--rows", "256"]) == 0
  out = capsys.readouterr().out
  assert "Fig.1" in out and "Fig.5 layer 2" in out and "Fig.6 layer 1" in out
  result = json.loads((model_dir / "analysis" / "analysis.json").read_text())
  assert len(result["fig5"]["layers"]) == 2 and len(result["fig6"]["layers"]) == 2
  assert result["fig1"]["shape"] == [len(splits.spec.features) * 8, 4 * 16]
  assert (model_dir / "analysis" / "fig6_view_similarity.png").stat().st_size > 1000
  curve = result["fig5"]["curves"]["ics/sparsity/layer_0"]          # logged during training
  assert curve[0][0] == 0 and len(curve) >= 3
  assert (model_dir / "analysis" / "fig5_ics_sparsity.png").stat().st_size > 1000
  assert cli.main(["analyze"]) == 2                           # no model given: one-line error
