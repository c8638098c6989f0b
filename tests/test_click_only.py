"""A click-only data set (spec labels without pay, as every Criteo conversion writes):
no pay head, loss or metrics; the export has click_prob only, and `ssr_tf serve`,
LocalScorer, `ssr_tf score`, evaluate and compare all handle it."""
import glob
import json
import logging

import numpy as np
import pytest
import tensorflow as tf

from ssr_tf import cli, task
from ssr_tf.config import ModelConfig, load_config
from ssr_tf.features import load_spec
from ssr_tf.models.ranker import build_model
from ssr_tf.serving import client as client_lib
from ssr_tf.serving.local import LocalScorer

from conftest import assert_export_matches, grpc_predict


def click_only_spec(synth_dir, tmp_path) -> str:
  """The synthetic spec without its pay label (and pay oracle); vocab paths made absolute."""
  spec = load_spec(str(synth_dir / "spec.yaml"))
  spec.labels = {"click": spec.labels["click"]}
  spec.oracle = {"click": spec.oracle["click"]}
  path = tmp_path / "click_only_spec.yaml"
  path.write_text(spec.to_yaml())
  return str(path)


@pytest.mark.parametrize("name,backbone", [
    ("ssr", {"mode": "dynamic", "num_views": 4, "view_dim": 8, "impl": "tf"}),
    ("mmoe", {"num_experts": 2, "expert_units": [8], "tower_units": [4]}),
])
def test_click_only_model_has_no_pay_parts(synth_dir, tmp_path, name, backbone):
  spec = load_spec(click_only_spec(synth_dir, tmp_path))
  model = build_model(spec, ModelConfig(name=name, embedding_dim=4, pay_mode="esmm",
                                        backbone=backbone))
  assert model.tasks == ("click",) and model.pay_head is None
  assert not [v.name for v in model.variables if "pay" in v.name]
  assert [m.name for m in model.metrics] == ["loss", "click_loss", "click_auc"]
  from ssr_tf.models.ranker import dummy_batch
  assert set(model(dummy_batch(spec))) == {"click_prob"}


@pytest.mark.slow
def test_click_only_trains_without_gradient_warning_exports_and_is_served(
    synth_dir, tmp_path, make_config, caplog, capsys):
  spec_path = click_only_spec(synth_dir, tmp_path)
  cfg_path = make_config(data={"spec": spec_path},
                         model={"pay_mode": "esmm", "loss_weights": {"click": 1.0, "pay": 1.0}},
                         train={"epochs": 1, "learning_rate": 0.005, "early_stopping_patience": 0})
  with caplog.at_level(logging.WARNING):
    assert cli.main(["train", "--config", str(cfg_path)]) == 0
  said = [r.getMessage() for r in caplog.records] + [capsys.readouterr().err]
  assert not [m for m in said if "Gradients do not exist" in m or "pay_head" in m], said
  state = json.loads((tmp_path / "model" / "train_state.json").read_text())
  assert state["completed"] and "click_auc" in state["history"]
  assert not [k for k in state["history"] if "pay" in k]

  assert cli.main(["evaluate", "--config", str(cfg_path)]) == 0
  ev = json.loads((tmp_path / "model" / "eval_test.json").read_text())
  assert set(ev["tasks"]) == {"click"} and 0.5 < ev["tasks"]["click"]["auc"] <= 1.0
  out = tmp_path / "compare.json"
  assert cli.main(["compare", "--config", str(cfg_path), "--against", str(cfg_path),
                   "--output", str(out)]) == 0
  cmp = json.loads(out.read_text())
  assert set(cmp["tasks"]) == {"click"} and cmp["tasks"]["click"]["diff"] == 0.0

  capsys.readouterr()
  base = tmp_path / "export"
  assert cli.main(["export", "--config", str(cfg_path), "--output", str(base)]) == 0
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["outputs"] == ["click_prob"]
  loaded = tf.saved_model.load(str(base / "1"))
  for sig in ("serving_default", "predict_raw"):
    assert set(loaded.signatures[sig].structured_outputs) == {"click_prob"}, sig
  cfg = load_config(str(cfg_path))
  shard = sorted(glob.glob(cfg.data.test))[0]
  _, model = task.build(cfg)
  task.restore(model, cfg.train.model_dir)
  served = assert_export_matches(base / "1", shard, model, rows=32, keys=("click_prob",))
  assert set(served) == {"click_prob"}
  records = [r.numpy() for r in tf.data.TFRecordDataset(shard).take(20)]
  want = np.array(served["click_prob"][:20])

  with LocalScorer(str(base)) as scorer:                         # in-process, no server
    assert scorer.output_names() == ["click_prob"]
    got = scorer.score_examples(records)
  assert set(got) == {"click_prob"}
  np.testing.assert_allclose(got["click_prob"], want, atol=1e-5)
  rec = tmp_path / "rows.tfrecord"
  with tf.io.TFRecordWriter(str(rec)) as w:
    for r in records:
      w.write(r)
  assert client_lib.main(["--saved_model", str(base), "--input", str(rec), "--json"]) == 0
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [set(r) for r in rows] == [{"click_prob"}] * 20
  np.testing.assert_allclose([r["click_prob"] for r in rows], want, atol=1e-5)

  from ssr_tf.serving.process import ServerProcess
  with ServerProcess(str(base), ["--file_system_poll_wait_seconds=0"]) as srv:
    resp = grpc_predict(srv.target, records)
    assert set(resp.outputs) == {"click_prob"}
    np.testing.assert_allclose(tf.make_ndarray(resp.outputs["click_prob"]), want, atol=1e-5)
    with client_lib.RankingClient(srv.target) as c:
      assert c.output_names() == ["click_prob"]
    capsys.readouterr()
    assert client_lib.main(["--server", srv.target, "--input", str(rec)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0] == "click_prob" and len(lines) == 21
  np.testing.assert_allclose([float(x) for x in lines[1:]], want, atol=2e-6)
