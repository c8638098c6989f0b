"""The conversion as an Apache Beam pipeline (``--runner DirectRunner|DataflowRunner|...``).

Same parser, split rule, encoder and statistics as the local runner, so the outputs are
byte-identical for the same input and flags. Steps::

  chunks (byte ranges of the inputs, aligned to lines)      [driver]
   -> line / row counts per chunk -> first line number and global row index per chunk
   -> [time split without thresholds: histogram of the time column -> thresholds]
   -> parse + split + encode + count per chunk                (parallel)
       records ((split, chunk) -> list)  -> position in split -> (split, shard) groups
                                          -> part-NNNNN files, records in input order
       value counts (feature, value)     -> sum -> vocab files, vocab sizes, OOV counts
       numeric cells (feature, cell)     -> sum -> boundaries
       scalar counts, bad rows           -> combined
  spec.yaml, stats.json, config.yaml from the combined results  [driver]

Vocabulary counting is a keyed sum, so no worker holds more than its share of the
values (one feature's sorted vocabulary is written by one worker). Bad rows are
collected rather than raised; the driver fails after the run when they exceed
--skip_bad_rows, naming the same row as the local runner.

Files are read and written through ``tf.io.gfile`` (and TensorFlow's TFRecordWriter),
never with local file calls, so inputs and output may be on any file system TensorFlow
knows: local, ``gs://`` (built into TensorFlow), ``ram://`` (in-process, for tests). Input
paths with a scheme are read by sources.open_binary through gfile (plain local paths with
Python's file objects, as in the local runner). The driver reads the inputs' headers and
chunk boundaries and writes the metadata; the workers read chunks and write shards,
vocabularies and their results (``.convert-tmp/_beam/*.pkl``) into the output folder.
"""
from __future__ import annotations

import copy
import os
import pickle
from typing import Any, Iterator, Optional

from ssr_tf.errors import ConfigError, DataError
from ssr_tf.pipelines import outputs, sources, transforms
from ssr_tf.pipelines.transforms import SPLITS


def _import_beam():
  try:
    import apache_beam as beam  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConfigError("the Beam runners need apache-beam, in an environment of its own: "
                      "pip install -r requirements-beam.txt (see docs/data.md; or use "
                      "--runner local)") from None
  return beam


def count_chunk(chunk: tuple, plan: sources.Plan) -> tuple[int, int, int]:
  """(chunk id, physical lines, non-blank rows) of a chunk."""
  cid, fi, start, end = chunk
  f = plan.files[fi]
  lines = rows = 0
  try:
    with sources.open_binary(f.path) as fh:
      fh.seek(start)                # gzip: decompresses up to the header's end
      pos = start
      for raw in fh:
        pos += len(raw)
        lines += 1
        rows += bool(raw.strip())
        if end >= 0 and pos >= end:
          break
  except sources.READ_ERRORS as e:
    last = f.first_line - 1 + lines if f.compressed else lines   # gzip: one chunk
    raise sources.read_error(f.path, last, rows, e) from None
  return cid, lines, rows


def layout(counts: list, chunk_list: list, plan: sources.Plan) -> dict:
  """chunk id -> (line number of its first line, global index of its first row)."""
  by_id = {cid: (lines, rows) for cid, lines, rows in counts}
  out, row, prev_file, line = {}, 0, None, 0
  for cid, fi, _, _ in chunk_list:
    if fi != prev_file:
      line, prev_file = plan.files[fi].first_line, fi
    out[cid] = (line, row)
    line += by_id[cid][0]
    row += by_id[cid][1]
  return out


def split_offsets(nrows: list) -> dict:
  """(split, chunk id) -> records of that split in earlier chunks."""
  out, acc = {}, [0, 0, 0]
  for s, cid, n in sorted(nrows, key=lambda x: (x[1], x[0])):
    out[(s, cid)] = acc[s]
    acc[s] += n
  return out


