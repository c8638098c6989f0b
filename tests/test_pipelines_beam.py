"""Beam DirectRunner == local runner, byte for byte, on the real samples (several input
chunks, several shards per split, a time split found by the pipeline, bad rows), also
with inputs and output on a non-local file system (TensorFlow's in-process ram://, read
and written through tf.io.gfile like gs://).

The Beam tests need apache-beam, in an environment of its own (requirements-beam.txt;
see docs/data.md), and are skipped without it; the file-handling tests on ram:// run
without it.
"""
import filecmp
import gzip
import importlib.util
import json
import pathlib
import uuid

import pytest

import ssr_tf  # noqa: F401
from ssr_tf.errors import DataError
from ssr_tf.pipelines import convert

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "public"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not DATA.is_dir(), reason=f"samples not found: {DATA}")]
needs_beam = pytest.mark.skipif(importlib.util.find_spec("apache_beam") is None,
                                reason="apache-beam not installed (pip install -r "
                                "requirements-beam.txt)")


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


@needs_beam
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


@needs_beam
def test_beam_equals_local_taobao_time_split(tmp_path):
  local, beam_out = _both(tmp_path, "--format", "taobao", "--input",
                          DATA / "taobao_train_sample.csv", DATA / "taobao_test_sample.csv",
                          "--split", "time", "--shard_size", "30", "--min_count", "1")
  assert _same_tree(local, beam_out) == []
  stats = json.loads((beam_out / "stats.json").read_text())
  assert stats["split"]["valid_from"] == "2017-05-06 00:00:02"
  assert stats["rows"] == {"train": 122, "valid": 78, "test": 0}


# ---------------------------------------------------------------------------------------
# A non-local file system: TensorFlow's ram:// (in-process; tf.io.gfile, as gs://).


def _gfile():
  import tensorflow as tf
  return tf.io.gfile


def _ram_inputs(tmp_path: pathlib.Path) -> tuple[str, list[str], list[str]]:
  """The Criteo sample cut in two on ram:// (a plain file and a .gz) and the same two
  files on the local disk: (ram root, ram paths, local paths)."""
  gfile = _gfile()
  root = f"ram://ssr-{uuid.uuid4().hex[:8]}"
  text = (DATA / "criteo_sample.txt").read_text().splitlines(keepends=True)
  parts = {"a.csv": "".join(text[:121]).encode(),
           "b.csv.gz": gzip.compress("".join([text[0]] + text[121:]).encode())}
  gfile.makedirs(f"{root}/in")
  urls, paths = [], []
  for name, data in parts.items():
    with gfile.GFile(f"{root}/in/{name}", "wb") as fh:
      fh.write(data)
    (tmp_path / name).write_bytes(data)
    urls.append(f"{root}/in/{name}")
    paths.append(str(tmp_path / name))
  return root, urls, paths


def _pull(url: str, dst: pathlib.Path) -> pathlib.Path:
  """Copies the tree at `url` to the local folder `dst`."""
  gfile = _gfile()
  for d, _, files in gfile.walk(url):
    rel = d[len(url):].lstrip("/")
    (dst / rel).mkdir(parents=True, exist_ok=True)
    for f in files:
      (dst / rel / f).write_bytes(gfile.GFile(f"{d}/{f}", "rb").read())
  return dst


def _ram_tree(url: str) -> list[str]:
  gfile = _gfile()
  return sorted(f"{d[len(url):]}/{f}" for d, _, files in gfile.walk(url) for f in files)


def test_sources_read_ram_inputs_as_local_ones(tmp_path):
  """Headers, sizes, chunk boundaries, lines and chunk line counts of ram:// inputs
  (plain and .gz, through tf.io.gfile) are those of the same files on the local disk;
  a missing or truncated ram:// input fails as a local one does."""
  from ssr_tf.pipelines import beam_pipeline, schema, sources, transforms
  _, urls, paths = _ram_inputs(tmp_path)
  m = schema.load_mapping("criteo")

  def plan(files):
    return sources.make_plan("criteo", m, files, None, transforms.SplitRule(),
                             sources.Options())
  pu, pl = plan(urls), plan(paths)
  assert [(f.names, f.data_offset, f.first_line, f.size) for f in pu.files] == \
      [(f.names, f.data_offset, f.first_line, f.size) for f in pl.files]
  cu, cl = sources.chunks(pu, 997), sources.chunks(pl, 997)
  assert cu == cl and len(cu) > 20
  counts = [beam_pipeline.count_chunk(c, pu) for c in cu]
  assert counts == [beam_pipeline.count_chunk(c, pl) for c in cl]
  lay = beam_pipeline.layout(counts, cu, pu)
  lines = []
  for cid, fi, start, end in cu:
    got = list(sources.read_chunk(pu, fi, start, end, lay[cid][0]))
    assert got == list(sources.read_chunk(pl, fi, start, end, lay[cid][0])), cid
    lines += got
  assert len(lines) == 200 and lines[-1][0] == 81    # the .gz file's last line
  root = urls[0].rsplit("/", 2)[0]
  with pytest.raises(DataError, match=r"ram://.*/nope\.csv: input file not found"):
    plan([f"{root}/nope.csv"])
  with _gfile().GFile(f"{root}/cut.csv.gz", "wb") as fh:
    fh.write(pathlib.Path(paths[1]).read_bytes()[:900])
  (tmp_path / "cut.csv.gz").write_bytes(pathlib.Path(paths[1]).read_bytes()[:900])
  msgs = []
  for path in (f"{root}/cut.csv.gz", str(tmp_path / "cut.csv.gz")):
    p = plan([path])
    with pytest.raises(DataError) as e:
      list(sources.read_chunk(p, 0, p.files[0].data_offset, -1, p.files[0].first_line))
    msgs.append(str(e.value).split(": ", 1)[1])
  assert msgs[0] == msgs[1] and "truncated or corrupt gzip data after line" in msgs[0]


