"""`ssr_tf data convert`: golden checks of the preprocessing rules on hand-made rows, bad
input errors, and conversions of the real public samples in ../shared/data/public."""
import json
import math
import pathlib

import pytest

import ssr_tf  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from ssr_tf.errors import ConfigError, DataError
from ssr_tf.features import load_spec
from ssr_tf.pipelines import convert, schema, transforms

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "public"
MTL_MAPPING = REPO / "pipelines" / "mappings" / "mtl.yaml"

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"public samples not found: {DATA}")


def run(*argv) -> dict:
  return convert.convert([str(a) for a in argv] + ["--quiet"])


def records(path: pathlib.Path, compression: str = "GZIP") -> list:
  import tensorflow as tf
  return [tf.train.Example.FromString(r.numpy()) for r in
          tf.data.TFRecordDataset(sorted(str(p) for p in path.glob("part-*")),
                                  compression_type=compression)]


def value(example, key):
  f = example.features.feature[key]
  kind = f.WhichOneof("kind")
  vals = list(getattr(f, kind).value)
  return [v.decode() for v in vals] if kind == "bytes_list" else vals


# ---------------------------------------------------------------------------------------
# Golden checks of the rules.


def test_log_boundaries_one_bucket_per_distinct_value():
  # t = sign(v) log1p|v|: -1 -> -0.6931, 0 -> 0, 1 -> 0.6931, 2 -> 1.0986, 3 -> 1.3863;
  # with few distinct values each gets a bucket, boundaries half-way between them.
  hist = {}
  for v in [0, 0, 0, 1, 1, 2, 3, -1]:
    q = transforms.grid_cell(v)
    hist[q] = hist.get(q, 0) + 1
  b = transforms.boundaries_from_hist(hist, num_buckets=64)
  assert b == [-0.34655, 0.34655, 0.89585, 1.24245]
  assert [transforms.bucket_of(v, b) for v in (-1, 0, 1, 2, 3, float("nan"))] == \
      [1, 2, 3, 4, 5, 0]


def test_log_boundaries_are_quantiles():
  hist = {}
  for v in range(100):
    hist[transforms.grid_cell(v)] = 1
  b = transforms.boundaries_from_hist(hist, num_buckets=4)
  assert len(b) == 3 and b == sorted(b)
  sizes = [sum(transforms.bucket_of(v, b) == k for v in range(100)) for k in (1, 2, 3, 4)]
  assert sizes == [25, 25, 25, 25]
  # Boundary between 24 and 25 on the log scale.
  assert math.log1p(24) < b[0] < math.log1p(25)
  # Heavy ties collapse: 90 zeros and 10 ones give one boundary.
  assert transforms.boundaries_from_hist({0: 90, transforms.grid_cell(1): 10}, 4) == [0.34655]
  assert transforms.boundaries_from_hist({}, 4) == [0.0]


def test_split_is_a_function_of_seed_and_row():
  rule = transforms.SplitRule("random", (8, 1, 1), seed=7)
  a = [rule.random_split(i) for i in range(20000)]
  assert a == [transforms.SplitRule("random", (8, 1, 1), 7).random_split(i)
               for i in range(20000)]
  shares = [a.count(s) / len(a) for s in range(3)]
  assert abs(shares[0] - 0.8) < 0.01 and abs(shares[1] - 0.1) < 0.01
  assert a != [transforms.SplitRule("random", (8, 1, 1), 8).random_split(i)
               for i in range(20000)]
  assert {transforms.SplitRule("random", (1, 0, 0), 7).random_split(i)
          for i in range(1000)} == {0}


def test_time_thresholds_closest_cut():
  # 28 rows at t=1, 33 at t=2, 39 at t=3: 80% train is closest with t<3 (61 rows); the
  # 90% cut is closest to "all rows", so test is empty (None = never).
  assert transforms.time_thresholds({1.0: 28, 2.0: 33, 3.0: 39}, (8, 1, 1)) == (3.0, None)
  assert transforms.time_thresholds({1.0: 80, 2.0: 10, 3.0: 10}, (8, 1, 1)) == (2.0, 3.0)