class _ProcessChunk:
  """DoFn body (wrapped below so this module imports without Beam)."""

  def __init__(self, plan: sources.Plan):
    self.plan = plan
    self._parsers: dict = {}

  def __call__(self, chunk: tuple, lay: dict, thresholds: Any) -> Iterator:
    beam = _import_beam()
    plan = self.plan
    if plan.split.auto_time:
      plan.split.valid_from, plan.split.test_from = thresholds
      plan.split.auto_time = False
    cid, fi, start, end = chunk
    first_line, first_row = lay[cid]
    if fi not in self._parsers:
      self._parsers[fi] = plan.parser(fi)
    acc = transforms.Accumulator(plan.schema)
    encoder = transforms.ExampleEncoder(plan.schema.fields)
    recs: list[list[bytes]] = [[], [], []]
    bad = []
    sources.process(plan, fi, sources.read_chunk(plan, fi, start, end, first_line),
                    first_row, acc, encoder, lambda s, r: recs[s].append(r),
                    lambda f, line, why: bad.append((f, line, why)), self._parsers[fi])
    for s in range(3):
      yield beam.pvalue.TaggedOutput("nrows", (s, cid, len(recs[s])))
      if recs[s]:
        yield (s, cid), recs[s]
    per_value: dict = {}
    for s in range(3):
      for i, c in acc.counts[s].items():
        for v, n in c.items():
          key = (i, v)
          t = per_value.get(key)
          if t is None:
            t = per_value[key] = [0, 0, 0]
          t[s] += n
    for key, t in per_value.items():
      yield beam.pvalue.TaggedOutput("counts", (key, tuple(t)))
    for i in acc.hist:
      for q, n in acc.cells(i).items():
        yield beam.pvalue.TaggedOutput("hist", ((i, q), n))
    for b in bad:
      yield beam.pvalue.TaggedOutput("bad", b)
    acc.clear_counts()
    yield beam.pvalue.TaggedOutput("acc", acc)


def _pieces(item: tuple, offsets: dict, shard_size: int) -> Iterator:
  """((split, chunk), records) -> ((split, shard), (chunk, records of that shard))."""
  (s, cid), recs = item
  pos = offsets[(s, cid)]
  j = 0
  while j < len(recs):
    shard = (pos + j) // shard_size
    take = min(len(recs) - j, (shard + 1) * shard_size - (pos + j))
    yield (s, shard), (cid, recs[j:j + take])
    j += take


def _write_shard(item: tuple, out_dir: str, compression: str, gzip_level: int) -> str:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  (s, shard), pieces = item
  path = os.path.join(out_dir, outputs.shard_name(SPLITS[s], shard, compression))
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.TFRecordWriter(path, options=outputs.record_options(compression,
                                                                 gzip_level)) as w:
    for _, recs in sorted(pieces, key=lambda p: p[0]):
      for r in recs:
        w.write(r)
  return path


def _sum_tuples(xs) -> tuple:
  out = None
  for x in xs:
    out = list(x) if out is None else [a + b for a, b in zip(out, x)]
  return tuple(out or ())


def _vocab_parts(item: tuple, plan: sources.Plan) -> Iterator:
  beam = _import_beam()
  (i, v), (n0, n1, n2) = item
  f = plan.schema.fields[i]
  ok = outputs.writable(v)
  kept = ok and n0 > outputs.min_count_of(f, plan)
  if ok and n0 > 0:
    yield beam.pvalue.TaggedOutput("vocab", (i, (v, n0)))
  yield (i, (int(kept), int(ok and n0 > 0), 0 if kept else n0, 0 if kept else n1,
             0 if kept else n2))


def _write_vocab(item: tuple, plan: sources.Plan, out_dir: str) -> int:
  i, entries = item
  name = plan.schema.fields[i].name
  outputs.write_vocab(os.path.join(out_dir, "vocab", f"{name}.txt"),
                      transforms.sorted_vocab(dict(entries)))
  return i


def _boundaries(item: tuple, plan: sources.Plan) -> tuple:
  i, cells = item
  f = plan.schema.fields[i]
  return i, transforms.boundaries_from_hist(dict(cells), outputs.num_buckets_of(f, plan))


