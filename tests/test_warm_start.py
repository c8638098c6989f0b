"""`train.warm_start_from`: a new run starts from an earlier run's model weights (not its
optimizer); checkpoints that do not fit are refused, naming the key, before anything is
touched."""
import json
import shutil

import numpy as np
import pytest
import tensorflow as tf
import yaml

from conftest import experiment_yaml
from ssr_tf import cli, task, warm_start
from ssr_tf.config import load_config
from ssr_tf.features import load_spec


def _config(tmp_path, synth_dir, name, **train):
  run = tmp_path / name
  run.mkdir(exist_ok=True)
  return experiment_yaml(run, synth_dir, train={"epochs": 1, "steps_per_epoch": 6, **train})


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, synth_dir):
  """A finished run: its config and best checkpoint."""
  tmp = tmp_path_factory.mktemp("warm")
  cfg = _config(tmp, synth_dir, "day1")
  assert cli.main(["train", "--config", str(cfg)]) == 0
  return tmp, cfg, tf.train.latest_checkpoint(str(tmp / "day1" / "model" / "ckpt"))


def test_weights_come_from_the_checkpoint_and_the_optimizer_starts_fresh(earlier):
  _, cfg, ckpt = earlier
  _, model = task.build(load_config(str(cfg)))
  reader = tf.train.load_checkpoint(ckpt)
  assert warm_start.load_weights(model, ckpt, "k") == len(model.variables)
  proj = model.backbone.ssr_layers[0].proj_kernel
  np.testing.assert_array_equal(
      proj.numpy(),
      reader.get_tensor("model/backbone/ssr_layers/0/proj_kernel/.ATTRIBUTES/VARIABLE_VALUE"))
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
  assert reader.get_tensor("model/optimizer/Optimizer0/iter/.ATTRIBUTES/VARIABLE_VALUE") == 6
  assert int(model.optimizer.iterations.numpy()) == 0     # not restored from the checkpoint


def test_train_warm_starts_from_a_model_dir(earlier, synth_dir, capsys):
  tmp, _, ckpt = earlier
  cfg = _config(tmp, synth_dir, "day2", warm_start_from=str(tmp / "day1" / "model"))
  assert cli.main(["train", "--config", str(cfg)]) == 0
  assert json.dumps({"warm_start": ckpt}).rstrip("}") in capsys.readouterr().out
  state = json.loads((tmp / "day2" / "model" / "train_state.json").read_text())
  assert state["warm_started_from"] == ckpt and state["optimizer_iterations"] == 6


@pytest.mark.parametrize("override,message", [
    ({"model": {"backbone": {"mode": "dynamic", "num_layers": 3, "num_views": 4,
                             "view_dim": 8}}}, "does not fit this model"),
    ({"model": {"backbone": {"mode": "dynamic", "num_layers": 1, "num_views": 4,
                             "view_dim": 8}}}, "holds 46 model weights, this model has 39"),
    ({"model": {"backbone": {"mode": "dynamic", "num_layers": 2, "num_views": 4,
                             "view_dim": 16}}}, "incompatible tensor with shape"),
    ({"model": {"name": "dnn", "backbone": {"hidden_units": [32, 32]}}}, "does not fit"),
])
def test_a_checkpoint_that_does_not_fit_is_refused(earlier, synth_dir, tmp_path, capsys,
                                                     override, message):
  base, _, _ = earlier
  cfg = experiment_yaml(tmp_path, synth_dir, train={"epochs": 1, "steps_per_epoch": 2,
                                                     "warm_start_from": str(base / "day1" / "model")},
                        **override)
  capsys.readouterr()
  assert cli.main(["train", "--config", str(cfg)]) == 2
  err = capsys.readouterr().err
  assert err.startswith("ssr_tf: error: config key 'train.warm_start_from'") and message in err
  assert len(err.strip().splitlines()) == 1
  assert not (tmp_path / "model" / "train_state.json").exists()


def test_missing_or_self_warm_start_is_refused_before_overwrite(earlier, synth_dir, tmp_path,
                                                                capsys):
  base, _, _ = earlier
  cfg = _config(tmp_path, synth_dir, "x", warm_start_from=str(tmp_path / "nothing"))
  assert cli.main(["train", "--config", str(cfg)]) == 2
  assert "'train.warm_start_from': no checkpoint at" in capsys.readouterr().err
  own = base / "day1" / "model"
  cfg = _config(tmp_path, synth_dir, "y", warm_start_from=str(own), model_dir=str(own))
  before = sorted(p.name for p in (own / "ckpt").iterdir())
  assert cli.main(["train", "--config", str(cfg), "--overwrite"]) == 2
  assert "lies inside this run's train.model_dir" in capsys.readouterr().err
  assert sorted(p.name for p in (own / "ckpt").iterdir()) == before   # nothing cleared


def test_a_changed_vocabulary_is_refused_naming_the_feature(earlier, synth_dir, tmp_path, capsys):
  """Same table sizes, different values behind the rows: the shapes fit, the meaning not."""
  base, _, _ = earlier
  data = tmp_path / "data"
  shutil.copytree(synth_dir, data)
  spec = yaml.safe_load((data / "spec.yaml").read_text())
  feature = next(f for f in spec["features"] if f.get("vocab_file"))
  vocab = data / feature["vocab_file"]
  lines = vocab.read_text().splitlines()
  kept = [i for i, line in enumerate(lines)                 # values above min_count
          if int(line.partition("\t")[2] or 1 << 30) > feature.get("min_count", 0)]
  i, j = kept[:2]
  lines[i], lines[j] = lines[j], lines[i]                    # two kept values swap rows
  vocab.write_text("\n".join(lines) + "\n")
  run = tmp_path / "run"
  run.mkdir()
  cfg = experiment_yaml(run, data, train={"epochs": 1, "steps_per_epoch": 2,
                                          "warm_start_from": str(base / "day1" / "model")})
  assert cli.main(["train", "--config", str(cfg), "--overwrite"]) == 2
  err = capsys.readouterr().err
  assert f"feature(s) ['{feature['name']}']" in err and "'train.warm_start_from'" in err
  assert not (run / "model").exists()                 # refused before anything was written
  # the digests behind the check: only the swapped feature's changed
  assert json.loads((base / "day1" / "model" / "feature_rows.json").read_text()) != \
      warm_start.feature_rows(load_spec(str(data / "spec.yaml")))