def test_example_encoding_matches_protobuf():
  import tensorflow as tf
  fields = [schema.OutField("n", "numeric", "float32", "n"),
            schema.OutField("i", "categorical", "int64", "i"),
            schema.OutField("s", "categorical", "string", "s"),
            schema.OutField("m", "multi_categorical", "int64", "m", max_len=5),
            schema.OutField("ms", "multi_categorical", "string", "ms", max_len=5),
            schema.OutField("y", "label", "float32", "y")]
  enc = transforms.ExampleEncoder(fields)
  for row in [(1.5, 7, "ab", [1, 300, -2], ["x", "é"], 1.0),
              (float("nan"), -1, "", [], [], 0.0),
              (1e40, 2 ** 62, "z" * 300, [16384], ["q"], 0.0)]:
    got = tf.train.Example.FromString(enc.encode(row))
    want = tf.train.Example()
    fm = want.features.feature
    fm["n"].float_list.value.append(row[0])
    fm["i"].int64_list.value.append(row[1])
    fm["s"].bytes_list.value.append(row[2].encode())
    fm["m"].int64_list.value.extend(row[3])
    fm["ms"].bytes_list.value.extend(v.encode() for v in row[4])
    fm["y"].float_list.value.append(row[5])
    if math.isnan(row[0]):
      assert math.isnan(got.features.feature["n"].float_list.value[0])
      got.features.feature["n"].float_list.value[0] = 0.0
      fm["n"].float_list.value[0] = 0.0
    assert got == want


def test_row_parser_values_and_errors():
  m = schema.load_mapping("taobao")
  header = (DATA / "taobao_train_sample.csv").read_text().splitlines()[0] if DATA.is_dir() \
      else ",".join(["clk", "time_stamp", "userid", "adgroup_id", "pid", "cate_id",
                     "campaign_id", "customer", "brand", "price", "cms_segid",
                     "cms_group_id", "final_gender_code", "age_level", "pvalue_level",
                     "shopping_level", "occupation", "new_user_class_level",
                     "click_sequence"])
  delim, has_header, names = schema.detect_layout(m, header, "x")
  assert has_header and delim == ","
  p = schema.RowParser(schema.resolve(m, names, 3, "x"), names, delim, False)
  v = dict(zip([f.name for f in p.schema.fields], p.parse(
      "1,2017-05-09 13:00:00,5,6,430548_1007,7,8,9,10,3.9,0,3,2,3,,3,0,,1^2^3^4")))
  # 2017-05-09 was a Tuesday (weekday 1); first max_len=3 sequence values kept.
  assert (v["hour_of_day"], v["weekday"]) == (13, 1)
  assert v["pvalue_level"] == -1 and v["pid"] == "430548_1007" and v["price"] == 3.9
  assert v["click_sequence"] == [1, 2, 3] and v["clk"] == 1.0
  with pytest.raises(schema.RowError, match="column 'price': 'cheap' is not a number"):
    p.parse("1,2017-05-09 13:00:00,5,6,p,7,8,9,10,cheap,0,3,2,3,,3,0,,")
  with pytest.raises(schema.RowError, match="expected 19 fields, found 3"):
    p.parse("1,2,3")
  with pytest.raises(schema.RowError, match="column 'clk': missing label"):
    p.parse(",2017-05-09 13:00:00,5,6,p,7,8,9,10,1,0,3,2,3,,3,0,,")
  with pytest.raises(schema.RowError, match="column 'userid': '5.5' is not an integer"):
    p.parse("0,2017-05-09 13:00:00,5.5,6,p,7,8,9,10,1,0,3,2,3,,3,0,,")


def _write(path: pathlib.Path, lines) -> pathlib.Path:
  path.write_text("".join(l + "\n" for l in lines))
  return path


def _tiny_mapping(tmp_path: pathlib.Path) -> pathlib.Path:
  return _write(tmp_path / "map.yaml", [
      "features:", "  - {column: city, type: categorical, dtype: string}",
      "  - {column: price, type: numeric}", "labels: {click: y}"])


