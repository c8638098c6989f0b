"""`ssr_tf evaluate`: the table and JSON, per-slice scores, and bad --slice_by values."""
import json

import numpy as np
import pytest

from conftest import experiment_yaml
from ssr_tf import cli, metrics, task
from ssr_tf.config import load_config
from ssr_tf.evaluation import predict_split


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synth_dir):
  d = tmp_path_factory.mktemp("eval")
  cfg = experiment_yaml(d, synth_dir, train={"steps_per_epoch": 10})
  assert cli.main(["train", "--config", str(cfg)]) == 0
  return d, cfg


@pytest.mark.parametrize("feature", ["scene", "query"])       # int64 and string values
def test_slices_match_the_rows_of_each_value(trained, capsys, feature):
  d, cfg = trained
  assert cli.main(["evaluate", "--config", str(cfg), "--slice_by", feature,
                   "--max_slices", "3"]) == 0
  printed = capsys.readouterr().out.splitlines()
  written = json.loads((d / "model" / "eval_test.json").read_text())
  slices = written["slices"]
  assert slices["by"] == feature and len(slices["values"]) <= 4
  assert any(line.startswith(f"{feature} ") and "click auc" in line for line in printed)
  c = load_config(str(cfg))
  spec, model = task.build(c)
  task.restore(model, c.train.model_dir)
  arrays = predict_split(model, spec, c, slice_by=feature)
  assert sum(v["rows"] for v in slices["values"]) == arrays["slice"].size
  top = slices["values"][0]
  raw = arrays["slice"]
  rows = raw == (top["value"].encode() if raw.dtype == object else int(top["value"]))
  assert top["rows"] == rows.sum()
  y, p = arrays["label_click"][rows], arrays["click_prob"][rows]
  assert top["click"]["auc"] == pytest.approx(metrics.auc(y, p))
  assert top["click"]["ne"] == pytest.approx(metrics.normalized_entropy(y, p))
  assert top["click"]["oracle_auc"] == pytest.approx(
      metrics.auc(y, arrays["oracle_click"][rows]))
  # the overall table is unchanged by slicing
  assert written["tasks"]["click"]["auc"] == pytest.approx(
      metrics.auc(arrays["label_click"], arrays["click_prob"]))


@pytest.mark.parametrize("args,message", [
    (["--slice_by", "scen"], "--slice_by scen: not a feature of the spec; did you mean 'scene'?"),
    (["--slice_by", "price"], "--slice_by price: a numeric feature"),
    (["--slice_by", "history_categories"], "a multi_categorical feature"),
])
def test_bad_slice_feature_is_named(trained, capsys, args, message):
  _, cfg = trained
  assert cli.main(["evaluate", "--config", str(cfg), *args]) == 2
  err = capsys.readouterr().err
  assert message in err and len(err.strip().splitlines()) == 1


def test_max_slices_must_be_positive(trained):
  _, cfg = trained
  with pytest.raises(SystemExit) as info:
    cli.main(["evaluate", "--config", str(cfg), "--slice_by", "scene", "--max_slices", "0"])
  assert info.value.code == 2