def _merge_accs(accs, plan: sources.Plan) -> transforms.Accumulator:
  total = transforms.Accumulator(plan.schema)
  for a in accs:
    total.merge(a)
  return total


def _dump(value: Any, path: str) -> None:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  with tf.io.gfile.GFile(path, "wb") as fh:
    fh.write(pickle.dumps(value))


def build(p, plan: sources.Plan, chunk_list: list, out_dir: str) -> None:
  """Adds the conversion to pipeline `p`; results land in out_dir/_beam/*.pkl."""
  beam = _import_beam()
  side = beam.pvalue.AsSingleton
  meta = os.path.join(out_dir, "_beam")
  chunks = p | "Chunks" >> beam.Create(chunk_list) | "Spread" >> beam.Reshuffle()
  lay = (chunks | "CountLines" >> beam.Map(count_chunk, plan)
         | "AllCounts" >> beam.combiners.ToList()
         | "Layout" >> beam.Map(layout, chunk_list, plan))
  if plan.split.auto_time:
    def time_items(c):
      cid, fi, start, end = c
      first = plan.files[fi].first_line
      return sources.time_histogram(plan, fi, sources.read_chunk(plan, fi, start, end,
                                                                 first)).items()
    thresholds = (chunks | "TimeValues" >> beam.FlatMap(time_items)
                  | "SumTimes" >> beam.CombinePerKey(sum)
                  | "AllTimes" >> beam.combiners.ToList()
                  | "Thresholds" >> beam.Map(lambda kv: transforms.time_thresholds(
                      dict(kv), plan.split.ratios)))
  else:
    thresholds = p | "NoThresholds" >> beam.Create([None])
  class ProcessChunk(beam.DoFn):
    """Parses, splits, encodes and counts one chunk."""

    def setup(self):
      self.body = _ProcessChunk(copy.deepcopy(plan))

    def process(self, chunk, lay_, thresholds_):
      yield from self.body(chunk, lay_, thresholds_)

  parts = (chunks | "Process" >> beam.ParDo(ProcessChunk(), side(lay), side(thresholds))
           .with_outputs("nrows", "counts", "hist", "bad", "acc", main="records"))
  offsets = (parts.nrows | "AllRows" >> beam.combiners.ToList()
             | "Offsets" >> beam.Map(split_offsets))
  o = plan.options
  _ = (parts.records
       | "Pieces" >> beam.FlatMap(_pieces, side(offsets), o.shard_size)
       | "ByShard" >> beam.GroupByKey()
       | "WriteShards" >> beam.Map(_write_shard, out_dir, o.compression, o.gzip_level))
  vparts = (parts.counts | "SumValues" >> beam.CombinePerKey(_sum_tuples)
            | "Vocab" >> beam.FlatMap(_vocab_parts, plan).with_outputs("vocab", main="fsum"))
  _ = (vparts.vocab | "VocabByFeature" >> beam.GroupByKey()
       | "WriteVocab" >> beam.Map(_write_vocab, plan, out_dir))
  _ = (vparts.fsum | "SumFeature" >> beam.CombinePerKey(_sum_tuples)
       | "AllFeature" >> beam.combiners.ToList()
       | "DumpFeature" >> beam.Map(_dump, os.path.join(meta, "fsum.pkl")))
  _ = (parts.hist | "SumCells" >> beam.CombinePerKey(sum)
       | "CellsByFeature" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1])))
       | "GroupCells" >> beam.GroupByKey()
       | "Boundaries" >> beam.Map(_boundaries, plan)
       | "AllBoundaries" >> beam.combiners.ToList()
       | "DumpBoundaries" >> beam.Map(_dump, os.path.join(meta, "bounds.pkl")))
  _ = (parts.acc | "MergeCounts" >> beam.CombineGlobally(_merge_accs, plan)
       | "DumpCounts" >> beam.Map(_dump, os.path.join(meta, "acc.pkl")))
  keep = min(max(o.skip_bad_rows + 1, 20), 100_000)
  _ = (parts.bad | "FirstBad" >> beam.combiners.Top.Smallest(keep, key=lambda b: b[:2])
       | "DumpBad" >> beam.Map(_dump, os.path.join(meta, "bad.pkl")))
  _ = (thresholds | "DumpThresholds" >> beam.Map(_dump, os.path.join(meta, "time.pkl")))


