"""`ssr_tf data synth_criteo` (Criteo-format lines, deterministic per seed) and
`ssr_tf data convert --ids dynamic` (dynamic categoricals, no vocabularies, flag errors)."""
import gzip
import json
import re

import numpy as np
import pytest

import ssr_tf  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from ssr_tf import cli, synth_criteo
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
