"""`ssr_tf data synth_criteo` (Criteo-format lines, deterministic per seed) and
`ssr_tf data convert --ids dynamic` (dynamic categoricals, no vocabularies, flag errors)."""
import gzip
import json
import re

import numpy as np
import pytest

import ssr_tf  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from ssr_tf import cli, metrics, synth_criteo
from ssr_tf.features import load_spec

HEX8 = re.compile(r"[0-9a-f]{8}")
INT = re.compile(r"-?[0-9]+")


def _synth(path, rows=3000, seed=0, **kw):
  cfg = synth_criteo.CriteoSynthConfig(rows=rows, seed=seed, id_space=100_000, **kw)
  return synth_criteo.write(cfg, str(path))


def test_zipf_ranks_follow_the_law():
  rng = np.random.default_rng(0)
  r = synth_criteo.zipf_ranks(rng, 200_000, 1000, 1.0)
  assert r.min() == 0 and r.max() == 999
  # a = 1: P(rank < k) = log(1 + k) / log(1001); rank < 9 -> log 10 / log 1001 = 0.3333.
  assert abs(np.mean(r < 9) - 0.3333) < 0.005
  # A large offset flattens the head: almost uniform, half the draws below the middle.
  flat = synth_criteo.zipf_ranks(rng, 200_000, 1000, 1.05, offset=1e9)
  assert abs(np.mean(flat < 500) - 0.5) < 0.01


def test_id_values_are_a_bijection_of_ranks():
  ranks = np.arange(200_000)
  for field in (0, 25):
    v = synth_criteo.id_values(ranks, field)
    assert len(np.unique(v)) == len(ranks) and v.max() < 1 << 32
  e = synth_criteo.id_effect(synth_criteo.id_values(ranks, 3), 3)
  assert abs(e.mean()) < 0.01 and abs(e.var() - 1.0) < 0.01 and abs(e).max() <= 3 ** 0.5


def test_generator_writes_criteo_lines_and_is_deterministic(tmp_path):
  a = _synth(tmp_path / "a.txt.gz", rows=3000, seed=5)
  b = _synth(tmp_path / "b.txt.gz", rows=3000, seed=5)
  c = _synth(tmp_path / "c.txt.gz", rows=3000, seed=6)
  plain = _synth(tmp_path / "d.txt", rows=3000, seed=5)
  raw = (tmp_path / "a.txt.gz").read_bytes()
  assert raw == (tmp_path / "b.txt.gz").read_bytes()
  assert raw != (tmp_path / "c.txt.gz").read_bytes()
  text = gzip.decompress(raw).decode()
  assert text == (tmp_path / "d.txt").read_text()
  assert a["rows"] == b["rows"] == c["rows"] == plain["rows"] == 3000
  lines = text.split("\n")
  assert lines[-1] == "" and len(lines) == 3001
  empty_int = empty_cat = 0
  for line in lines[:-1]:
    f = line.split("\t")
    assert len(f) == 40 and f[0] in ("0", "1")
    for v in f[1:14]:
      assert v == "" or INT.fullmatch(v), line
      empty_int += v == ""
    for v in f[14:]:
      assert v == "" or HEX8.fullmatch(v), line
      empty_cat += v == ""
  assert empty_int > 0 and empty_cat > 0
  positives = sum(line[0] == "1" for line in lines[:-1])
  assert a["ctr"] == round(positives / 3000, 4) and 0.15 < a["ctr"] < 0.35
  assert a["large_fields"] == ["C3", "C4", "C12", "C16"]
  for k, name in enumerate(a["large_fields"]):
    col = 14 + int(name[1:]) - 1
    assert a["distinct_ids"][name] == len({l.split("\t")[col] for l in lines[:-1]} - {""})
    assert a["distinct_ids"][name] > 2000       # 3,000 draws from a flat head: mostly new
  # The label model, recomputed from the written text alone, gives the reported AUCs.
  rows = [line.split("\t") for line in lines[:-1]]
  logit = np.full(len(rows), synth_criteo.BIAS)
  large_part = np.zeros(len(rows))
  for j, slope in synth_criteo.INT_SLOPES.items():
    v = np.array([float(r[1 + j]) if r[1 + j] else np.nan for r in rows])
    t = (np.log1p(np.maximum(v, 0)) - synth_criteo.INT_MU[j]) / synth_criteo.INT_SIGMA
    logit += np.where(np.isnan(v), 0.0, slope * np.nan_to_num(t))
  for f in range(26):
    col = [r[14 + f] for r in rows]
    v = np.array([int(x, 16) if x else 0 for x in col], dtype=np.uint64)
    big = f in synth_criteo.CriteoSynthConfig().large
    w = synth_criteo.LARGE_WEIGHT if big else synth_criteo.SMALL_WEIGHT
    e = np.where([x == "" for x in col], 0.0, w * synth_criteo.id_effect(v, f))
    logit += e
    large_part += e if big else 0.0
  y = np.array([r[0] == "1" for r in rows])
  assert a["oracle_rows"] == 3000
  assert a["oracle_auc"] == round(metrics.auc(y, logit), 4)
  assert a["oracle_auc_without_large_ids"] == round(metrics.auc(y, logit - large_part), 4)
  assert 0.6 < a["oracle_auc_without_large_ids"] < a["oracle_auc"] < 0.9


