"""`ssr_tf compare`: two trained models scored on the same rows, paired DeLong test."""
import json

import pytest
import yaml

from ssr_tf import cli, metrics, task
from ssr_tf.comparison import compare
from ssr_tf.config import load_config
from ssr_tf.evaluation import predict_split

from conftest import experiment_yaml


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, synth_dir):
  """An SSR-D and a DNN trained for one epoch on the shared synthetic data."""
  paths = {}
  for name, model in [("ssr", {"name": "ssr", "embedding_dim": 8, "backbone": {
      "mode": "dynamic", "num_layers": 1, "num_views": 4, "view_dim": 8, "impl": "tf"}}),
                      ("dnn", {"name": "dnn", "embedding_dim": 8,
                               "backbone": {"hidden_units": [16]}})]:
    d = tmp_path_factory.mktemp(name)
    paths[name] = experiment_yaml(d, synth_dir, model=model, train={"learning_rate": 0.005})
    assert cli.main(["train", "--config", str(paths[name])]) == 0
  return paths


def test_compare_cli_matches_each_models_own_predictions(two_models, tmp_path, capsys):
  out = tmp_path / "cmp.json"
  assert cli.main(["compare", "--config", str(two_models["ssr"]), "--against",
                   str(two_models["dnn"]), "--output", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "p_value" in printed.splitlines()[0]
  result = json.loads(out.read_text())
  assert set(result["tasks"]) == {"click", "pay"}
  # The paired test uses exactly the AUCs that each model gets on its own.
  for name, key in (("ssr", "auc_a"), ("dnn", "auc_b")):
    cfg = load_config(str(two_models[name]))
    spec, model = task.build(cfg)
    task.restore(model, cfg.train.model_dir)
    arrays = predict_split(model, spec, cfg)
    for t in ("click", "pay"):
      want = metrics.auc(arrays[f"label_{t}"], arrays[f"{t}_prob"])
      assert result["tasks"][t][key] == pytest.approx(want, abs=1e-6)
  click = result["tasks"]["click"]
  assert click["diff"] == pytest.approx(click["auc_a"] - click["auc_b"])
  assert click["se"] > 0 and 0 <= click["p_value"] <= 1 and click["rows"] > 0


def test_compare_against_itself_has_no_difference(two_models):
  cfg = load_config(str(two_models["dnn"]))
  r = compare(cfg, cfg)
  assert r["tasks"]["click"]["diff"] == 0 and r["tasks"]["click"]["p_value"] == 1.0


def test_compare_refuses_different_records(two_models, tmp_path, capsys):
  raw = yaml.safe_load(two_models["dnn"].read_text())
  raw["data"]["test"] = raw["data"]["valid"]
  other = tmp_path / "other.yaml"
  other.write_text(yaml.safe_dump(raw))
  code = cli.main(["compare", "--config", str(two_models["ssr"]), "--against", str(other)])
  err = capsys.readouterr().err
  assert code == 2 and "data.test" in err and "Traceback" not in err
  assert len([l for l in err.splitlines() if l.strip()]) == 1


def test_compare_accepts_a_spec_with_fewer_features_but_not_the_reverse(two_models, tmp_path,
                                                                       capsys, synth_dir):
  """Another spec file over the same records (a feature left out, as the history suite's
  variants do): B parsed with A's spec works; A missing one of B's features is named."""
  from ssr_tf.features import load_spec
  spec = load_spec(str(synth_dir / "spec.yaml"))
  dropped = spec.features.pop(-1).name
  fewer = tmp_path / "fewer.yaml"
  fewer.write_text(spec.to_yaml())
  run = tmp_path / "fewer_run"
  run.mkdir()
  cfg = experiment_yaml(run, synth_dir, data={"spec": str(fewer)},
                        model={"name": "dnn", "embedding_dim": 8,
                               "backbone": {"hidden_units": [16]}},
                        train={"steps_per_epoch": 3})
  assert cli.main(["train", "--config", str(cfg)]) == 0
  capsys.readouterr()
  assert cli.main(["compare", "--config", str(two_models["dnn"]), "--against", str(cfg)]) == 0
  code = cli.main(["compare", "--config", str(cfg), "--against", str(two_models["dnn"])])
  err = capsys.readouterr().err
  assert code == 2 and f"feature {dropped!r}" in err and "swap" in err


def test_compare_untrained_model_is_named(two_models, tmp_path, capsys):
  code = cli.main(["compare", "--config", str(two_models["ssr"]), "--against",
                   str(two_models["dnn"]), "--set_against", f"train.model_dir={tmp_path / 'none'}"])
  err = capsys.readouterr().err
  assert code == 2 and "no checkpoint under" in err and str(tmp_path / "none") in err


def test_compare_slices_test_each_value_on_its_own_rows(two_models, tmp_path, capsys):
  out = tmp_path / "cmp.json"
  assert cli.main(["compare", "--config", str(two_models["ssr"]), "--against",
                   str(two_models["dnn"]), "--slice_by", "scene", "--output", str(out)]) == 0
  printed = capsys.readouterr().out.splitlines()
  assert any(line.startswith("scene / task") for line in printed)
  result = json.loads(out.read_text())
  cfg = load_config(str(two_models["ssr"]))
  spec, model_a = task.build(cfg)
  task.restore(model_a, cfg.train.model_dir)
  cfg_b = load_config(str(two_models["dnn"]))
  _, model_b = task.build(cfg_b)
  task.restore(model_b, cfg_b.train.model_dir)
  arrays = predict_split(model_a, spec, cfg, others={"b": model_b}, slice_by="scene")
  values = result["slices"]["values"]
  assert sum(v["tasks"]["click"]["rows"] for v in values) == arrays["slice"].size
  for v in values:
    rows = arrays["slice"] == int(v["value"])
    want = metrics.delong_test(arrays["label_click"][rows], arrays["click_prob"][rows],
                               arrays["b:click_prob"][rows])
    assert v["tasks"]["click"]["diff"] == pytest.approx(want["diff"], abs=1e-6)
    assert v["tasks"]["click"]["p_value"] == pytest.approx(want["p_value"], abs=1e-6)
  assert cli.main(["compare", "--config", str(two_models["ssr"]), "--against",
                   str(two_models["dnn"]), "--slice_by", "nope"]) == 2
  assert "--slice_by nope: not a feature" in capsys.readouterr().err
