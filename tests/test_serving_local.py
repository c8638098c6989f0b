"""`ssr_tf score --saved_model`: an export scored in-process, no server, same numbers as the
SavedModel's own signature; bad paths, exports and records are named."""
import json

import ssr_tf  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf

from ssr_tf.errors import DataError, UserError
from ssr_tf.serving import client as client_lib
from ssr_tf.serving.local import LocalScorer, resolve_version
from ssr_tf.serving.toy_model import build_toy_model, toy_examples


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  path = tmp_path_factory.mktemp("export")
  build_toy_model(str(path), version=1, seed=0)
  build_toy_model(str(path), version=2, seed=1)
  return path


def _reference(path, examples):
  sig = tf.saved_model.load(str(path)).signatures["serving_default"]
  return {k: v.numpy() for k, v in sig(examples=tf.constant(examples)).items()}


def test_versions_resolve_newest_or_named(base):
  assert resolve_version(str(base)) == (2, str(base / "2"))
  assert resolve_version(str(base), 1) == (1, str(base / "1"))
  assert resolve_version(str(base / "1")) == (1, str(base / "1"))
  with pytest.raises(UserError, match=r"no version 7; it has \[1, 2\]"):
    resolve_version(str(base), 7)
  with pytest.raises(UserError, match="--version 2 names another"):
    resolve_version(str(base / "1"), 2)


def test_scores_match_the_savedmodel_signature(base):
  exs = toy_examples(40, seed=3)
  for version in (1, 2):
    want = _reference(base / str(version), exs)
    with LocalScorer(str(base), version) as scorer:
      got = scorer.score_examples(exs)
      assert scorer.feature_types()["history"].multi
    np.testing.assert_allclose(got["click_prob"], want["click_prob"], rtol=1e-6)
    np.testing.assert_allclose(got["pay_prob"], want["pay_prob"], rtol=1e-6)


def test_score_cli_local_matches_and_writes_a_file(base, tmp_path, capsys):
  exs = toy_examples(9, seed=4)
  rec = tmp_path / "rows.tfrecord"
  with tf.io.TFRecordWriter(str(rec)) as w:
    for e in exs:
      w.write(e)
  out = tmp_path / "scores.jsonl"
  assert client_lib.main(["--saved_model", str(base), "--input", str(rec), "--batch_size", "4",
                          "--json", "--output", str(out)]) == 0
  assert "scored 9 records" in capsys.readouterr().err
  got = [json.loads(line) for line in out.read_text().splitlines()]
  want = _reference(base / "2", exs)
  np.testing.assert_allclose([g["click_prob"] for g in got], want["click_prob"], atol=1e-6)
  # JSON rows are typed by predict_raw, as through a server
  rows = tmp_path / "rows.jsonl"
  rows.write_text('{"user_id": 3, "item_id": 5, "city": "c1", "price": 2.5, "history": [1, 2]}\n')
  assert client_lib.main(["--saved_model", str(base / "1"), "--input", str(rows)]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0] == "click_prob\tpay_prob" and len(lines) == 2


def test_score_cli_glob_scores_every_file_in_name_order(base, tmp_path, capsys):
  shards = []
  for i, seed in enumerate((5, 6, 7)):
    exs = toy_examples(3 + i, seed=seed)
    shards.append(exs)
    with tf.io.TFRecordWriter(str(tmp_path / f"part-{i}.tfrecord")) as w:
      for e in exs:
        w.write(e)
  (tmp_path / "notes.txt").write_text("not matched\n")
  assert client_lib.main(["--saved_model", str(base), "--input", str(tmp_path / "part-*"),
                          "--batch_size", "2"]) == 0
  captured = capsys.readouterr()
  got = [float(line.split("\t")[0]) for line in captured.out.splitlines()[1:]]
  want = _reference(base / "2", [e for exs in shards for e in exs])["click_prob"]
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert "scored 12 records from 3 file(s)" in captured.err
  with pytest.raises(DataError, match="no file matches"):
    client_lib.main(["--saved_model", str(base), "--input", str(tmp_path / "nothing-*")])


def test_score_cli_local_errors_name_the_path_or_record(base, tmp_path):
  good = tmp_path / "ok.jsonl"
  good.write_text('{"user_id": 1}\n')
  with pytest.raises(UserError, match="directory not found"):
    client_lib.main(["--saved_model", str(tmp_path / "nope"), "--input", str(good)])
  empty = tmp_path / "empty_export"
  empty.mkdir()
  with pytest.raises(UserError, match="no saved_model.pb"):
    client_lib.main(["--saved_model", str(empty), "--input", str(good)])
  broken = tmp_path / "broken" / "3"
  broken.mkdir(parents=True)
  (broken / "saved_model.pb").write_bytes(b"not a protobuf")
  previous = tmp_path / "scores.tsv"
  previous.write_text("yesterday's scores\n")
  with pytest.raises(UserError, match="cannot load it as a SavedModel"):
    client_lib.main(["--saved_model", str(broken.parent), "--input", str(good),
                     "--output", str(previous)])
  assert previous.read_text() == "yesterday's scores\n"     # not truncated by a failed run
  with pytest.raises(DataError, match="not found"):
    client_lib.main(["--saved_model", str(base), "--input", str(tmp_path / "none.csv")])
  # an unparsable record: the batch's record range and the input are named, nothing printed
  bad = tmp_path / "bad.tfrecord"
  with tf.io.TFRecordWriter(str(bad)) as w:
    for e in toy_examples(5, seed=0) + [b"\x01garbage"]:
      w.write(e)
  with pytest.raises(DataError, match=r"bad.tfrecord records 5-6: INVALID_ARGUMENT: .*examples"):
    client_lib.main(["--saved_model", str(base), "--input", str(bad), "--batch_size", "4"])
  with pytest.raises(SystemExit):             # --server and --saved_model exclude each other
    client_lib.main(["--saved_model", str(base), "--server", "x:1", "--input", str(good)])