def test_oov_rule_golden(tmp_path):
  # Train: a x6, b x5 (== min_count: OOV), c x1; test: a, b, d (unseen), "" (missing).
  train = _write(tmp_path / "train.csv", ["y,city,price"] + ["1,a,1"] * 6 + ["0,b,2"] * 5
                 + ["0,c,"])
  test = _write(tmp_path / "test.csv", ["y,city,price", "1,a,1", "0,b,1", "0,d,1", "0,,1"])
  out = tmp_path / "out"
  run("--format", "csv", "--mapping", _tiny_mapping(tmp_path), "--train_input", train,
      "--valid_input", test, "--test_input", test, "--output", out)
  assert (out / "vocab" / "city.txt").read_text() == "a\t6\nb\t5\nc\t1\n"
  spec = load_spec(str(out / "spec.yaml"))
  city = spec.features[0]
  assert (city.min_count, city.vocabulary(), city.table_size()) == (5, ["a"], 2)
  stats = json.loads((out / "stats.json").read_text())
  c = stats["features"]["city"]
  assert c["vocab_size"] == 1 and c["distinct_train"] == 3
  assert c["oov_rate"] == {"train": round(6 / 12, 6), "valid": 0.75, "test": 0.75}
  assert c["missing_rate"]["test"] == 0.25
  assert stats["features"]["price"]["missing_rate"]["train"] == round(1 / 12, 6)
  assert stats["rows"] == {"train": 12, "valid": 4, "test": 4}
  assert stats["positives"]["train"] == {"click": 6}
  # Records keep raw values; missing numeric is NaN, missing string is "".
  recs = records(out / "test")
  assert [value(r, "city") for r in recs] == [["a"], ["b"], ["d"], [""]]
  assert math.isnan(value(records(out / "train")[-1], "price")[0])
  # price 1 (x6) and 2 (x5): one boundary half-way between log1p(1) and log1p(2).
  assert spec.features[1].boundaries == [0.89585]


def test_bad_rows_budget_and_errors(tmp_path):
  mapping = _tiny_mapping(tmp_path)
  bad = _write(tmp_path / "bad.csv", ["y,city,price", "1,a,1", "0,b,x", "1,c", "0,d,4"])
  base = ["--format", "csv", "--mapping", mapping, "--input", bad, "--ratios", "1,0,0"]
  with pytest.raises(DataError, match=r"bad.csv:3: column 'price': 'x' is not a number "
                     r"\(pass --skip_bad_rows N"):
    run(*base, "--output", tmp_path / "o1")
  assert not (tmp_path / "o1" / "train").exists()     # nothing half-written
  with pytest.raises(DataError, match=r"bad.csv:4: expected 3 fields, found 2 \(more than "
                     r"--skip_bad_rows 1"):
    run(*base, "--output", tmp_path / "o2", "--skip_bad_rows", "1")
  run(*base, "--output", tmp_path / "o3", "--skip_bad_rows", "2")
  stats = json.loads((tmp_path / "o3" / "stats.json").read_text())
  assert stats["skipped_rows"] == 2 and stats["rows"]["train"] == 2
  assert stats["bad_rows"][0].endswith("bad.csv:3: column 'price': 'x' is not a number")
  empty = _write(tmp_path / "empty.csv", [])
  with pytest.raises(DataError, match="empty.csv: empty file"):
    run("--format", "csv", "--mapping", mapping, "--input", empty, "--output", tmp_path / "o4")
  nolabel = _write(tmp_path / "nolabel.csv", ["city,price", "a,1"])
  with pytest.raises(DataError, match=r"nolabel.csv: no column 'y' \(labels.click\)"):
    run("--format", "csv", "--mapping", mapping, "--input", nolabel, "--output",
        tmp_path / "o5")
  with pytest.raises(ConfigError, match="unknown format 'parquet'"):
    run("--format", "parquet", "--input", bad, "--output", tmp_path / "o6")
  with pytest.raises(DataError, match="already holds"):
    run(*base, "--output", tmp_path / "o3", "--skip_bad_rows", "2")


