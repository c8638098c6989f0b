"""The real-data study tools: spec variants of suite entries, the cross-data-set table with
seed-paired gap intervals, the same-budget selection, and the ICS start probe."""
import json
import math

import numpy as np
import pytest

from conftest import experiment_yaml

from ssr_tf.bench import quality, study
from ssr_tf.errors import UserError
from ssr_tf.features import Feature, FeatureSpec


def _run(name: str, seed: int, test: float, valid: float) -> dict:
  return {"name": name, "seed": seed, "test": {"click_auc": test}, "valid_click_auc": valid}


def _write(path, runs):
  path.mkdir(parents=True, exist_ok=True)
  (path / "probe.runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))


def test_paired_gap_is_the_mean_seed_difference_with_a_t_interval():
  row = {s: _run("a", s, t, 0) for s, t in enumerate([0.80, 0.81, 0.79])}
  ref = {s: _run("b", s, t, 0) for s, t in enumerate([0.78, 0.80, 0.78])}
  m, half, n = study.paired_gap(row, ref)
  d = np.array([0.02, 0.01, 0.01])
  assert n == 3 and m == pytest.approx(d.mean())
  assert half == pytest.approx(4.303 * d.std(ddof=1) / math.sqrt(3))


def test_study_table_and_selection_pick_on_validation_not_test(tmp_path, capsys):
  runs = []
  for s in range(3):
    runs += [_run("dnn", s, 0.80, 0.79), _run("dnn/drop0.2", s, 0.70, 0.80),  # best on valid
             _run("ssr_d", s, 0.78 + 0.001 * s, 0.78)]
  _write(tmp_path / "a", runs)
  assert study.main(["--suite", "probe", "--runs", f"real={tmp_path / 'a'}", "--against", "dnn",
                     "--family", "ssr_d=ssr_d", "--family", "dnn=dnn,dnn/drop0.2",
                     "--output", str(tmp_path / "out")]) == 0
  md = (tmp_path / "out" / "probe_study.md").read_text()
  assert "| ssr_d | 0.7810 ± 0.0010 (n=3) | -1.90 [-2.15, -1.65] |" in md
  assert "dnn/drop0.2: 0.7000" in md           # picked by validation although worse on test
  assert "| dnn | +8.10 [+7.85, +8.35] |" in md  # ssr_d's pick minus dnn's pick
  with pytest.raises(UserError, match="no probe.runs.jsonl"):
    study.main(["--suite", "probe", "--runs", f"x={tmp_path / 'missing'}"])
  with pytest.raises(UserError, match="expected NAME=VALUE"):
    study.main(["--suite", "probe", "--runs", str(tmp_path / "a")])


def test_spec_variant_drops_history_or_sets_pooling():
  spec = FeatureSpec(features=[
      Feature(name="movieId", num_buckets=10),
      Feature(name="hist_movieId", type="sequence", share_with="movieId", max_len=3),
      Feature(name="hist_genres", type="sequence", share_with="movieId", max_len=3,
              side_of="hist_movieId")], labels={"click": "label"})
  assert [f.name for f in quality.spec_variant(spec, {"drop": ["hist_*"]}).features] == [
      "movieId"]
  mean = quality.spec_variant(spec, {"pooling": "mean"})
  assert mean.features[1].pooling == "mean" and spec.features[1].pooling != "mean"
  with pytest.raises(UserError, match="unknown keys"):
    quality.spec_variant(spec, {"dorp": []})


def test_probe_and_history_suites_treat_every_family_alike():
  for fam in ("dnn", "dcnv2", "ssr_d"):
    assert {f"{fam}/{t}" for t in ("lr3e-3", "drop0.2", "cos3e-3", "cos3e-3+drop0.2")} <= set(
        quality.PROBE)
    assert {f"{fam}/none", f"{fam}/mean", f"{fam}/attention"} <= set(quality.HISTORY)
  assert all(e["features"] == {"drop": ["hist_*"]} for e in quality.PROBE.values())


def test_ics_start_reports_zeros_dead_views_and_scale_invariance(tmp_path, synth_dir, capsys):
  from ssr_tf.bench import ics_start
  cfg = experiment_yaml(tmp_path, synth_dir)
  assert ics_start.main(["--config", str(cfg), "--steps", "3", "--at", "1,3",
                         "--probe_rows", "256"]) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert set(out["steps"]) == {"0", "1", "3"}
  first = out["steps"]["0"][0]
  assert 0.0 < first["zeros"] < 1.0 and len(first["zeros_per_view"]) == 4
  assert first["relu_zeros"] <= first["zeros"]          # ICS removes at least what ReLU does
  scales = out["proj_scale_zeros_at_init"]
  assert scales["0.1"][0] == pytest.approx(scales["10.0"][0], abs=1e-3)   # ICS(c z) = c ICS(z)


def test_real_suite_converts_movielens_once_and_names_a_missing_folder(tmp_path):
  with pytest.raises(UserError, match=r"--movielens .*: no ratings.csv"):
    quality.movielens_data(tmp_path / "nowhere", tmp_path / "out", "random")
  assert set(quality.REAL) >= {"dnn", "dcnv2", "ssr_d", "ssr_s", "ssr_d/cos3e-3+drop0.2"}
  assert all(e is quality.PROBE[k] for k, e in quality.REAL.items())   # runs are shared


@pytest.mark.parametrize("name", ["ssr_d", "ssr_s"])
def test_shipped_ssr_configs_are_the_measured_recipe(name):
  """configs/ssr_{d,s}.yaml train exactly what the real suite's recipe rows measured."""
  import pathlib
  from ssr_tf.config import load_config
  cfg = load_config(str(pathlib.Path(__file__).parents[1] / "configs" / f"{name}.yaml"))
  entry = quality.REAL[f"{name}/{quality.RECIPE}"]
  assert {k: v for k, v in cfg.model.backbone.items() if k != "impl"} == entry["backbone"]
  assert (cfg.train.learning_rate, cfg.train.lr_decay) == (
      entry["protocol"]["learning_rate"], entry["protocol"]["lr_decay"])
  assert cfg.model.embedding_dim == quality.Protocol.embedding_dim
  assert cfg.data.batch_size == quality.Protocol.batch_size