def test_local_runner_reads_ram_inputs(tmp_path):
  """The local runner over ram:// inputs writes the bytes it writes over the same local
  files (stats.json, which lists the input paths, and config.yaml excepted)."""
  _, urls, paths = _ram_inputs(tmp_path)
  args = ["--format", "criteo", "--shard_size", "50", "--min_count", "2", "--quiet"]
  convert.convert(args + ["--input", *urls, "--output", str(tmp_path / "u")])
  convert.convert(args + ["--input", *paths, "--output", str(tmp_path / "l")])
  assert _same_tree(tmp_path / "u", tmp_path / "l") == ["stats.json"]
  su, sl = (json.loads((tmp_path / d / "stats.json").read_text()) for d in "ul")
  assert [i["path"] for i in su.pop("inputs")] == urls
  sl.pop("inputs")
  assert su == sl


def test_output_folder_life_cycle_on_ram():
  """The Beam runner's output handling through tf.io.gfile: the folders a run creates,
  the refusal to replace an earlier conversion without --overwrite, the commit that
  replaces it file by file (ram:// cannot rename folders), and the clean-up after a
  failure."""
  from ssr_tf.pipelines import beam_pipeline as bp
  gfile = _gfile()
  root = f"ram://ssr-{uuid.uuid4().hex[:8]}"
  out = f"{root}/a/b/out"
  assert bp._missing_dirs(out + "/") == [out, f"{root}/a/b", f"{root}/a"]
  tmp = bp._prepare_output(out, overwrite=False)
  assert tmp == f"{out}/.convert-tmp" and gfile.isdir(tmp)

  def write(path, text):
    gfile.makedirs(path.rsplit("/", 1)[0])
    with gfile.GFile(path, "w") as fh:
      fh.write(text)
  write(f"{tmp}/train/part-00000.tfrecord", "new0")
  write(f"{tmp}/spec.yaml", "new spec")
  write(f"{out}/train/part-00000.tfrecord", "old0")
  write(f"{out}/train/part-00001.tfrecord", "old1")
  write(f"{out}/spec.yaml", "old spec")
  write(f"{out}/keep.txt", "not ours")
  bp._commit_output(tmp, out)
  assert _ram_tree(out) == ["/keep.txt", "/spec.yaml", "/train/part-00000.tfrecord"]
  assert gfile.GFile(f"{out}/train/part-00000.tfrecord").read() == "new0"
  with pytest.raises(DataError, match=r"already holds \['train', 'spec.yaml'\]; pass "
                     "--overwrite"):
    bp._prepare_output(out, overwrite=False)
  tmp = bp._prepare_output(out, overwrite=True)
  write(f"{tmp}/spec.yaml", "half written")
  bp._discard_output(tmp, [])                       # an earlier conversion stays
  assert _ram_tree(out) == ["/keep.txt", "/spec.yaml", "/train/part-00000.tfrecord"]
  other = f"{root}/c/d"
  created = bp._missing_dirs(other)
  tmp = bp._prepare_output(other, overwrite=False)
  write(f"{tmp}/train/part-00000.tfrecord", "x")
  bp._discard_output(tmp, created)
  assert not gfile.exists(f"{root}/c") and gfile.exists(f"{root}/a/b/out/keep.txt")


@needs_beam
def test_beam_on_ram_equals_local(tmp_path):
  """DirectRunner with inputs (plain and .gz) and output on ram://, read and written only
  through tf.io.gfile: every file is the local runner's, byte for byte (the local runner
  reads the same ram:// inputs, so stats.json lists the same paths); config.yaml points
  at the ram:// folder. A second run needs --overwrite; a failed run leaves nothing."""
  root, urls, _ = _ram_inputs(tmp_path)
  out = f"{root}/out/beam"
  args = ["--format", "criteo", "--input", *urls, "--shard_size", "50", "--min_count", "2",
          "--seed", "5", "--quiet"]
  beam_args = ["--runner", "DirectRunner", "--chunk_mb", "0.004"]
  convert.convert(args + ["--output", str(tmp_path / "local")])
  convert.convert(args + beam_args + ["--output", out])
  got = _pull(out, tmp_path / "beam")
  assert _same_tree(tmp_path / "local", got) == []
  assert len(list((got / "train").iterdir())) >= 3
  cfg = (got / "config.yaml").read_text()
  assert f"train: {out}/train/part-*.tfrecord.gz" in cfg and f"spec: {out}/spec.yaml" in cfg
  assert sorted(_gfile().listdir(out)) == ["config.yaml", "spec.yaml", "stats.json", "test",
                                           "train", "valid", "vocab"]
  with pytest.raises(DataError, match="already holds"):
    convert.convert(args + beam_args + ["--output", out])
  convert.convert(args + beam_args + ["--output", out, "--overwrite"])
  assert _same_tree(tmp_path / "local", _pull(out, tmp_path / "beam2")) == []
  bad = f"{root}/in/bad.csv"
  lines = (DATA / "criteo_sample.txt").read_text().splitlines()[:20]
  lines[1] = lines[1].replace(",", ",x", 1)            # I1 "x..." -> bad row at line 2
  with _gfile().GFile(bad, "w") as fh:
    fh.write("\n".join(lines) + "\n")
  with pytest.raises(DataError, match=r"bad\.csv:2: "):
    convert.convert(["--format", "criteo", "--input", bad, "--output", f"{root}/failed/o",
                     "--quiet"] + beam_args)
  assert not _gfile().exists(f"{root}/failed")
