"""`ssr_tf data convert --format interactions`: histories on a hand-written log (exact
lists, strictly earlier, equal-time ties, positives_only, side features), unsorted input,
bad input, relative paths, and a slice of MovieLens ml-latest-small."""
import collections
import json
import pathlib
import random
import re

import pytest
import yaml

import ssr_tf  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from ssr_tf import cli
from ssr_tf.pipelines import convert, interactions_events

REPO = pathlib.Path(__file__).resolve().parents[1]
ML = REPO.parent / "shared" / "data" / "public" / "ml-latest-small"
ML_MAPPING = REPO / "pipelines" / "mappings" / "ml_latest_small.yaml"

# user, item, time, click: user 1 has two events at t=200 and user 2 two at t=250.
EVENTS = """user,item,ts,click
1,10,100,1
1,11,200,0
1,12,200,1
1,13,300,1
2,10,150,1
2,14,250,1
1,15,400,1
2,16,250,0
2,17,500,1
1,18,500,0
"""
# item 16 is not in the table; 13 has no genres; 14 has four (K = 3 keeps three).
ITEMS = """item,title,genres
10,Ten (1990),a|b|c
11,Eleven (1991),a
12,Twelve,b|c
13,Thirteen (1993),
14,"Fourteen, The (1994)",a|b|c|d
15,Fifteen (1995),d
17,Seventeen (1997),e
18,Eighteen (1998),f
"""


def mapping(positives_only=True, **history) -> dict:
  return {
      "events": {"user": "user", "item": "item", "time": "ts", "label": {"column": "click"},
                 "time_features": ["hour", "weekday"]},
      "items": {"path": "items.csv", "key": "item", "features": [
          {"column": "genres", "type": "multi_categorical", "sep": "|", "max_len": 3},
          {"column": "title", "name": "year", "type": "categorical", "dtype": "int64",
           "extract": r"\((\d{4})\)\s*$"}]},
      "history": {"length": 3, "positives_only": positives_only,
                  "side_features": ["genres", "year"], **history},
  }


def write_case(tmp_path, events=EVENTS, m=None) -> tuple[pathlib.Path, pathlib.Path]:
  (tmp_path / "items.csv").write_text(ITEMS)
  (tmp_path / "events.csv").write_text(events)
  mp = tmp_path / "map.yaml"
  mp.write_text(yaml.safe_dump(m if m is not None else mapping()))
  return mp, tmp_path / "events.csv"


def run(*argv) -> dict:
  return convert.convert([str(a) for a in argv] + ["--quiet"])


def records(path: pathlib.Path) -> list:
  import tensorflow as tf
  return [tf.train.Example.FromString(r.numpy()) for r in
          tf.data.TFRecordDataset(sorted(str(p) for p in path.glob("part-*")),
                                  compression_type="GZIP")]


def value(example, key):
  f = example.features.feature[key]
  kind = f.WhichOneof("kind")
  if kind is None:
    return []
  vals = list(getattr(f, kind).value)
  return [v.decode() for v in vals] if kind == "bytes_list" else vals


def by_event(out: pathlib.Path, splits=("train", "valid", "test")) -> dict:
  got = {}
  for s in splits:
    for ex in records(out / s):
      got[(value(ex, "user")[0], value(ex, "item")[0])] = ex
  return got


def convert_case(tmp_path, m=None, events=EVENTS, *flags) -> pathlib.Path:
  mp, ev = write_case(tmp_path, events, m)
  out = tmp_path / "out"
  run("--format", "interactions", "--mapping", mp, "--input", ev, "--output", out,
      "--ratios", "1,0,0", "--min_count", "0", *flags)
  return out


# ---------------------------------------------------------------------------------------
# Histories on the hand-written log.

G = {10: ["a", "b", "c"], 11: ["a", "", ""], 12: ["b", "c", ""], 13: ["", "", ""],
     14: ["a", "b", "c"], 15: ["d", "", ""], 16: ["", "", ""], 17: ["e", "", ""]}
