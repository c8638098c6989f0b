"""`ssr_tf bench quality`: ablation switches change exactly what they claim; the protocol
as an `ssr_tf train` config; aggregation, Markdown and the scaling plot; a tiny suite end
to end through ssr_tf.training and ssr_tf evaluate (resumable)."""
import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from ssr_tf import cli
from ssr_tf.bench import quality
from ssr_tf.errors import UserError
from ssr_tf.layers.ssr import SSRLayer, topk_ste


def _diff(a: dict, b: dict) -> dict:
  keys = set(a) | set(b)
  return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


def test_ablation_rows_change_only_their_switch():
  base = quality.ABLATION["ssr_d"]["backbone"]
  want = {
      "no_sparse_filter": {"filter"},
      "topk_ste": {"filter"},
      "dropout": {"filter", "filter_rate"},
      "static_ssr_s": {"mode", "expanded_dim"},
      # b = 1 keeps the layer width b * d_v = 256 and d_v* = 2 d_v
      "single_view_b1": {"num_views", "view_dim", "expanded_dim"},
  }
  for name, keys in want.items():
    assert set(_diff(base, quality.ABLATION[name]["backbone"])) == keys, name
  b1 = quality.ABLATION["single_view_b1"]["backbone"]
  assert b1["num_views"] == 1 and b1["num_views"] * b1["view_dim"] == 8 * 32
  for name, entry in quality.ICS.items():
    changed = set(_diff(base, entry["backbone"]))
    assert len(changed) <= 1 and changed <= {"ics_iters", "alpha_init", "use_gamma"}, name


def test_topk_ste_keeps_exactly_k_forward_and_passes_gradient_straight_through():
  z = tf.constant(np.random.default_rng(0).normal(size=(3, 4, 10)), tf.float32)
  w = tf.constant(np.random.default_rng(1).normal(size=(3, 4, 10)), tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(z)
    y = topk_ste(z, 4)
    loss = tf.reduce_sum(y * w)
  nonzero = np.count_nonzero(y.numpy(), axis=-1)
  assert np.all(nonzero == 4)
  kept = np.sort(np.where(y.numpy() != 0, z.numpy(), -np.inf), axis=-1)[..., -4:]
  np.testing.assert_allclose(kept, np.sort(z.numpy(), axis=-1)[..., -4:])
  np.testing.assert_allclose(tape.gradient(loss, z).numpy(), w.numpy())   # identity, not masked


def _layer(**kw) -> SSRLayer:
  layer = SSRLayer("dynamic", num_views=2, view_dim=4, expanded_dim=8, seed=0, **kw)
  layer(tf.zeros([1, 12]))
  return layer


def test_filter_none_is_the_dense_projection():
  layer = _layer(filter="none")
  assert not hasattr(layer, "alpha") and not hasattr(layer, "gamma")
  x = tf.random.stateless_normal([5, 12], seed=[0, 1])
  h = layer.filter_views(x).numpy()
  want = (x.numpy() @ layer.proj_kernel.numpy().reshape(12, 16)).reshape(5, 2, 8)
  np.testing.assert_allclose(h, want, rtol=1e-5, atol=1e-6)
  assert np.mean(h == 0) == 0.0                                  # no sparsity at all


def test_filter_dropout_only_while_training():
  layer = _layer(filter="dropout", filter_rate=0.5)
  x = tf.random.stateless_normal([64, 12], seed=[2, 3])
  dense = _layer(filter="none")
  dense.set_weights(layer.get_weights())
  np.testing.assert_allclose(layer.filter_views(x, training=False), dense.filter_views(x))
  share = np.mean(layer.filter_views(x, training=True).numpy() == 0)
  assert 0.35 < share < 0.65


def test_ics_switches():
  assert _layer(ics_iters=2).alpha.shape == (2, 2)
  np.testing.assert_allclose(_layer(alpha_init=0.5).alpha.numpy(), 0.5)
  assert not _layer(use_gamma=False).gamma.trainable
  assert _layer().gamma.trainable


def test_protocol_is_an_ssr_tf_train_config(tmp_path):
  splits = quality.Splits(pathlib.Path("/d"), None, quality.Split("/d/train/*", 10_000),
                          quality.Split("/d/valid/*", 1000), quality.Split("/d/test/*", 1000))
  proto = quality.Protocol(epochs=3, evals_per_epoch=4, patience=2, batch_size=256,
                           learning_rate=2e-3, lr_decay="cosine")
  entry = {**quality.SSR_D, "embedding_l2": 1e-4, "protocol": {"learning_rate": 3e-3}}
  cfg = quality.experiment(splits, entry, proto, seed=7, model_dir=tmp_path / "m",
                           ics_log_every=5)
  t = cfg.train
  # 10,000 rows / 256 = 40 steps a pass, validated 4 times: epochs of 10 steps.
  assert (t.epochs, t.steps_per_epoch, t.early_stopping_patience) == (12, 10, 8)
  assert (t.learning_rate, t.lr_decay, t.seed, t.ics_log_every_steps) == (3e-3, "cosine", 7, 5)
  assert t.model_dir == str(tmp_path / "m") and t.verbose == 0
  assert (cfg.data.train, cfg.data.batch_size, cfg.data.deterministic) == ("/d/train/*", 256,
                                                                           True)
  assert cfg.model.embedding_l2 == 1e-4 and "seed" not in cfg.model.backbone   # train.seed
  cfg.validate()


def _fake_runs():
  runs = []
  for name, auc in (("ssr_d", [0.80, 0.82]), ("dnn", [0.83, 0.83])):
    for seed, a in enumerate(auc):
      runs.append({"name": name, "seed": seed, "test": {"click_auc": a, "click_logloss": 0.4,
                                                        "pay_auc": 0.7, "click_oracle_auc": 0.86},
                   "train_click_auc": 0.9, "valid_click_auc": a, "best_epoch": 2,
                   "seconds": 10.0, "backbone_params": 1000, "backbone_flops": 2000,
                   **({"ics_sparsity": [0.5, 0.7]} if name == "ssr_d" else {})})
  return runs


def test_aggregate_and_markdown():
  agg = quality.aggregate(_fake_runs())
  assert agg["ssr_d"]["click_auc"] == pytest.approx(0.81)
  assert agg["ssr_d"]["click_auc_std"] == pytest.approx(np.std([0.80, 0.82], ddof=1))
  assert agg["dnn"]["click_auc_std"] == 0.0
  meta = {"data": "d", "rows": "r", "seeds": [0, 1], "protocol": {}, "wall_minutes": 1.0,
          "cpu_count": 2}
  md = quality.markdown("gap", agg, meta)
  row = next(line for line in md.splitlines() if line.startswith("| ssr_d"))
  assert "0.8100 ± 0.0141" in row and "-2.00 (dnn)" in row and "50% / 70%" in row
  assert "Oracle test click AUC (true probabilities): 0.8600" in md


def test_scaling_plot(tmp_path):
  pytest.importorskip("matplotlib")
  agg = {f"dnn/{i}": {"backbone_params": 10 ** (i + 3), "click_auc": 0.8 + i / 100,
                      "click_auc_std": 0.001} for i in range(4)}
  path = quality.plot_scaling(agg, tmp_path / "s.png")
  assert path and (tmp_path / "s.png").stat().st_size > 1000


def test_unknown_model_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="not in suite 'ablation'"):
    quality.run_suite("ablation", None, quality.Protocol(), [0], tmp_path, only=["nope"])


