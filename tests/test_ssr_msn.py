"""ssr_msn backbone: config checks, build from config, train -> TensorBoard utilisation ->
export -> reload in a fresh process without ssr_tf."""
import glob
import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from ssr_tf import cli, task
from ssr_tf.config import ModelConfig, load_config
from ssr_tf.errors import ConfigError
from ssr_tf.models import registry
from ssr_tf.models.ssr_msn import MSNBackbone, MSNBackboneConfig

from conftest import assert_export_matches

SMALL_MEMORY = {"num_sub_keys": 8, "key_dim": 8, "top_k": 4, "value_dim": 8, "usage_window": 512}
SSR = {"mode": "dynamic", "num_layers": 2, "num_views": 4, "view_dim": 8, "impl": "tf"}


def _backbone(memories):
  return ModelConfig(name="ssr_msn", embedding_dim=4, backbone={**SSR, "memories": memories})


def test_builds_from_config_with_memories_at_two_places():
  mems = [{**SMALL_MEMORY, "after_layer": 0},
          {**SMALL_MEMORY, "after_layer": -1, "gate": "add", "query_from": "layer", "heads": 2}]
  bb = registry.build_backbone(_backbone(mems), num_fields=5)
  assert isinstance(bb, MSNBackbone) and len(bb.memories) == 2
  y = bb(tf.random.normal([3, 5, 4]), training=True)
  assert y.shape == (3, 32)
  cfg = bb.get_config()
  again = MSNBackbone.from_config(cfg)
  assert again.get_config() == cfg
  plain = registry.build_backbone(_backbone([]), num_fields=5)
  plain(tf.zeros([1, 5, 4]))
  extra = bb.flops_per_example(5, 4) - plain.flops_per_example(5, 4)
  want = (bb.memories[0].flops_per_example(20) + bb.memories[1].flops_per_example(20)
          + bb.gates[0].flops_per_example(32, 8) + bb.gates[1].flops_per_example(20, 8))
  assert extra == want > 0
  assert set(bb.memory_usage()) == {"memory_0", "memory_1"}


def test_params_and_flops_match_hand_formula():
  # 5 fields x 4 dims = 20 inputs; SSR-D 2 layers of b=4 views, d_v=8 (d_v*=16, T=5), width 32;
  # one memory after layer 0, queried from the input: n=8 sub-keys (64 slots), key_dim 8,
  # top_k 4 (= k'), value_dim 8, 2 heads, BatchNorm on the queries.
  mem = {**SMALL_MEMORY, "after_layer": 0, "heads": 2}
  bb = registry.build_backbone(_backbone([mem]), num_fields=5)
  assert bb(tf.zeros([2, 5, 4])).shape == (2, 32)
  params = sum(int(np.prod(v.shape)) for v in bb.trainable_variables)
  ssr = lambda d_in: d_in * 4 * 16 + 4 * 5 + 4 * 16 + 4 * 16 * 8 + 4 * 8 + 2 * 4 * 8
  h, kd, n, k, vd, width = 2, 8, 8, 4, 8, 32
  pkm = (20 * h * kd + h * kd      # query W_q, bias
         + 2 * h * kd              # BatchNorm scale, offset (moving statistics do not train)
         + h * 2 * n * kd // 2     # two sub-key tables of n half-keys per head
         + n * n * vd)             # the value table, one row per slot
  gate = vd * width + width        # W [M, H] and bias
  assert params == ssr(20) + ssr(32) + pkm + gate == 1972 + 2740 + 1008 + 288
  # FLOPs: SSR-D per layer as in test_ssr_layer; the memory (PKM paper, Lample et al.):
  # query 2 d_in h kd + h kd, norm 4 h kd, sub-key scores 2 h n kd (the only term that grows,
  # as sqrt(slots)), k'^2 candidates per head, softmax 3 h k, weighted gather 2 h k vd plus
  # summing the heads (h - 1) vd; the sigmoid gate 2 M H + H + 5 H.
  ssr_flops = lambda d_in: (2 * d_in * 4 * 16 + 4 * 16 * (2 + 4 * 5) + 2 * 4 * 16 * 8
                            + 4 * 8 + 8 * 4 * 8)
  pkm_flops = (2 * 20 * h * kd + h * kd + 4 * h * kd + 2 * h * n * kd + h * k * k + 3 * h * k
               + 2 * h * k * vd + (h - 1) * vd)
  gate_flops = 2 * vd * width + width + 5 * width
  assert bb.flops_per_example(5, 4) == ssr_flops(20) + ssr_flops(32) + pkm_flops + gate_flops \
      == 5280 + 6816 + 1168 + 704