Y = {10: 1990, 11: 1991, 12: -1, 13: 1993, 14: 1994, 15: 1995, 16: -1, 17: 1997}


def check_histories(got: dict, want: dict) -> None:
  assert set(got) == set(want)
  for key, hist in want.items():
    ex = got[key]
    assert value(ex, "hist_item") == hist, key
    assert value(ex, "hist_genres") == [g for x in hist for g in G[x]], key
    assert value(ex, "hist_year") == [Y[x] for x in hist], key


def test_history_positives_only_strictly_earlier_and_ties(tmp_path):
  out = convert_case(tmp_path)
  # Most recent first; equal times never see each other (1,11 and 1,12 at t=200; 2,14 and
  # 2,16 at t=250); negatives (1,11), (2,16), (1,18) never enter; at most 3 items.
  check_histories(by_event(out), {
      (1, 10): [], (2, 10): [], (1, 11): [10], (1, 12): [10], (2, 14): [10],
      (2, 16): [10], (1, 13): [12, 10], (1, 15): [13, 12, 10], (1, 18): [15, 13, 12],
      (2, 17): [14, 10]})
  ex = by_event(out)[(1, 15)]
  assert value(ex, "hist_genres") == ["", "", "", "b", "c", "", "a", "b", "c"]
  assert value(ex, "genres") == ["d"] and value(ex, "year") == [1995]
  assert value(ex, "click") == [1.0]
  assert value(ex, "hour") == [0] and value(ex, "weekday") == [3]   # 1970-01-01 UTC
  stats = json.loads((out / "stats.json").read_text())
  inter = stats["interactions"]
  assert inter["missing_keys"]["items"]["events"] == 1             # item 16
  assert inter["missing_keys"]["items"]["distinct"] == 1
  assert inter["history"]["len_counts"]["train"] == {"0": 2, "1": 4, "2": 2, "3": 2}
  assert inter["distinct_users"] == 2 and inter["distinct_items"] == 9
  assert stats["rows"] == {"train": 10, "valid": 0, "test": 0}
  spec = yaml.safe_load((out / "spec.yaml").read_text())
  feats = {f["name"]: f for f in spec["features"]}
  assert feats["hist_item"] == {"name": "hist_item", "type": "sequence", "dtype": "int64",
                                "share_with": "item", "max_len": 3, "pooling": "attention"}
  assert feats["hist_genres"] == {"name": "hist_genres", "type": "sequence",
                                  "dtype": "string", "share_with": "genres", "max_len": 3,
                                  "side_of": "hist_item"}
  assert feats["hist_year"]["share_with"] == "year"
  assert feats["genres"]["max_len"] == 3                           # = the records' K
  assert feats["hour"]["num_buckets"] == 24 and feats["weekday"]["num_buckets"] == 7
  assert spec["group_id"] == "user" and spec["labels"] == {"click": "click"}
  assert sorted(p.name for p in (out / "vocab").iterdir()) == [
      "genres.txt", "item.txt", "user.txt", "year.txt"]
  config = yaml.safe_load((out / "config.yaml").read_text())
  assert config["model"]["name"] == "dnn"


def test_history_all_events(tmp_path):
  out = convert_case(tmp_path, mapping(positives_only=False))
  check_histories(by_event(out), {
      (1, 10): [], (2, 10): [], (1, 11): [10], (1, 12): [10], (2, 14): [10],
      (2, 16): [10], (1, 13): [12, 11, 10], (1, 15): [13, 12, 11], (1, 18): [15, 13, 12],
      (2, 17): [16, 14, 10]})