def _load(path: str) -> Any:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  with tf.io.gfile.GFile(path, "rb") as fh:
    return pickle.loads(fh.read())


# The output folder's life cycle, as local.py's (missing_dirs, prepare_output,
# discard_output, commit_output) but through tf.io.gfile. The finished files are moved
# into place one by one: gfile cannot rename a folder on ram://, and gs:// has no
# folders to rename (each move is a copy and a delete there).

def _gfile():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf.io.gfile, tf.errors.OpError


def _is_root(d: str) -> bool:
  """`/`, or the `scheme://authority` of a URL (a bucket: never created or removed)."""
  if sources.is_url(d):
    return "/" not in d.split("://", 1)[1]
  return os.path.dirname(d) == d


def _missing_dirs(out_dir: str) -> list[str]:
  """`out_dir` and those of its parents that do not exist yet, deepest first."""
  gfile, errors = _gfile()

  def exists(d: str) -> bool:
    try:
      return gfile.exists(d)
    except errors:                  # e.g. a parent is a file: nothing to create there
      return True

  d = out_dir.rstrip("/") if sources.is_url(out_dir) else os.path.abspath(out_dir)
  out = []
  while not _is_root(d) and not exists(d):
    out.append(d)
    d = os.path.dirname(d)
  return out


def _prepare_output(out_dir: str, overwrite: bool) -> str:
  """Checks the output folder and returns a fresh temporary folder inside it."""
  gfile, errors = _gfile()
  names = ["train", "valid", "test", "vocab", "spec.yaml", "stats.json", "config.yaml"]
  tmp = os.path.join(out_dir, ".convert-tmp")
  try:
    present = [n for n in names if gfile.exists(os.path.join(out_dir, n))]
    if present and not overwrite:
      raise DataError(f"{out_dir}: already holds {present}; pass --overwrite to replace "
                      "them")
    if gfile.exists(tmp):
      gfile.rmtree(tmp)
    gfile.makedirs(tmp)
  except errors as e:
    raise DataError(f"--output {out_dir}: cannot create the output folder "
                    f"({e.message})") from None
  return tmp


def _discard_output(tmp: Optional[str], created: list[str]) -> None:
  """After a failed conversion: removes the temporary folder and the (then empty)
  folders this run created; an earlier conversion in out_dir stays as it was."""
  gfile, errors = _gfile()
  if tmp is not None:
    try:
      if gfile.exists(tmp):
        gfile.rmtree(tmp)
    except errors:
      pass
  for d in created:                 # deepest first; stops at one that is not empty
    try:
      if gfile.listdir(d):
        break
      gfile.rmtree(d)
    except errors:
      break


def _move(src: str, dst: str) -> None:
  """Moves file or folder `src` to `dst` (which does not exist), file by file."""
  gfile, _ = _gfile()
  if not gfile.isdir(src):
    gfile.rename(src, dst)
    return
  gfile.makedirs(dst)
  for name in sorted(gfile.listdir(src)):
    name = name.rstrip("/")
    _move(os.path.join(src, name), os.path.join(dst, name))


def _commit_output(tmp: str, out_dir: str) -> None:
  """Moves the finished outputs from the temporary folder into place (replacing an
  earlier conversion's files and folders of the same names)."""
  gfile, _ = _gfile()
  for name in sorted(n.rstrip("/") for n in gfile.listdir(tmp)):
    dst = os.path.join(out_dir, name)
    if gfile.isdir(dst):
      gfile.rmtree(dst)
    elif gfile.exists(dst):
      gfile.remove(dst)
    _move(os.path.join(tmp, name), dst)
  gfile.rmtree(tmp)


