"""The streaming single-process runner.

One read of the input (a second, cheap one over the time column first when ``--split
time`` has to find its thresholds). Records do not depend on vocabularies (they keep raw
values), so each row is written to its split's current shard as soon as it is parsed,
while exact counts are kept in memory: value counts per feature and split (vocabularies
and OOV rates) and numeric histograms on a fixed log grid. Memory is therefore bounded by
the vocabularies, not by the number of rows; with ``--ids dynamic`` nothing is counted per
value, and memory is bounded by the numeric histograms.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Optional

from ssr_tf.errors import DataError
from ssr_tf.pipelines import outputs, sources, transforms
from ssr_tf.pipelines.transforms import SPLITS


class ShardWriter:
  """Writes one split's records into part-00000, part-00001, ... of shard_size records."""

  def __init__(self, out_dir: str, split: str, shard_size: int, compression: str,
               gzip_level: int = 6):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    self._tf = tf
    self.out_dir, self.split = out_dir, split
    self.shard_size, self.compression = shard_size, compression
    self.options = outputs.record_options(compression, gzip_level)
    self.index, self.in_shard, self.rows = 0, 0, 0
    tf.io.gfile.makedirs(os.path.join(out_dir, split))
    self._w = self._open()

  def _open(self):
    path = os.path.join(self.out_dir, outputs.shard_name(self.split, self.index,
                                                         self.compression))
    return self._tf.io.TFRecordWriter(path, options=self.options)

  def write(self, record: bytes) -> None:
    if self.in_shard == self.shard_size:
      self._w.close()
      self.index += 1
      self.in_shard = 0
      self._w = self._open()
    self._w.write(record)
    self.in_shard += 1
    self.rows += 1

  def close(self) -> None:
    self._w.close()


class Progress:
  """Prints `rows, rows/s, % of input bytes` to stderr every `every` seconds."""

  def __init__(self, total_bytes: int, every: float = 5.0, enabled: bool = True,
               label: str = "convert"):
    self.total, self.every, self.enabled, self.label = total_bytes, every, enabled, label
    self.start = self.last = time.time()

  def update(self, rows: int, done_bytes: int, bad: int, final: bool = False) -> None:
    now = time.time()
    if not self.enabled or (not final and now - self.last < self.every):
      return
    self.last = now
    rate = rows / max(now - self.start, 1e-9)
    pct = f"{min(100.0, 100.0 * done_bytes / self.total):5.1f}% " if self.total else ""
    tty = sys.stderr.isatty()
    head = "\r" if tty else ""
    print(f"{head}{self.label}: {pct}{rows:,} rows  {rate:,.0f} rows/s  "
          f"{now - self.start:,.0f}s  skipped {bad}", end="\n" if final or not tty else "",
          file=sys.stderr, flush=True)


def find_time_thresholds(plan: sources.Plan) -> None:
  """Pre-pass of --split time without --valid_from/--test_from: thresholds at the
  ratios' quantiles of the time column."""
  hist: dict = {}
  for fi, f in enumerate(plan.files):
    for k, n in sources.time_histogram(
        plan, fi, sources.read_chunk(plan, fi, f.data_offset, -1, f.first_line)).items():
      hist[k] = hist.get(k, 0) + n
  plan.split.valid_from, plan.split.test_from = transforms.time_thresholds(
      hist, plan.split.ratios)
  plan.split.auto_time = False


def missing_dirs(out_dir: str) -> list[str]:
  """`out_dir` and those of its parents that do not exist yet, deepest first: what
  prepare_output will create, and discard_output removes again after a failure."""
  out, d = [], os.path.abspath(out_dir)
  while not os.path.lexists(d) and os.path.dirname(d) != d:
    out.append(d)
    d = os.path.dirname(d)
  return out