@pytest.mark.slow
def test_tiny_suite_end_to_end_and_resume(tmp_path, synth_dir, capsys):
  splits = quality.load_splits(synth_dir)
  assert splits.train.rows + splits.valid.rows + splits.test.rows == 3000
  proto = quality.Protocol(epochs=2, patience=1, batch_size=128, learning_rate=3e-3,
                           train_eval_rows=500)
  out = tmp_path / "q"
  res = quality.run_suite("ablation", splits, proto, [0], out, only=["ssr_d", "topk_ste"],
                          save_models=True)
  assert set(res["models"]) == {"ssr_d", "topk_ste"}
  for r in res["runs"]:
    # Chance is 0.5 and the oracle 0.80 on these 300 test rows; both models reach 0.60 to
    # 0.64 on seeds 0-2 (this run, seed 0: deterministic reads, so the same every time).
    assert 0.55 < r["test"]["click_auc"] < r["test"]["click_oracle_auc"], r["name"]
    assert r["trainer"] == "ssr_tf.training" and 0.25 <= r["epochs_run"] <= 2
    assert [h["epoch"] for h in r["history"]][:2] == [0.25, 0.5]
  r = res["runs"][0]
  assert len(r["ics_sparsity"]) == 2 and all(0 < s < 1 for s in r["ics_sparsity"])
  assert r["backbone_params"] > 0 and r["backbone_flops"] > 0
  # The run is an `ssr_tf train` run: `ssr_tf evaluate` on its model_dir gives its numbers.
  model_dir = pathlib.Path(r["model_dir"])
  state = json.loads((model_dir / "train_state.json").read_text())
  assert state["completed"] and state["seconds"] == r["seconds"]
  assert cli.main(["evaluate", "--config", str(model_dir / "config.yaml")]) == 0
  evaluated = json.loads((model_dir / "eval_test.json").read_text())["tasks"]
  assert evaluated["click"]["auc"] == r["test"]["click_auc"]
  assert evaluated["pay"]["logloss"] == r["test"]["pay_logloss"]
  assert (model_dir / "logs" / "ics").is_dir()
  saved = json.loads((out / "ablation.json").read_text())
  assert saved["meta"]["seeds"] == [0] and (out / "ablation.md").exists()
  capsys.readouterr()
  quality.run_suite("ablation", splits, proto, [0], out, only=["ssr_d", "topk_ste"])
  assert "seed 0\n" not in capsys.readouterr().out          # resumed: nothing retrained
  # The ics suite's baseline is the same computation as ablation's ssr_d: reused, not rerun.
  ics = quality.run_suite("ics", splits, proto, [0], out, only=["T5_alpha0.1"])
  assert ics["runs"][0]["reused_from"] == "ablation"
  assert ics["runs"][0]["test"] == res["runs"][0]["test"]