def run(plan: sources.Plan, out_dir: str, runner: str = "DirectRunner",
        beam_args: list[str] | None = None, overwrite: bool = False,
        chunk_bytes: int = 64 << 20) -> dict:
  """Converts `plan`'s inputs with Beam `runner`; returns the stats (also in stats.json)."""
  beam = _import_beam()
  if plan.base_spec is not None:
    raise ConfigError("--spec is supported by --runner local only")
  options = beam.options.pipeline_options.PipelineOptions(list(beam_args or []),
                                                          runner=runner)
  gfile, _ = _gfile()
  created, tmp = _missing_dirs(out_dir), None
  try:
    tmp = _prepare_output(out_dir, overwrite)
    gfile.makedirs(os.path.join(tmp, "_beam"))
    chunk_list = sources.chunks(plan, chunk_bytes)
    with beam.Pipeline(options=options) as p:
      build(p, plan, chunk_list, tmp)
    stats = _finish(plan, tmp, out_dir)
    gfile.rmtree(os.path.join(tmp, "_beam"))
    _commit_output(tmp, out_dir)
  except BaseException:
    _discard_output(tmp, created)
    raise
  return stats


def _finish(plan: sources.Plan, tmp: str, out_dir: str) -> dict:
  """Driver side: bad-row budget, empty shards and vocabularies, metadata files."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  meta = os.path.join(tmp, "_beam")
  acc: transforms.Accumulator = _load(os.path.join(meta, "acc.pkl"))
  bad = sorted(_load(os.path.join(meta, "bad.pkl")))
  o = plan.options
  if acc.bad > o.skip_bad_rows:
    fi, line, why = bad[o.skip_bad_rows] if len(bad) > o.skip_bad_rows else bad[-1]
    raise DataError(sources.bad_row_message(plan.files[fi].path, line, why,
                                            o.skip_bad_rows))
  if sum(acc.rows) + acc.bad == 0:
    raise DataError(f"{plan.files[0].path}: no data rows in the input files")
  if acc.rows[0] == 0:
    raise DataError("the training split is empty (check --ratios / --split / the inputs); "
                    "vocabularies and boundaries come from it")
  if plan.split.auto_time:
    plan.split.valid_from, plan.split.test_from = _load(os.path.join(meta, "time.pkl"))
    plan.split.auto_time = False
  for s in SPLITS:
    first = os.path.join(tmp, outputs.shard_name(s, 0, o.compression))
    if not tf.io.gfile.exists(first):
      tf.io.gfile.makedirs(os.path.dirname(first))
      tf.io.TFRecordWriter(first, options=outputs.record_options(o.compression,
                                                                 o.gzip_level)).close()
  fsum = dict(_load(os.path.join(meta, "fsum.pkl")))
  bounds = dict(_load(os.path.join(meta, "bounds.pkl")))
  summaries = {}
  for i, f in enumerate(plan.schema.fields):
    if f.kind == "numeric":
      summaries[f.name] = outputs.FeatureSummary(
          boundaries=bounds.get(i, transforms.boundaries_from_hist({}, 2)))
    elif f.kind in ("categorical", "multi_categorical"):
      kept, distinct, o0, o1, o2 = fsum.get(i, (0, 0, 0, 0, 0))
      vocab = os.path.join(tmp, "vocab", f"{f.name}.txt")
      if not tf.io.gfile.exists(vocab):
        outputs.write_vocab(vocab, [])
      summaries[f.name] = outputs.FeatureSummary(
          vocab_size=kept, distinct=distinct, oov=[o0, o1, o2],
          max_len=max(1, min(f.max_len, acc.max_len.get(i, 0))),
          min_count=outputs.min_count_of(f, plan))
  examples = [f"{plan.files[fi].path}:{line}: {why}" for fi, line, why in bad]
  return outputs.write_metadata(plan, tmp, acc, summaries, examples, out_dir)