def prepare_output(out_dir: str, overwrite: bool) -> str:
  """Checks the output folder and returns a fresh temporary folder inside it."""
  names = ["train", "valid", "test", "vocab", "spec.yaml", "stats.json", "config.yaml"]
  present = [n for n in names if os.path.exists(os.path.join(out_dir, n))]
  if present and not overwrite:
    raise DataError(f"{out_dir}: already holds {present}; pass --overwrite to replace them")
  tmp = os.path.join(out_dir, ".convert-tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    os.makedirs(tmp)
  except OSError as e:
    raise DataError(f"--output {out_dir}: cannot create the output folder "
                    f"({e.strerror or e})") from None
  return tmp


def discard_output(tmp: Optional[str], created: list[str]) -> None:
  """After a failed conversion: removes the temporary folder and the folders this run
  created (`missing_dirs` before prepare_output), so nothing is left behind. A folder
  that existed before the run stays, with what it held: with --overwrite an earlier
  conversion is replaced only by commit_output, after a conversion that succeeded."""
  if tmp is not None:
    shutil.rmtree(tmp, ignore_errors=True)
  for d in created:                 # deepest first; stops at one that is not empty
    try:
      os.rmdir(d)
    except OSError:
      break


def commit_output(tmp: str, out_dir: str) -> None:
  """Moves the finished outputs from the temporary folder into place."""
  for name in sorted(os.listdir(tmp)):
    dst = os.path.join(out_dir, name)
    if os.path.isdir(dst):
      shutil.rmtree(dst)
    elif os.path.exists(dst):
      os.remove(dst)
    os.replace(os.path.join(tmp, name), dst)
  os.rmdir(tmp)


def run(plan: sources.Plan, out_dir: str, overwrite: bool = False, progress: bool = True,
        progress_every: float = 5.0) -> dict:
  """Converts `plan`'s inputs into `out_dir`; returns the stats (also in stats.json)."""
  if plan.split.auto_time:
    find_time_thresholds(plan)
  created, tmp = missing_dirs(out_dir), None
  try:
    tmp = prepare_output(out_dir, overwrite)
    stats = _convert(plan, tmp, out_dir, progress, progress_every)
    commit_output(tmp, out_dir)
  except BaseException:
    discard_output(tmp, created)
    raise
  return stats


def _convert(plan: sources.Plan, out_dir: str, final_dir: str, progress: bool,
             every: float) -> dict:
  o = plan.options
  writers = [ShardWriter(out_dir, s, o.shard_size, o.compression, o.gzip_level)
             for s in SPLITS]
  acc = transforms.Accumulator(plan.schema, plan.uncounted())
  encoder = transforms.ExampleEncoder(plan.schema.fields)
  bad: list[str] = []
  bar = Progress(sum(f.size for f in plan.files), every, progress)
  done_bytes = [0]

  def on_bad(fi: int, line: int, why: str) -> None:
    path = plan.files[fi].path
    if acc.bad >= o.skip_bad_rows:
      raise DataError(sources.bad_row_message(path, line, why, o.skip_bad_rows))
    bad.append(f"{path}:{line}: {why}")

  def emit(s: int, record: bytes) -> None:
    writers[s].write(record)

  row = 0
  try:
    for fi, f in enumerate(plan.files):
      base = done_bytes[0]

      def lines(fi=fi, f=f, base=base):
        for k, item in enumerate(sources.read_chunk(plan, fi, f.data_offset, -1,
                                                    f.first_line)):
          if k & 4095 == 0:
            done_bytes[0] = base + item[2]
            bar.update(sum(acc.rows) + acc.bad, done_bytes[0], acc.bad)
          yield item
      row = sources.process(plan, fi, lines(), row, acc, encoder, emit, on_bad)
      done_bytes[0] = base + f.size
  finally:
    for w in writers:
      w.close()
  if row == 0:
    raise DataError(f"{plan.files[0].path}: no data rows in the input files")
  if acc.rows[0] == 0 and plan.base_spec is None:
    raise DataError("the training split is empty (check --ratios / --split / the inputs); "
                    "vocabularies and boundaries come from it")
  bar.update(sum(acc.rows) + acc.bad, done_bytes[0], acc.bad, final=True)
  if plan.base_spec is not None:
    summaries = outputs.summarize_with_spec(plan, acc, out_dir)
  else:
    summaries = outputs.summarize_local(plan, acc, out_dir)
  return outputs.write_metadata(plan, out_dir, acc, summaries, bad, final_dir)