def test_auto_impl_without_the_op_library_warns_once(monkeypatch, caplog):
  """impl: auto (the default) falls back to pure TF with ONE warning for SSR layers and
  memories together when the op library did not load."""
  import logging
  from ssr_tf import ops
  from ssr_tf.layers import _impl, pkm
  from ssr_tf.ops import pkm as pkm_ops
  monkeypatch.setattr(ops, "is_available", lambda: False)
  monkeypatch.setattr(ops, "load_error", lambda: "not built (test)")
  monkeypatch.setattr(pkm_ops, "is_available", lambda: False)
  monkeypatch.setattr(pkm_ops, "load_error", lambda: "not built (test)")
  monkeypatch.setattr(_impl, "_warned", False)
  monkeypatch.setattr(pkm, "_warned", False)
  assert MSNBackboneConfig().impl == "auto"
  backbone = {k: v for k, v in SSR.items() if k != "impl"}
  mems = [{**SMALL_MEMORY, "after_layer": 0}, {**SMALL_MEMORY, "after_layer": 1}]
  bb = registry.build_backbone(ModelConfig(name="ssr_msn", embedding_dim=4,
                                           backbone={**backbone, "memories": mems}), 5)
  with caplog.at_level(logging.WARNING):
    bb(tf.random.normal([3, 5, 4]), training=True)
    bb(tf.random.normal([3, 5, 4]), training=False)
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert len(warnings) == 1 and "falls back to pure TF" in warnings[0], warnings
  assert "not built (test)" in warnings[0]


def test_defaults_are_valid_and_inherit_ssr_keys():
  cfg = MSNBackboneConfig()
  cfg.validate()
  assert cfg.mode == "dynamic" and len(cfg.memories) == 1 and cfg.memories[0].after_layer == 0


@pytest.mark.parametrize("backbone,match", [
    ({"memories": [{"after_layer": 2}]}, r"memories\[0\]\.after_layer': must be in \[-1, "),
    ({"memories": [{"gate": "mul"}]}, r"memories\[0\]\.gate'"),
    ({"memories": [{"key_dim": 7}]}, r"memories\[0\]\.key_dim': must be even"),
    ({"memories": [{"num_sub_keys": 4, "top_k": 8}]}, r"memories\[0\]\.top_k'"),
    ({"memories": [{"query_norm": "group"}]}, r"memories\[0\]\.query_norm'"),
    ({"memories": [{"topk": 8}]}, r"unknown config key 'model\.backbone\.memories\[0\]\.topk'"),
    ({"num_views": 0}, r"'model\.backbone\.num_views'"),
    ({"mode": "static", "filter": "dropout"}, r"'model\.backbone\.filter': mode 'static' "),
])
def test_bad_config_names_the_key(backbone, match):
  with pytest.raises(ConfigError, match=match):
    registry.backbone_config(ModelConfig(name="ssr_msn", backbone=backbone))


def test_shipped_config_loads():
  cfg = load_config(str(pathlib.Path(__file__).parents[1] / "configs" / "ssr_msn.yaml"))
  bb = registry.backbone_config(cfg.model)
  assert bb.memories[0].num_sub_keys ** 2 == 65536


def _tensorboard_steps(log_dir: pathlib.Path) -> dict:
  """{tag: [steps]} of every summary under log_dir."""
  steps: dict = {}
  for path in glob.glob(str(log_dir / "**" / "events.out.tfevents.*"), recursive=True):
    for rec in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(rec.numpy())
      for v in event.summary.value:
        steps.setdefault(v.tag, []).append(event.step)
  return steps