def test_generator_cli_prints_one_json_line(tmp_path, capsys):
  out = tmp_path / "x.txt"
  rc = cli.main(["data", "synth_criteo", "--output", str(out), "--rows", "250",
                 "--large_fields", "2", "--id_space", "1000", "--progress_every", "0"])
  lines = capsys.readouterr().out.strip().splitlines()
  assert rc == 0 and len(lines) == 1
  summary = json.loads(lines[0])
  assert summary["rows"] == 250 and summary["large_fields"] == ["C3", "C4"]
  assert len(out.read_text().splitlines()) == 250
  rc = cli.main(["data", "synth_criteo", "--output", str(out), "--id_space", str(1 << 33)])
  assert rc == 2 and "--id_space" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# ssr_tf data convert --ids dynamic


@pytest.fixture(scope="module")
def criteo_small(tmp_path_factory):
  path = tmp_path_factory.mktemp("criteo") / "train.txt.gz"
  _synth(path, rows=2000, seed=1)
  return path


def _convert(*argv):
  from ssr_tf.pipelines import convert
  return convert.convert([str(a) for a in argv] + ["--quiet", "--shard_size", "1000"])


def test_convert_dynamic_ids_writes_dynamic_spec_and_no_vocab(criteo_small, tmp_path):
  out = tmp_path / "dyn"
  summary = _convert("--format", "criteo", "--input", criteo_small, "--output", out,
                     "--ids", "dynamic", "--capacity", "5000", "--admit_after", "2")
  assert sum(summary["rows"].values()) == 2000
  assert not (out / "vocab").exists()
  assert sorted(p.name for p in out.iterdir()) == [
      "config.yaml", "spec.yaml", "stats.json", "test", "train", "valid"]
  spec = load_spec(str(out / "spec.yaml"))
  cats = [f for f in spec.features if f.type == "categorical"]
  assert [f.name for f in cats] == [f"C{i}" for i in range(1, 27)]
  for f in cats:
    assert f.dtype == "string" and f.vocab_file is None and f.min_count == 0
    assert (f.dynamic.capacity, f.dynamic.admit_after) == (5000, 2)
    assert f.table_size() == 1 + 1 + 5000
  assert all(f.boundaries for f in spec.features if f.type == "numeric")
  text = (out / "spec.yaml").read_text()
  assert "vocab" not in text and text.count("capacity: 5000") == 26
  stats = json.loads((out / "stats.json").read_text())
  assert stats["ids"] == {"kind": "dynamic", "capacity": 5000, "admit_after": 2,
                          "fallback_rows": 1}
  assert stats["vocabularies_from"] == "none (--ids dynamic)"
  for name in ("C3", "C20"):
    d = stats["features"][name]
    assert "vocab_size" not in d and "oov_rate" not in d and "distinct_train" not in d
    assert d["ids"] == "dynamic" and d["capacity"] == 5000
  # C20 is missing in ~44% of the rows, C3 in ~3%: the missing values are still counted.
  assert 0.35 < stats["features"]["C20"]["missing_rate"]["train"] < 0.53
  assert stats["features"]["C3"]["missing_rate"]["train"] < 0.08
  # The records keep the raw hex strings and parse with the dynamic spec.
  import tensorflow as tf
  rec = next(iter(tf.data.TFRecordDataset(sorted(map(str, (out / "train").glob("part-*"))),
                                          compression_type="GZIP")))
  ex = tf.train.Example.FromString(rec.numpy())
  c1 = ex.features.feature["C1"].bytes_list.value
  assert len(c1) == 1 and HEX8.fullmatch(c1[0].decode())
  # Converting new logs with this spec keeps the dynamic features and counts no values.
  again = tmp_path / "again"
  _convert("--format", "criteo", "--input", criteo_small, "--output", again,
           "--spec", out / "spec.yaml", "--ratios", "0,0,1")
  assert (again / "spec.yaml").read_text() == text
  assert not (again / "vocab").exists()
  assert json.loads((again / "stats.json").read_text())["features"]["C3"]["ids"] == "dynamic"


def test_convert_default_ids_unchanged(criteo_small, tmp_path):
  out = tmp_path / "vocab"
  _convert("--format", "criteo", "--input", criteo_small, "--output", out)
  spec = load_spec(str(out / "spec.yaml"))
  assert all(f.vocab_file and f.dynamic is None for f in spec.features
             if f.type == "categorical")
  assert len(list((out / "vocab").glob("*.txt"))) == 26
  stats = json.loads((out / "stats.json").read_text())
  assert "ids" not in stats and "vocab_size" in stats["features"]["C3"]


@pytest.mark.parametrize("flags,named", [
    (["--ids", "dynamic", "--capacity", "0"], "--capacity"),
    (["--ids", "dynamic", "--capacity", "-5"], "--capacity"),
    (["--ids", "dynamic"], "--capacity"),
    (["--ids", "dynamic", "--capacity", "10", "--admit_after", "0"], "--admit_after"),
    (["--capacity", "10"], "--capacity"),
    (["--admit_after", "2"], "--admit_after"),
    (["--ids", "vocab", "--capacity", "10"], "--capacity"),
    (["--ids", "dynamic", "--capacity", "10", "--spec", "SPEC"], "--spec"),
    (["--ids", "dynamic", "--capacity", "10", "--runner", "DirectRunner"], "--runner"),
    (["--ids", "hashed"], "--ids"),
])
def test_convert_bad_ids_flags_exit_2_naming_the_flag(criteo_small, tmp_path, capsys, flags,
                                                       named):
  flags = [str(tmp_path / "spec.yaml") if f == "SPEC" else f for f in flags]
  rc = cli.main(["data", "convert", "--format", "criteo", "--input", str(criteo_small),
                 "--output", str(tmp_path / "o"), "--quiet", *flags])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1, err
  assert err[0].startswith(f"ssr_tf: error: {named}"), err
  assert not (tmp_path / "o").exists()