def test_unsorted_input_gives_the_sorted_output(tmp_path):
  lines = EVENTS.splitlines()
  rows = lines[1:]
  ordered = sorted(rows, key=lambda r: (int(r.split(",")[2]), r))
  shuffled = rows[:]
  random.Random(3).shuffle(shuffled)
  outs = []
  for name, body, flags in (("sorted", ordered, []),
                            ("shuffled", shuffled, ["--sort_rows", "3"])):
    d = tmp_path / name
    d.mkdir()
    mp, ev = write_case(d, "\n".join([lines[0]] + body) + "\n")
    run("--format", "interactions", "--mapping", mp, "--input", ev, "--output", d / "out",
        "--split", "time", "--ratios", "6,2,2", "--min_count", "0", *flags)
    outs.append(d / "out")
  a, b = outs
  sa = json.loads((a / "stats.json").read_text())
  sb = json.loads((b / "stats.json").read_text())
  assert sa["interactions"]["input_in_time_order"] is True
  assert sb["interactions"]["input_in_time_order"] is False
  assert sa["rows"] == sb["rows"] == {"train": 6, "valid": 2, "test": 2}
  for rel in ["spec.yaml", "vocab/item.txt", "vocab/user.txt", "vocab/genres.txt"]:
    assert (a / rel).read_text() == (b / rel).read_text()
  for s in ("train", "valid", "test"):
    assert ([r.SerializeToString() for r in records(a / s)]
            == [r.SerializeToString() for r in records(b / s)])
  assert not (b / "_sort").exists() and not (b / ".convert-tmp").exists()


def test_external_sort_merges_spilled_chunks(tmp_path):
  rng = random.Random(0)
  events = [(rng.randrange(50), rng.randrange(5), rng.randrange(9), 1.0)
            for _ in range(200)]
  got = list(interactions_events.sort_events(iter(events), 7, str(tmp_path / "spill")))
  assert got == sorted(events)
  assert len(list((tmp_path / "spill").iterdir())) == 29      # ceil(200 / 7) chunks


def test_random_split_and_history_across_splits(tmp_path):
  mp, ev = write_case(tmp_path)
  out = tmp_path / "out"
  run("--format", "interactions", "--mapping", mp, "--input", ev, "--output", out,
      "--split", "random", "--ratios", "5,0,5", "--seed", "1", "--min_count", "0")
  got = by_event(out)
  assert len(got) == 10
  assert value(got[(1, 15)], "hist_item") == [13, 12, 10]   # whatever the splits


# ---------------------------------------------------------------------------------------
# Bad input: exit 2, one line naming the key or file:line, no output left.


def _bad_cases():
  def m_edit(fn):
    m = mapping()
    fn(m)
    return m

  yield ("misspelt key", m_edit(lambda m: m["events"].update(labl=m["events"].pop("label"))),
         EVENTS, [], r"mapping key 'events\.labl' \(did you mean 'events\.label'\?\)")
  yield ("missing key", m_edit(lambda m: m["events"].update(label={"min": 1})), EVENTS, [],
         r"mapping events\.label\.column: missing")
  yield ("missing history key", m_edit(lambda m: m["history"].update(
      side_features=["genre"])), EVENTS, [],
         r"mapping history\.side_features\[0\]: 'genre' .*did you mean 'genres'")
  yield ("no such column", m_edit(lambda m: m["events"].update(time="tss")), EVENTS, [],
         r"events\.csv: no column 'tss' \(mapping events\.time\); did you mean 'ts'")
  yield ("history length", m_edit(lambda m: m["history"].update(length=0)), EVENTS, [],
         r"mapping history\.length: must be >= 1, got 0")
  yield ("side table missing", m_edit(lambda m: m["items"].update(path="nope.csv")),
         EVENTS, [], r"mapping items\.path: file not found: .*nope\.csv")
  yield ("strict keys", mapping(), EVENTS, ["--strict_keys"],
         r"events\.csv:9: item 16 is not in .*items\.csv \(--strict_keys\)")
  yield ("bad time", mapping(), EVENTS.replace("1,13,300,1", "1,13,noon,1"), [],
         r"events\.csv:5: column 'ts': 'noon' is not unix seconds or ISO-8601 time")
  yield ("malformed row", mapping(), EVENTS.replace("2,14,250,1", "2,14"), [],
         r"events\.csv:7: expected 4 fields, found 2")
  yield ("bad label", mapping(), EVENTS.replace("2,17,500,1", "2,17,500,4"), [],
         r"events\.csv:10: column 'click': label '4' is not 0 or 1")
  yield ("bad regex", m_edit(lambda m: m["items"]["features"][1].update(extract="(a")),
         EVENTS, [], r"mapping items\.features\[1\]\.extract: not a regular expression")