def test_cli_one_line_error(tmp_path, capsys):
  from ssr_tf import cli
  rc = cli.main(["data", "convert", "--format", "avazu", "--input",
                 str(tmp_path / "missing.csv"), "--output", str(tmp_path / "o")])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and err == [f"ssr_tf: error: {tmp_path / 'missing.csv'}: input file not found"]


# ---------------------------------------------------------------------------------------
# Real public samples.


def _check_output(out: pathlib.Path, input_rows: int) -> dict:
  """Spec loads, every record has every spec key and parses with ssr_tf.data."""
  import tensorflow as tf
  from ssr_tf import data as data_lib
  from ssr_tf.config import load_config
  spec = load_spec(str(out / "spec.yaml"))
  stats = json.loads((out / "stats.json").read_text())
  assert stats["rows_total"] + stats["skipped_rows"] == input_rows
  cfg = load_config(str(out / "config.yaml"))
  assert cfg.data.spec == str(out.resolve() / "spec.yaml") and cfg.model.name == "ssr"
  keys = set(spec.feature_names) | set(spec.labels.values()) | \
      ({spec.group_id} if spec.group_id else set())
  for split in ("train", "valid", "test"):
    recs = records(out / split)
    assert len(recs) == stats["rows"][split]
    for r in recs:
      assert keys <= set(r.features.feature)
    if recs:
      ds = data_lib.make_dataset(str(out / split / "part-*"), spec, 64, training=False,
                                 compression="GZIP", with_extras=bool(spec.group_id))
      batch = next(iter(ds))
      assert set(batch[0]) == set(spec.feature_names)
      assert batch[1]["click"].dtype == tf.float32
  return stats


@needs_data
def test_criteo_csv_and_tsv_variants_agree(tmp_path):
  csv_path = DATA / "criteo_sample.txt"
  lines = csv_path.read_text().splitlines()
  tsv = _write(tmp_path / "train.txt", [l.replace(",", "\t") for l in lines[1:]])
  run("--format", "criteo", "--input", csv_path, "--output", tmp_path / "a")
  run("--format", "criteo", "--input", tsv, "--output", tmp_path / "b")
  stats = _check_output(tmp_path / "a", 200)
  assert stats["rows"] == {"train": 162, "valid": 18, "test": 20}
  assert stats["features"]["I1"]["type"] == "numeric"
  assert stats["features"]["C1"]["dtype"] == "string"
  for name in ("train/part-00000.tfrecord.gz", "spec.yaml", "vocab/C3.txt"):
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
  # Input row 0 is the first record of its split: 0,,3,260.0,... : I1 missing -> NaN,
  # I2 = 3, C1 = 05db9164, label a float.
  split = transforms.SPLITS[transforms.SplitRule("random", (8, 1, 1), 42).random_split(0)]
  first = records(tmp_path / "a" / split)[0]
  assert math.isnan(value(first, "I1")[0]) and value(first, "I2") == [3.0]
  assert value(first, "C1") == ["05db9164"] and value(first, "label") == [0.0]


@needs_data
def test_avazu_hour_expanded(tmp_path):
  run("--format", "avazu", "--input", DATA / "avazu_sample.txt", "--output", tmp_path / "o")
  stats = _check_output(tmp_path / "o", 100)
  spec = load_spec(str(tmp_path / "o" / "spec.yaml"))
  assert spec.feature_names[:2] == ["hour_of_day", "weekday"] and len(spec.features) == 23
  r = records(tmp_path / "o" / "train")[0]
  # 14102100 = 2014-10-21 (a Tuesday) 00h.
  assert value(r, "hour_of_day") == [0] and value(r, "weekday") == [1]
  assert value(r, "C20") in ([-1], [100084]) and stats["features"]["C1"]["dtype"] == "int64"


