"""convert -> train a few steps -> evaluate (AUC, LogLoss, GAUC) on the real multi-task
sample (search_id groups, click and conversion labels), using the written config.yaml."""
import json
import math
import pathlib

import pytest

import ssr_tf  # noqa: F401
from ssr_tf.pipelines import convert

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "public"


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason=f"public samples not found: {DATA}")
def test_convert_train_evaluate_mtl(tmp_path):
  from ssr_tf import cli
  from ssr_tf.config import load_config
  out = tmp_path / "mtl"
  convert.convert(["--format", "csv", "--mapping", str(REPO / "pipelines/mappings/mtl.yaml"),
                   "--train_input", str(DATA / "mtl_train.csv"), "--test_input",
                   str(DATA / "mtl_test.csv"), "--output", str(out), "--min_count", "2",
                   "--quiet"])
  config = str(out / "config.yaml")
  small = ["--set", "data.batch_size=32", "--set", "train.steps_per_epoch=3",
           "--set", "train.verbose=0", "--set", "model.backbone.num_views=4",
           "--set", "model.backbone.view_dim=8", "--set", "model.backbone.impl=tf"]
  assert cli.main(["train", "--config", config, *small]) == 0
  assert cli.main(["evaluate", "--config", config, *small]) == 0
  model_dir = pathlib.Path(load_config(config).train.model_dir)
  assert model_dir == out.resolve() / "model"
  result = json.loads((model_dir / "eval_test.json").read_text())
  for task in ("click", "pay"):
    r = result["tasks"][task]
    assert r["rows"] == 100
    assert 0.0 <= r["auc"] <= 1.0 and math.isfinite(r["logloss"])
    assert "gauc" in r       # search_id groups (None when no group has both labels)