@pytest.mark.parametrize("case", list(_bad_cases()), ids=lambda c: c[0])
def test_bad_input_one_line_exit_2(tmp_path, capsys, case):
  _, m, events, flags, pattern = case
  mp, ev = write_case(tmp_path, events, m)
  out = tmp_path / "new" / "out"
  rc = cli.main(["data", "convert", "--format", "interactions", "--mapping", str(mp),
                 "--input", str(ev), "--output", str(out), "--quiet", *flags])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2
  assert len(err) == 1, err
  assert re.search(pattern, err[0]), err[0]
  assert not (tmp_path / "new").exists()


def test_failed_run_leaves_earlier_output_intact(tmp_path, capsys):
  out = convert_case(tmp_path)
  before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
  (tmp_path / "events.csv").write_text(EVENTS.replace("1,13,300,1", "1,13,noon,1"))
  rc = cli.main(["data", "convert", "--format", "interactions", "--mapping",
                 str(tmp_path / "map.yaml"), "--input", str(tmp_path / "events.csv"),
                 "--output", str(out), "--overwrite", "--quiet"])
  assert rc == 2 and "events.csv:5" in capsys.readouterr().err
  assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_skip_bad_rows_reports_file_line(tmp_path):
  out = convert_case(tmp_path, None, EVENTS.replace("1,13,300,1", "1,13,noon,1"),
                     "--skip_bad_rows", "1")
  stats = json.loads((out / "stats.json").read_text())
  assert stats["skipped_rows"] == 1 and stats["rows"]["train"] == 9
  assert stats["bad_rows"][0].endswith("events.csv:5: column 'ts': 'noon' is not unix "
                                       "seconds or ISO-8601 time")


def test_relative_paths_resolve_against_the_mapping(tmp_path, monkeypatch):
  (tmp_path / "tables").mkdir()
  (tmp_path / "maps").mkdir()
  (tmp_path / "tables" / "items.csv").write_text(ITEMS)
  (tmp_path / "events.csv").write_text(EVENTS.replace("100", "1970-01-01T00:01:40"))
  m = mapping()
  m["items"]["path"] = "../tables/items.csv"
  (tmp_path / "maps" / "m.yaml").write_text(yaml.safe_dump(m))
  elsewhere = tmp_path / "cwd"
  elsewhere.mkdir()
  monkeypatch.chdir(elsewhere)
  run("--format", "interactions", "--mapping", "../maps/m.yaml", "--input",
      "../events.csv", "--output", "out", "--ratios", "1,0,0", "--min_count", "0")
  got = by_event(elsewhere / "out")
  assert value(got[(1, 15)], "hist_item") == [13, 12, 10]   # ISO time 100 s, same order
  assert value(got[(1, 15)], "year") == [1995]


# ---------------------------------------------------------------------------------------
# MovieLens ml-latest-small (the shipped mapping), first 3000 lines of ratings.csv.


def reference_histories(rows: list[tuple], length: int) -> dict:
  """Naive history per event: the user's positive events with a smaller time, latest
  first (equal earlier times: larger (item, label) first, the converter's order)."""
  by_user = collections.defaultdict(list)
  for r in rows:
    by_user[r[0]].append(r)
  out = {}
  for user, evs in by_user.items():
    for u, item, t, label in evs:
      earlier = sorted((e for e in evs if e[2] < t and e[3] == 1.0),
                       key=lambda e: (e[2], e[1], e[3]), reverse=True)
      out[(u, item, t)] = [e[1] for e in earlier[:length]]
  return out