@needs_data
def test_taobao_presplit_with_sequence(tmp_path):
  out = tmp_path / "o"
  run("--format", "taobao", "--train_input", DATA / "taobao_train_sample.csv",
      "--valid_input", DATA / "taobao_valid_sample.csv", "--test_input",
      DATA / "taobao_test_sample.csv", "--output", out, "--shard_size", "40")
  stats = _check_output(out, 300)
  assert stats["rows"] == {"train": 100, "valid": 100, "test": 100}
  assert stats["shards"]["train"] == 3 and len(list((out / "train").iterdir())) == 3
  spec = load_spec(str(out / "spec.yaml"))
  seq = [f for f in spec.features if f.name == "click_sequence"][0]
  assert seq.type == "multi_categorical" and seq.max_len == 6 and spec.group_id == "userid"
  r = records(out / "train")[2]
  assert value(r, "click_sequence") == [170301, 573514, 158525, 633154, 383937, 431258]
  assert value(r, "pvalue_level") == [-1] and value(r, "pid") == ["430539_1007"]


@needs_data
def test_mtl_group_id_and_two_labels(tmp_path):
  out = tmp_path / "o"
  run("--format", "csv", "--mapping", MTL_MAPPING, "--train_input", DATA / "mtl_train.csv",
      "--test_input", DATA / "mtl_test.csv", "--output", out, "--compression", "none")
  stats = _check_output_plain(out, 200)
  spec = load_spec(str(out / "spec.yaml"))
  assert spec.labels == {"click": "click", "pay": "conversion"}
  assert spec.group_id == "search_id" and "search_id" not in spec.feature_names
  assert len(spec.features) == 16 + 63
  assert stats["rows"]["test"] == 100 and stats["rows"]["train"] + stats["rows"]["valid"] == 100


def _check_output_plain(out: pathlib.Path, input_rows: int) -> dict:
  from ssr_tf.config import load_config
  cfg = load_config(str(out / "config.yaml"))
  assert cfg.data.compression == "" and cfg.data.train.endswith("part-*.tfrecord")
  stats = json.loads((out / "stats.json").read_text())
  assert stats["rows_total"] == input_rows
  recs = records(out / "test", compression="")
  assert value(recs[0], "search_id") == [int((DATA / "mtl_test.csv").read_text()
                                             .splitlines()[1].split(",")[0])]
  return stats


@needs_data
def test_time_split(tmp_path):
  out = tmp_path / "o"
  run("--format", "taobao", "--input", DATA / "taobao_train_sample.csv", "--split", "time",
      "--output", out)
  stats = json.loads((out / "stats.json").read_text())
  # 28 / 33 / 39 rows at seconds 0 / 1 / 2: train = before second 2.
  assert stats["split"]["valid_from"] == "2017-05-06 00:00:02"
  assert stats["rows"] == {"train": 61, "valid": 39, "test": 0}
  # Every Avazu sample row is from hour 14102100.
  avazu = ("--format", "avazu", "--input", DATA / "avazu_sample.txt", "--split", "time")
  with pytest.raises(DataError, match="the training split is empty"):
    run(*avazu, "--valid_from", "14102100", "--test_from", "14102200", "--output",
        tmp_path / "a")
  run(*avazu, "--valid_from", "14102101", "--test_from", "14102200", "--output", tmp_path / "b")
  stats = json.loads((tmp_path / "b" / "stats.json").read_text())
  assert stats["rows"] == {"train": 100, "valid": 0, "test": 0}


