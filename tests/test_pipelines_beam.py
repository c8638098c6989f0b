"""Beam DirectRunner == local runner, byte for byte, on the real samples (several input
chunks, several shards per split, a time split found by the pipeline, bad rows).

Needs apache-beam (`pip install ssr_tf[beam]`); skipped without it.
"""
import filecmp
import json
import pathlib

import pytest

import ssr_tf  # noqa: F401
from ssr_tf.errors import DataError
from ssr_tf.pipelines import convert

beam = pytest.importorskip("apache_beam", reason="apache-beam not installed "
                           "(pip install 'ssr_tf[beam]')")

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "public"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not DATA.is_dir(), reason=f"samples not found: {DATA}")]


def _same_tree(a: pathlib.Path, b: pathlib.Path) -> list[str]:
  """Relative paths of files that differ or exist on one side only (config.yaml, which
  names its own folder, excepted)."""
  fa = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
  fb = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
  bad = sorted(str(p) for p in fa ^ fb)
  bad += [str(p) for p in sorted(fa & fb) if str(p) != "config.yaml"
          and not filecmp.cmp(a / p, b / p, shallow=False)]
  return bad


def _both(tmp_path: pathlib.Path, *argv) -> tuple[pathlib.Path, pathlib.Path]:
  args = [str(a) for a in argv] + ["--quiet"]
  convert.convert(args + ["--output", str(tmp_path / "local")])
  convert.convert(args + ["--output", str(tmp_path / "beam"), "--runner", "DirectRunner",
                          "--chunk_mb", "0.004"])
  return tmp_path / "local", tmp_path / "beam"


def test_beam_equals_local_criteo_with_bad_rows(tmp_path):
  lines = (DATA / "criteo_sample.txt").read_text().splitlines()
  lines[7] = lines[7].replace(",", ",x", 1)           # I1 "x..." -> bad row at line 8
  lines[120] = ",".join(lines[120].split(",")[:10])    # too few fields -> line 121
  src = tmp_path / "criteo.csv"
  src.write_text("\n".join(lines) + "\n")
  local, beam_out = _both(tmp_path, "--format", "criteo", "--input", src, "--shard_size", "50",
                          "--min_count", "2", "--skip_bad_rows", "2", "--seed", "3")
  assert _same_tree(local, beam_out) == []
  stats = json.loads((beam_out / "stats.json").read_text())
  assert stats["skipped_rows"] == 2 and stats["rows_total"] == 198
  assert stats["shards"]["train"] == len(list((beam_out / "train").iterdir())) >= 3
  assert [b.split(":")[1] for b in stats["bad_rows"]] == ["8", "121"]
  # Over budget: the Beam runner fails after the run naming the same row as local.
  msgs = []
  for runner in ("local", "DirectRunner"):
    with pytest.raises(DataError) as e:
      convert.convert(["--format", "criteo", "--input", str(src), "--output",
                       str(tmp_path / f"fail_{runner}"), "--skip_bad_rows", "1", "--runner",
                       runner, "--quiet", "--chunk_mb", "0.004"])
    msgs.append(str(e.value))
  assert msgs[0] == msgs[1] and ":121: expected 40 fields, found 10" in msgs[0]


def test_beam_equals_local_taobao_time_split(tmp_path):
  local, beam_out = _both(tmp_path, "--format", "taobao", "--input",
                          DATA / "taobao_train_sample.csv", DATA / "taobao_test_sample.csv",
                          "--split", "time", "--shard_size", "30", "--min_count", "1")
  assert _same_tree(local, beam_out) == []
  stats = json.loads((beam_out / "stats.json").read_text())
  assert stats["split"]["valid_from"] == "2017-05-06 00:00:02"
  assert stats["rows"] == {"train": 122, "valid": 78, "test": 0}