@pytest.mark.skipif(not ML.is_dir(), reason=f"ml-latest-small not found: {ML}")
def test_ml_latest_small_slice(tmp_path):
  head = (ML / "ratings.csv").read_text().splitlines()[:3000]
  (tmp_path / "ratings.csv").write_text("\n".join(head) + "\n")
  out = tmp_path / "ml"
  summary = run("--format", "interactions", "--mapping", ML_MAPPING, "--input",
                tmp_path / "ratings.csv", "--output", out, "--split", "time",
                "--min_count", "1", "--sort_rows", "1000")
  assert sum(summary["rows"].values()) == 2999
  rows = []
  for line in head[1:]:
    u, i, r, t = line.split(",")
    rows.append((int(u), int(i), int(t), 1.0 if float(r) >= 4 else 0.0))
  want = reference_histories(rows, 20)
  genres = {}
  for line in (ML / "movies.csv").read_text().splitlines()[1:]:
    mid, rest = line.split(",", 1)
    genres[int(mid)] = (rest.rsplit(",", 1)[1].split("|") + [""] * 6)[:6]
  label = {(u, i, t): y for u, i, t, y in rows}
  seen = 0
  for s in ("train", "valid", "test"):
    for ex in records(out / s):
      u, i = value(ex, "userId")[0], value(ex, "movieId")[0]
      matches = [k for k in want if k[0] == u and k[1] == i]
      assert len(matches) == 1
      key = matches[0]
      hist = value(ex, "hist_movieId")
      assert hist == want[key]
      assert value(ex, "hist_genres") == [g for m in hist for g in genres[m]]
      assert value(ex, "label") == [label[key]]
      seen += 1
  assert seen == 2999
  spec_text = (out / "spec.yaml").read_text()
  assert ("{name: hist_movieId, type: sequence, dtype: int64, share_with: movieId, "
          "max_len: 20, pooling: attention}") in yaml.safe_dump(
              yaml.safe_load(spec_text)["features"], default_flow_style=None, sort_keys=False,
              width=200).replace("- ", "")
  from ssr_tf import features
  if "sequence" in getattr(features, "FEATURE_TYPES", ()):
    spec = features.load_spec(str(out / "spec.yaml"))
    assert [f.name for f in spec.features][-2:] == ["hist_movieId", "hist_genres"]
  stats = json.loads((out / "stats.json").read_text())
  assert stats["split"]["kind"] == "time"
  assert stats["interactions"]["input_in_time_order"] is False
  assert stats["features"]["release_year"]["missing_rate"]["train"] < 0.01


def test_time_histogram_is_bounded(tmp_path, monkeypatch):
  # With room for 4 time values the counts fold into cells of 256 s (0: t < 256, 256:
  # t >= 256); the thresholds are cell starts, so equal times still share a split.
  monkeypatch.setattr(interactions_events, "TIME_CELLS", 4)
  out = convert_case(tmp_path, None, EVENTS, "--split", "time", "--ratios", "6,2,2")
  stats = json.loads((out / "stats.json").read_text())
  assert stats["interactions"]["time_cell_seconds"] == 256
  assert stats["split"]["valid_from"] == 256 and stats["split"]["test_from"] is None
  assert stats["rows"] == {"train": 6, "valid": 4, "test": 0}


def test_user_side_table(tmp_path):
  (tmp_path / "users.csv").write_text("user\tage\tcity\n1\t30\tParis\n3\t40\tRome\n")
  m = mapping()
  m["users"] = {"path": "users.csv", "key": "user", "delimiter": "\t", "features": [
      {"column": "age", "type": "numeric"}, {"column": "city"}]}
  out = convert_case(tmp_path, m)
  got = by_event(out)
  assert value(got[(1, 10)], "city") == ["Paris"] and value(got[(1, 10)], "age") == [30.0]
  assert value(got[(2, 10)], "city") == [""]                # user 2 is not in the table
  stats = json.loads((out / "stats.json").read_text())
  assert stats["interactions"]["missing_keys"]["users"]["events"] == 4
  spec = yaml.safe_load((out / "spec.yaml").read_text())
  kinds = {f["name"]: f["type"] for f in spec["features"]}
  assert kinds["age"] == "numeric" and kinds["city"] == "categorical"