@needs_data
def test_spec_reuse_converts_new_logs_with_old_vocabularies(tmp_path):
  src = DATA / "criteo_sample.txt"
  run("--format", "criteo", "--input", src, "--output", tmp_path / "a")
  run("--format", "criteo", "--input", src, "--output", tmp_path / "b", "--ratios", "0,0,1",
      "--spec", tmp_path / "a" / "spec.yaml")
  a, b = (load_spec(str(tmp_path / d / "spec.yaml")) for d in ("a", "b"))
  assert [f.boundaries for f in a.features] == [f.boundaries for f in b.features]
  assert [f.vocabulary() for f in a.features if f.vocab_file] == \
      [f.vocabulary() for f in b.features if f.vocab_file]
  stats = json.loads((tmp_path / "b" / "stats.json").read_text())
  assert stats["rows"] == {"train": 0, "valid": 0, "test": 200}
  # All 200 rows against a's vocabulary: OOV rate of C1 = 1 - kept occurrences / 200.
  kept = set(a.features[13].vocabulary())
  c1 = [l.split(",")[14] for l in src.read_text().splitlines()[1:]]
  assert stats["features"]["C1"]["oov_rate"]["test"] == round(
      sum(v not in kept for v in c1) / 200, 6)
  with pytest.raises(ConfigError, match="--spec: feature 'hour_of_day' is not produced"):
    run("--format", "criteo", "--input", src, "--output", tmp_path / "c", "--spec",
        _avazu_spec(tmp_path))


def _avazu_spec(tmp_path: pathlib.Path) -> pathlib.Path:
  run("--format", "avazu", "--input", DATA / "avazu_sample.txt", "--output", tmp_path / "av")
  return tmp_path / "av" / "spec.yaml"


def test_criteo_example_config_loads():
  from ssr_tf.config import load_config
  cfg = load_config(str(REPO / "configs" / "criteo.yaml"))
  assert cfg.data.compression == "GZIP" and cfg.model.backbone["mode"] == "dynamic"


@needs_data
def test_chunks_cover_every_line_once(tmp_path):
  """The Beam runner's byte-range chunks (checked here without Beam) yield exactly the
  local reader's lines, line numbers and row indices; .gz input reads the same."""
  import gzip
  from ssr_tf.pipelines import beam_pipeline, sources
  text = (DATA / "criteo_sample.txt").read_text().replace("\n", "\r\n", 3) + "\n\n"
  src = tmp_path / "c.csv"
  src.write_text(text)
  gz = tmp_path / "c.csv.gz"
  gz.write_bytes(gzip.compress(text.encode()))
  m = schema.load_mapping("criteo")
  plan = sources.make_plan("criteo", m, [str(src), str(gz)], None, transforms.SplitRule(),
                           sources.Options())
  f = plan.files[0]
  whole = [(n, t) for n, t, _ in sources.read_chunk(plan, 0, f.data_offset, -1, f.first_line)]
  assert len(whole) == 200 and whole[0][0] == 2 and not whole[0][1].endswith("\r")
  chunk_list = sources.chunks(plan, 997)
  assert len(chunk_list) > 40 and chunk_list[-1][3] == -1     # the .gz file is one chunk
  lay = beam_pipeline.layout([beam_pipeline.count_chunk(c, plan) for c in chunk_list],
                             chunk_list, plan)
  pieces, rows = [], []
  for cid, fi, start, end in chunk_list:
    first_line, first_row = lay[cid]
    got = [(n, t) for n, t, _ in sources.read_chunk(plan, fi, start, end, first_line)]
    rows.append((first_row, len(got)))
    pieces += got
  assert pieces == whole + whole
  assert all(r0 + n == r1 for (r0, n), (r1, _) in zip(rows, rows[1:]))
  assert rows[-1][0] == 200


# ---------------------------------------------------------------------------------------
# Faults (also rows of tests/test_faults.py, through the CLI).


def _criteo_lines(n: int) -> list[str]:
  return ["\t".join([str(i % 2)] + [str((i * 7 + k) % 50) for k in range(13)]
                    + [f"{(i * 31 + k) % 11:08x}" for k in range(26)]) for i in range(n)]