@pytest.mark.slow
def test_trains_logs_utilisation_exports_and_reloads(tmp_path, make_config):
  mem = {**SMALL_MEMORY, "after_layer": 0, "heads": 2}
  cfg_path = make_config(
      model={"name": "ssr_msn", "embedding_dim": 8, "backbone": {**SSR, "memories": [mem]}},
      train={"epochs": 1, "learning_rate": 0.005, "early_stopping_patience": 0})
  assert cli.main(["train", "--config", str(cfg_path)]) == 0
  state = json.loads((tmp_path / "model" / "train_state.json").read_text())
  assert state["completed"] and np.isfinite(state["history"]["loss"][-1])
  # The memory's add_metric values reach the Keras logs (and so the epoch history).
  used = [k for k in state["history"] if k.endswith("slots_used")]
  assert used and 0 < state["history"][used[0]][-1] <= 1
  steps = _tensorboard_steps(tmp_path / "model" / "logs")
  tag = "ssr_msn_backbone/memory_0/slots_used"
  assert tag in steps and "ssr_msn_backbone/memory_0/usage_kl" in steps
  # ~2,400 training rows, windows of 512 examples, batch 256: a point every 2 steps.
  assert len(steps[tag]) >= 3 and steps[tag] == sorted(set(steps[tag])) and steps[tag][0] > 0

  assert cli.main(["export", "--config", str(cfg_path), "--output", str(tmp_path / "export")]) == 0
  export_dir = tmp_path / "export" / "1"
  cfg = load_config(str(cfg_path))
  shard = sorted(glob.glob(cfg.data.test))[0]
  _, model = task.build(cfg)
  task.restore(model, cfg.train.model_dir)
  assert_export_matches(export_dir, shard, model, rows=32, keys=("click_prob",))
  # The restored memory is the trained one: every memory weight equals the value the
  # training run checkpointed, and training moved it away from the (seeded) initial value.
  path = task.restore(model, cfg.train.model_dir)
  stored = tf.train.load_checkpoint(path)
  _, fresh = task.build(cfg)
  memory, initial = model.backbone.memories[0], fresh.backbone.memories[0]
  keys = {k.split("/memories/0/")[1].split("/.ATTRIBUTES")[0]: k
          for k in stored.get_variable_to_shape_map()
          if "/memories/0/" in k and k.endswith("/.ATTRIBUTES/VARIABLE_VALUE")
          and "OPTIMIZER_SLOT" not in k}
  for name in ("values", "sub_keys", "query_kernel"):
    restored, trained = getattr(memory, name).numpy(), stored.get_tensor(keys[name])
    np.testing.assert_array_equal(restored, trained)
    assert not np.allclose(trained, getattr(initial, name).numpy()), name


@pytest.mark.slow
def test_bench_memory_prints_scaling_json(capsys):
  from ssr_tf.bench import memory
  assert memory.main(["--log2_slots", "4", "6", "--steps", "1", "--repeats", "1", "--rows", "600",
                      "--batch_size", "64", "--impl", "tf", "--top_k", "2"]) == 0
  out = json.loads(capsys.readouterr().out)
  sizes = out["scaling"]["sizes"]
  assert [s["slots"] for s in sizes] == [16, 64]
  assert all(s["infer_examples_per_s"] > 0 and s["train_adagrad_examples_per_s"] > 0
             for s in sizes)
  ratio = out["scaling"]["ratio_2^6_vs_2^4"]
  assert ratio["slots"] == 4.0 and ratio["flops_per_example"] > 1.0
  grow = sizes[1]["memory_flops_per_example"]["scoring"] - sizes[0]["memory_flops_per_example"]["scoring"]
  assert sizes[1]["backbone_flops_per_example"] - sizes[0]["backbone_flops_per_example"] == grow


def test_dropout_and_tower_apply_as_in_ssr():
  mem = {**SMALL_MEMORY, "after_layer": 0}
  cfg = ModelConfig(name="ssr_msn", embedding_dim=4,
                    backbone={**SSR, "memories": [mem], "dropout": 0.5, "tower_units": [6]})
  bb = registry.build_backbone(cfg, num_fields=5)
  x = tf.random.normal([8, 5, 4])
  assert bb(x, training=False).shape == (8, 6)
  np.testing.assert_array_equal(bb(x, training=False), bb(x, training=False))
  assert not np.array_equal(bb(x, training=True), bb(x, training=False))