def test_utf8_bom_is_not_part_of_the_first_column(tmp_path):
  """A BOM before a Criteo TSV (no header; plain and .gz) or a CSV header converts like
  the same file without it, also through the Beam runner's chunk counter."""
  import gzip
  from ssr_tf.pipelines import beam_pipeline, sources
  bom = b"\xef\xbb\xbf"
  text = "".join(l + "\n" for l in _criteo_lines(60)).encode()
  (tmp_path / "plain.txt").write_bytes(text)
  (tmp_path / "bom.txt").write_bytes(bom + text)
  (tmp_path / "bom.txt.gz").write_bytes(gzip.compress(bom + text))
  for name in ("plain.txt", "bom.txt", "bom.txt.gz"):
    run("--format", "criteo", "--input", tmp_path / name, "--output", tmp_path / f"o_{name}")
  for name in ("bom.txt", "bom.txt.gz"):
    for f in ("train/part-00000.tfrecord.gz", "spec.yaml", "vocab/C1.txt"):
      assert (tmp_path / f"o_{name}" / f).read_bytes() == \
          (tmp_path / "o_plain.txt" / f).read_bytes(), (name, f)
  m = schema.load_mapping("criteo")
  plan = sources.make_plan("criteo", m, [str(tmp_path / "bom.txt"), str(tmp_path / "bom.txt.gz")],
                           None, transforms.SplitRule(), sources.Options())
  assert plan.files[0].names[0] == "label" and plan.files[0].data_offset == 3
  for fi, f in enumerate(plan.files):
    lines = list(sources.read_chunk(plan, fi, f.data_offset, -1, f.first_line))
    assert lines[0][:2] == (1, _criteo_lines(1)[0]) and len(lines) == 60
    assert beam_pipeline.count_chunk((0, fi, f.data_offset, -1), plan) == (0, 60, 60)
  header = ["y,city,price", "1,a,1", "0,b,2", "1,c,3"]
  (tmp_path / "bom.csv").write_bytes(bom + "".join(l + "\n" for l in header).encode())
  stats = run("--format", "csv", "--mapping", _tiny_mapping(tmp_path), "--input",
              tmp_path / "bom.csv", "--ratios", "1,0,0", "--output", tmp_path / "o_csv")
  assert stats["rows"]["train"] == 3


def test_truncated_gz_names_the_file_and_the_last_line_read(tmp_path):
  import gzip
  import zlib
  data = gzip.compress("".join(l + "\n" for l in _criteo_lines(3000)).encode())
  cut = data[:len(data) // 2]
  (tmp_path / "t.txt.gz").write_bytes(cut)
  complete = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(cut).count(b"\n")
  assert 0 < complete < 3000
  with pytest.raises(DataError, match=rf"t\.txt\.gz: truncated or corrupt gzip data after line "
                     rf"{complete} \({complete:,} rows read from this file\): Compressed file "
                     "ended before the end-of-stream marker was reached"):
    run("--format", "criteo", "--input", tmp_path / "t.txt.gz", "--output",
        tmp_path / "new" / "out")
  assert not (tmp_path / "new").exists()          # the folders it created are gone
  (tmp_path / "tiny.txt.gz").write_bytes(data[:15])
  with pytest.raises(DataError, match=r"tiny\.txt\.gz: truncated or corrupt gzip data "
                     "before the first line"):
    run("--format", "criteo", "--input", tmp_path / "tiny.txt.gz", "--output", tmp_path / "o")


def test_failed_convert_keeps_what_existed_before(tmp_path):
  mapping = _tiny_mapping(tmp_path)
  good = _write(tmp_path / "good.csv", ["y,city,price", "1,a,1", "0,b,2"])
  bad = _write(tmp_path / "bad.csv", ["y,city,price", "1,a,1", "0,b,x"])
  base = ["--format", "csv", "--mapping", mapping, "--ratios", "1,0,0"]
  run(*base, "--input", good, "--output", tmp_path / "prior")
  before = {p: p.read_bytes() for p in (tmp_path / "prior").rglob("*") if p.is_file()}
  with pytest.raises(DataError, match="bad.csv:3"):
    run(*base, "--input", bad, "--output", tmp_path / "prior", "--overwrite")
  after = {p: p.read_bytes() for p in (tmp_path / "prior").rglob("*") if p.is_file()}
  assert after == before                          # --overwrite replaces only on success
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "notes.txt").write_text("kept\n")
  with pytest.raises(DataError, match="bad.csv:3"):
    run(*base, "--input", bad, "--output", tmp_path / "mine")
  assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
